"""StructuredPruning with what sits beside the pruned model: a shared config, a value head, a module of the model's
own that a cut breaks, compiled code, and gradients a manual-optimization module accumulates itself."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_green import StructuredPruning
from tests.helpers import QUIET

tf = pytest.importorskip("transformers")

from lightning_green.testing.hf import tiny_causal_lm_config  # noqa: E402
from tests.pruning.hf_models import token_data  # noqa: E402


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    base = {"logger": False, "enable_checkpointing": False, "num_sanity_val_steps": 0, "limit_val_batches": 0, **QUIET}
    return Trainer(default_root_dir=tmp_path, callbacks=callbacks, **{**base, **kwargs})


class _LM(LightningModule):
    """A tiny Llama (or ``model``) trained on its own tokens; ``extra`` modules beside it join the loss."""

    def __init__(self, model: nn.Module | None = None, value_head: bool = False, teacher: bool = False) -> None:
        super().__init__()
        cfg = tiny_causal_lm_config("llama")
        torch.manual_seed(0)
        self.model = model if model is not None else tf.LlamaForCausalLM(cfg)
        self.value_head = nn.Linear(64, 1) if value_head else None
        self.teacher = tf.LlamaForCausalLM(self.model.config).requires_grad_(False).eval() if teacher else None

    def training_step(self, batch, batch_idx):
        ids = batch["input_ids"]
        out = self.model(input_ids=ids, labels=ids, output_hidden_states=self.value_head is not None)
        loss = out.loss
        if self.value_head is not None:
            loss = loss + 0.1 * self.value_head(out.hidden_states[-1]).mean() ** 2
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(input_ids=ids).logits.softmax(-1)
            loss = loss + F.kl_div(out.logits.log_softmax(-1), target, reduction="batchmean")
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)

    def train_dataloader(self):
        return token_data()


def test_a_teacher_sharing_the_config_stays_whole_under_module_named(tmp_path):
    module = _LM(teacher=True)
    assert module.teacher.config is module.model.config
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        before = module.teacher(ids).logits
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=1, module="model", verbose=False)
    _trainer(tmp_path, [pruning], max_steps=3).fit(module)
    assert module.model.config.intermediate_size == 64
    assert module.teacher.config.intermediate_size == 128
    with torch.no_grad():
        assert torch.equal(module.teacher(ids).logits, before)


def test_a_value_head_keeps_the_residual_width_and_training_goes_on(tmp_path):
    module = _LM(value_head=True)
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=1, prune_hidden=True, verbose=False)
    trainer = _trainer(tmp_path, [pruning], max_steps=3)
    with pytest.warns(UserWarning, match=r"'value_head' beside LlamaForCausalLM holds parameters"):
        trainer.fit(module)
    assert trainer.global_step == 3 and len(pruning.history) == 1
    assert module.model.config.hidden_size == 64 and module.model.config.intermediate_size == 64


class _ExtraLlama(tf.LlamaForCausalLM):
    """A Llama with a layer of its own on the residual stream, which no cut of the known structure follows."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.extra = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, input_ids=None, labels=None, **kwargs):
        h = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
        logits = self.lm_head(self.extra(h))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return tf.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


def test_a_cut_that_breaks_the_mac_count_is_undone_with_its_config(tmp_path):
    torch.manual_seed(0)
    module = _LM(model=_ExtraLlama(tiny_causal_lm_config("llama")))
    dense = module.model.config.to_dict()
    shapes = {n: p.shape for n, p in module.model.named_parameters()}
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=1, prune_hidden=True, verbose=False)
    trainer = _trainer(tmp_path, [pruning], max_steps=3)
    with pytest.warns(
        UserWarning,
        match=r"prune 1/1: nothing left can be cut without breaking the model \(the cut was undone: the cut model "
        r"fails its MAC count \(RuntimeError: ",
    ):
        trainer.fit(module)
    assert trainer.global_step == 3 and pruning.stopped and not pruning.history
    assert module.model.config.to_dict() == dense
    assert {n: p.shape for n, p in module.model.named_parameters()} == shapes


class _MLP(LightningModule):
    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        self.example_input_array = torch.zeros(2, 8)
        self.automatic_optimization = not manual
        self.pending: list[tuple[int, int, int]] = []  # (epoch, batch, parameters holding a gradient before backward)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        if self.automatic_optimization:
            return loss
        # The module's own accumulation over two micro-batches (Lightning refuses accumulate_grad_batches here).
        self.pending.append((self.current_epoch, batch_idx, sum(p.grad is not None for p in self.parameters())))
        self.manual_backward(loss / 2)
        if len(self.pending) % 2 == 0:
            opt = self.optimizers()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 8, generator=g)
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def test_manual_accumulation_defers_the_prune_past_pending_gradients(tmp_path):
    module = _MLP(manual=True)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    _trainer(tmp_path, [pruning], max_epochs=2).fit(module)
    # Epoch 0 ends after an odd micro-batch: its gradients reach the first batch of epoch 1, which steps them.
    assert module.pending[3] == (1, 0, 6)
    assert len(pruning.history) == 1 and pruning.history[0]["global_step"] == 2  # pruned after that step


class _RawSteps(_MLP):
    """Manual optimization on the raw optimizer (no Lightning hook runs for its step), zeroing at each step's start."""

    def training_step(self, batch, batch_idx):
        opt = self.optimizers(use_pl_optimizer=False)
        opt.zero_grad()
        self.manual_backward(F.cross_entropy(self(batch[0]), batch[1]))
        opt.step()


def test_manual_steps_on_the_raw_optimizer_do_not_defer_the_prune_forever(tmp_path):
    module = _RawSteps(manual=True)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    _trainer(tmp_path, [pruning], max_epochs=2, limit_val_batches=0).fit(module)
    assert len(pruning.history) == 1 and pruning.speedup > 1.5


class _CompiledNet(_MLP):
    def configure_model(self) -> None:
        self.net = torch.compile(self.net, backend="eager")


@pytest.mark.parametrize("compiled", ["fit", "configure_model"])
def test_a_compiled_model_compiles_afresh_after_each_prune(tmp_path, compiled):
    torch.compiler.reset()
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Catch(logging.WARNING)
    logging.getLogger("torch._dynamo").addHandler(handler)
    module = _MLP() if compiled == "fit" else _CompiledNet()
    pruning = StructuredPruning(pruning_ratio=0.6, start_epoch=1, end_epoch=4, verbose=False)
    trainer = _trainer(tmp_path, [pruning], max_epochs=5, limit_train_batches=1)
    try:
        with torch._dynamo.config.patch(recompile_limit=3):  # 3 prunes would reach it (8 by default)
            trainer.fit(torch.compile(module, backend="eager") if compiled == "fit" else module)
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
        torch.compiler.reset()
    assert len(pruning.history) == 4
    assert not [r for r in records if "recompile_limit" in r]
