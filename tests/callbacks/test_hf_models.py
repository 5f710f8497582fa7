"""The callbacks on Hugging Face causal LMs (HFCausalLM): dict batches, ModelOutput returns, tied weights."""

import math
import os

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from lightning_green import AMPScheduler, EnergyMonitor, GreenReport, PowerLimitTuner  # noqa: E402
from lightning_green.demos import HFCausalLM, StdlibTextDataModule  # noqa: E402
from lightning_green.precision import resolve_policy  # noqa: E402
from lightning_green.pruning.graph import count_macs_params  # noqa: E402
from lightning_green.report import load_run  # noqa: E402
from lightning_green.report.green import fmt_macs  # noqa: E402
from lightning_green.testing import SimulatedGPUWorkload, simulated_gpus  # noqa: E402
from lightning_green.testing.hf import tiny_causal_lm, tiny_hf_module  # noqa: E402
from tests.helpers import QUIET  # noqa: E402

DATA = {"seq_len": 32, "batch_size": 8, "train_bytes": 16_384, "val_bytes": 2_048, "batch_format": "causal_lm"}
NAMES = {torch.float32: "32", torch.bfloat16: "bf16", torch.float16: "16"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class NaNLM(HFCausalLM):
    """Records the dtype of its logits per training step; its embeddings output NaN at ``nan_steps``."""

    def __init__(self, nan_steps=(), **kw):
        super().__init__(**kw)
        self.nan_steps = set(nan_steps)
        self.dtypes: dict[int, str] = {}

    def training_step(self, batch, batch_idx):
        emb = self.model.get_input_embeddings()
        hooks = [self.model.lm_head.register_forward_hook(self._record)]
        if self.global_step in self.nan_steps:
            hooks.append(emb.register_forward_hook(lambda m, args, out: out * float("nan")))
        try:
            return super().training_step(batch, batch_idx)
        finally:
            for h in hooks:
                h.remove()

    def _record(self, module, args, out):
        self.dtypes[self.global_step] = NAMES[out.dtype]


def test_amp_scheduler_runs_an_hf_model_in_the_native_low_precision_and_falls_back_on_nan(tmp_path):
    model = NaNLM(nan_steps={2}, family="llama", hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2)
    amp = AMPScheduler(policy="auto", cooldown_steps=2)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=7,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[amp],
        **QUIET,
    )
    trainer.fit(model, StdlibTextDataModule(**DATA))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    chosen = resolve_policy("auto", "cpu").mode
    low = {"bf16-mixed": "bf16", "16-mixed": "16", "32-true": "32"}[chosen]
    if chosen == "32-true":
        assert set(model.dtypes.values()) == {"32"}
        return
    # the NaN step is skipped, then 2 cooldown steps in fp32, then the low precision again
    assert model.dtypes == {0: low, 1: low, 2: low, 3: "32", 4: "32", 5: low, 6: low}
    assert (amp.fallbacks, amp.skipped_steps) == (1, 1)
    assert type(trainer.strategy.precision_plugin).__name__ == "Precision"  # restored after fit


def test_energy_monitor_and_green_report_count_mac_per_token_with_dict_batches(tmp_path):
    seen = []

    class Batches(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(batch)

    model = tiny_hf_module("qwen2", hidden_size=32, num_layers=1)
    report = GreenReport()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        log_every_n_steps=1,
        callbacks=[EnergyMonitor(print_summary=False), report, Batches()],
        **QUIET,
    )
    trainer.fit(model, StdlibTextDataModule(**DATA))
    assert {"input_ids", "attention_mask", "labels"} <= set(seen[0])
    run = load_run(trainer.log_dir)
    macs, _ = count_macs_params(model, torch.zeros(1, 32, dtype=torch.long))
    assert run.tokens_per_sample() == 32 and run.macs_unit() == ("token", 32.0)
    assert run.extra("model")["macs"] == pytest.approx(macs)
    assert run.total_energy_j > 0
    with open(report.files.markdown, encoding="utf-8") as f:
        text = f.read()
    assert f"| model MACs per token (final) | {fmt_macs(macs / 32)} |" in text
    assert "MACs per sample" not in text


def test_mac_count_of_gpt2_includes_its_conv1d_layers():
    model = tiny_causal_lm("gpt2", hidden_size=64, num_layers=2, intermediate_size=128)
    t = 16
    macs, _ = count_macs_params(model, torch.zeros(1, t, dtype=torch.long))
    # per block: c_attn 64->192, c_proj 64->64, c_fc 64->128, c_proj 128->64; lm_head 64->256
    lm_head = t * 64 * 256
    linear = 2 * t * (64 * 192 + 64 * 64 + 64 * 128 + 128 * 64) + lm_head
    assert macs >= linear > 4 * lm_head  # torch-pruning also counts biases, layer norms and activations
    assert macs < linear * 1.05
    from torch_pruning.utils import op_counter

    assert op_counter.CUSTOM_MODULES_MAPPING == {}  # the Conv1D entry does not outlive the count


