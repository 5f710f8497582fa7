"""Resuming and reloading pruned models: the recorded history decides, and a prune's importance window survives."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_green import StructuredPruning
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.pruning import load_pruned, rebuild_from_checkpoint
from lightning_green.pruning.history import shapes_differ

QUIET = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 1,
}


def _every_step(tmp_path):
    return ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class OrderedDigits(DigitsDataModule):
    """Unshuffled training batches, so two runs see the same data at the same step."""

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=False)


# ------------------------------------------------------------------------------------------ what the history decides
def test_tensors_on_one_side_only_count_when_asked():
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    fewer = {k: v for k, v in net.state_dict().items() if k.startswith("0.")}
    assert not shapes_differ(net, fewer)
    assert shapes_differ(net, fewer, keys=True)
    assert not shapes_differ(net, net.state_dict(), keys=True)


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)  # never in a state dict
        self.example_input_array = torch.zeros(1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_plain_model_with_a_history_is_cut_once_and_non_persistent_buffers_do_not_count():
    checkpoint = {
        "state_dict": {k: v for k, v in _WithBuffers().state_dict().items()},
        "callbacks": {"StructuredPruning": {"version": 1, "history": [{"entries": [["body.0", True, [1, 5]]]}]}},
    }
    checkpoint["state_dict"]["body.0.weight"] = torch.zeros(6, 4)
    checkpoint["state_dict"]["body.0.bias"] = torch.zeros(6)
    checkpoint["state_dict"]["body.2.weight"] = torch.zeros(2, 6)
    fresh = _WithBuffers()
    assert rebuild_from_checkpoint(fresh, checkpoint) is True
    assert rebuild_from_checkpoint(fresh, checkpoint) is False  # already cut: not cut again
    fresh.load_state_dict(checkpoint["state_dict"])


def test_without_a_history_weights_left_out_of_the_checkpoint_are_not_an_error():
    # Only a history makes missing tensors a reason to rebuild; without one they are load_state_dict's business
    # (e.g. a user who saves no frozen weights and loads with strict=False).
    weights = {k: v for k, v in _WithBuffers().state_dict().items() if k.startswith("body.0.")}
    assert rebuild_from_checkpoint(_WithBuffers(), {"state_dict": weights}) is False


# ------------------------------------------------------------------------------------- layers removed, no width cut
@pytest.fixture
def tiny_lm():
    pytest.importorskip("transformers")
    from tests.pruning.hf_models import TinyLM

    return TinyLM


def test_a_checkpoint_with_only_decoder_layers_removed_resumes_and_loads(tmp_path, tiny_lm):
    # The layer drop alone reaches the target: no tensor changes shape, whole layers are missing.
    args = {"target_speedup": 1.2, "prune_layers": 1, "start_step": 2, "end_step": 2, "importance_batches": 1}
    pruning = StructuredPruning(**args, verbose=False)
    model = tiny_lm("llama")
    trainer = Trainer(default_root_dir=tmp_path, max_steps=4, callbacks=[pruning], **QUIET)
    with pytest.warns(UserWarning, match="removing the decoder layers alone"):
        trainer.fit(model)
    assert len(model.model.model.layers) == 1
    assert all("::layers::" in e[0] for event in pruning.history for e in event["entries"])
    ckpt = trainer.checkpoint_callback.best_model_path

    loaded = load_pruned(tiny_lm("llama"), ckpt)
    assert len(loaded.model.model.layers) == 1 and loaded.model.config.num_hidden_layers == 1
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k

    resumed, again = tiny_lm("llama"), StructuredPruning(**args, verbose=False)
    trainer = Trainer(default_root_dir=tmp_path / "resumed", max_steps=6, callbacks=[again], **QUIET)
    trainer.fit(resumed, ckpt_path=ckpt)
    assert len(resumed.model.model.layers) == 1 and again.history == pruning.history
    assert trainer.global_step == 6


# ------------------------------------------------------------------------------- resuming inside an importance window
def _prune_run(tmp_path, make_model, datamodule, args, resume_from=None):
    pruning = StructuredPruning(**args, verbose=False)
    model = make_model()
    callbacks = [pruning] if resume_from else [pruning, _every_step(tmp_path)]
    trainer = Trainer(default_root_dir=tmp_path, max_steps=8, callbacks=callbacks, **QUIET)
    trainer.fit(model, datamodule=datamodule() if datamodule else None, ckpt_path=resume_from)
    return pruning, model


@pytest.mark.parametrize("resume_at", [5, 6], ids=["in-the-window", "window-complete"])
@pytest.mark.parametrize("case", ["llm-activation", "cnn-taylor"])
def test_resuming_inside_an_importance_window_keeps_the_prune_steps_and_the_speedup(tmp_path, case, resume_at):
    # Prunes at steps 3 and 6, each after 2 steps of importance (steps 1-2 and 4-5). A checkpoint at step 5 holds one
    # step of the second window, one at step 6 all of it: a resumed run must prune at step 6 all the same.
    args = {"importance_batches": 2, "start_step": 3, "end_step": 6, "frequency": 3}
    if case == "llm-activation":
        pytest.importorskip("transformers")
        from tests.pruning.hf_models import TinyLM

        args.update(target_speedup=1.6, importance="activation")
        make_model, datamodule = (lambda: TinyLM("llama")), None
    else:
        args.update(target_speedup=2.0, importance="taylor")
        make_model, datamodule = (lambda: DigitsCNN(channels=[8, 16])), (lambda: OrderedDigits(batch_size=32))
    torch.manual_seed(0)
    whole, dense = _prune_run(tmp_path / "whole", make_model, datamodule, args)
    assert [h["global_step"] for h in whole.history] == [3, 6]

    torch.manual_seed(0)
    ckpt = str(tmp_path / "whole" / "ckpt" / f"step={resume_at}.ckpt")
    resumed, model = _prune_run(tmp_path / "resumed", make_model, datamodule, args, resume_from=ckpt)
    assert [h["global_step"] for h in resumed.history] == [3, 6]
    checkpoint = torch.load(ckpt, weights_only=True)  # the window's records are plain values and tensors
    assert checkpoint["callbacks"]["StructuredPruning"]["window"]["steps"] == resume_at - 4
    assert resumed.speedup == pytest.approx(whole.speedup, rel=0.02)
    assert resumed.speedup >= args["target_speedup"]
    if resume_at == 6:  # nothing left to gather: the same scores, so the same cut
        assert resumed.history[-1]["entries"] == whole.history[-1]["entries"]
        assert _shapes(model) == _shapes(dense)


@pytest.mark.parametrize("prune_layers", [0, 1])
def test_an_already_cut_model_is_not_cut_again_when_the_checkpoint_leaves_other_weights_out(prune_layers):
    from lightning_green.pruning.llm import LLMPruner
    from lightning_green.testing.hf import tiny_causal_lm

    class Distill(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tiny_causal_lm("llama", hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=3)
            self.teacher = nn.Linear(2, 2)

    module = Distill()
    result = LLMPruner(prune_layers=prune_layers).prune(module, ratio=0.25)
    before = _shapes(module)
    # e.g. trainer.test(ckpt_path=...) after the fit, from a checkpoint saved without the frozen teacher
    weights = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("teacher.")}
    state = {"history": [{"entries": result.entries}], "module": None}
    assert rebuild_from_checkpoint(module, {"state_dict": weights}, state=state) is False
    assert _shapes(module) == before