def test_power_limit_tuner_profiles_an_hf_model_on_the_simulated_gpu(tmp_path):
    fast = {"warmup_steps": 1, "profile_steps": 2, "pl_step_w": 50, "wait_steps": 0}
    profile_steps = 4 * 3 + 1  # 4 limits x (1 warm-up + 2 profiled), +1 to close the last window
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240) as gpus:
        gpu = gpus.gpus[0]
        tuner = PowerLimitTuner(objective="time", **fast)
        work = SimulatedGPUWorkload(step_work_s=0.002, gpu_kwargs={"curve": "v100-resnet50"})
        trainer = Trainer(
            default_root_dir=tmp_path,
            max_steps=profile_steps + 2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[work, tuner],
        )
        trainer.fit(tiny_hf_module("llama", hidden_size=32, num_layers=1), StdlibTextDataModule(**DATA))
        assert tuner.state == "done" and tuner.chosen_limit_w is not None
        assert [r["limit_w"] for r in tuner.table()] == [250.0, 200.0, 150.0, 100.0]
        assert gpu.get_power_management_limit() == 240_000  # restored at the end


class UserLM(LightningModule):
    """A user's own wrapper: BatchEncoding batches, ``training_step`` returns the HF ``ModelOutput`` itself."""

    def __init__(self):
        super().__init__()
        self.model = tiny_causal_lm("gpt2", hidden_size=32, num_layers=1)
        self.example_input_array = {"input_ids": torch.zeros(1, 16, dtype=torch.long)}

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.log("train_loss", out.loss)
        return out  # a ModelOutput: a dict with "loss"

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _encodings(n=24, t=16):
    from transformers import BatchEncoding

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 256, (n, t), generator=g)

    def collate(rows):
        x = torch.stack(rows)
        return BatchEncoding({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()})

    return DataLoader(list(ids), batch_size=4, collate_fn=collate)


def test_a_users_hf_module_with_batch_encodings_and_model_outputs_runs_every_callback(tmp_path):
    amp = AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed"})
    report = GreenReport()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        log_every_n_steps=1,
        callbacks=[EnergyMonitor(print_summary=False), amp, report],
        **QUIET,
    )
    model = UserLM()
    trainer.fit(model, _encodings(), _encodings(8))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [(s["epoch"], s["to"]) for s in amp.switches] == [(1, "bf16-mixed")]
    run = load_run(trainer.log_dir)
    assert run.tokens_per_sample() == 16
    macs, _ = count_macs_params(model, model.example_input_array)
    assert run.extra("model")["macs"] == pytest.approx(macs) and macs > 16 * 32 * 256 * 2  # Conv1D counted


class UserLMFromBatch(UserLM):
    """UserLM without ``example_input_array``: GreenReport counts MACs on the first training batch."""

    def __init__(self):
        super().__init__()
        self.example_input_array = None

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def _padded_encodings(real_lengths, t=16):
    """Batches of 4 padded to ``t``; sample i has ``real_lengths[i]`` real tokens (in this order, no shuffle)."""
    from transformers import BatchEncoding

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 256, (len(real_lengths), t), generator=g)
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in real_lengths])

    def collate(rows):
        x, m = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
        return BatchEncoding({"input_ids": x * m, "attention_mask": m, "labels": (x * m).masked_fill(m == 0, -100)})

    return DataLoader(list(zip(ids, mask, strict=True)), batch_size=4, collate_fn=collate)


def test_macs_per_token_is_the_models_not_the_first_batchs_padding(tmp_path):
    # The divisor was the first batch's mean count of attention-mask ones: the same model and data in another order
    # (shortest sequences first) reported 4x the MACs per token. The model computes every padded position.
    per_token = []
    for name, lengths in {"short_first": [4] * 4 + [16] * 8, "long_first": [16] * 8 + [4] * 4}.items():
        trainer = Trainer(
            default_root_dir=tmp_path / name,
            max_epochs=1,
            limit_val_batches=0,
            callbacks=[EnergyMonitor(print_summary=False), GreenReport()],
            **QUIET,
        )
        trainer.fit(UserLMFromBatch(), _padded_encodings(lengths))
        run = load_run(trainer.log_dir)
        macs, _ = run.macs()
        assert run.tokens_per_sample() == 16 and run.macs_unit() == ("token", 16.0)
        per_token.append(macs / run.macs_unit()[1])
    assert per_token[0] == pytest.approx(per_token[1])
