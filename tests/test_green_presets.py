"""The green presets (examples/configs/green.yaml, green_gpt.yaml) end to end through the CLI, on tiny settings."""

import logging
import math
import os

import pytest

from lightning_green import AMPScheduler, PowerLimitTuner, StructuredPruning
from lightning_green.cli import cli
from lightning_green.precision.capability import resolve_policy
from lightning_green.report import load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--trainer.accelerator=cpu",  # the tuner must never touch a real GPU from a test
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=6",  # taylor ranks channels on 4 batches, then prunes: inside epoch 1
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_checkpointing=false",
]
BF16 = 16.5  # precision/mode of bf16


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-green"])


def fit_preset(name, tmp_path, caplog, *extra):
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="the last prune is at epoch 3"):
        result = cli(
            ["fit", "--config", os.path.join(ROOT, "examples", "configs", name), *TINY, *extra]
            + [f"--trainer.default_root_dir={tmp_path}"]
        )
    callbacks = {type(cb): cb for cb in result.trainer.callbacks}
    return result, callbacks, load_run(result.trainer.log_dir)


def assert_green_run(result, callbacks, run, caplog):
    log_dir = result.trainer.log_dir
    for name in ("green_report.md", "green_report.html", "energy_report.json"):
        assert os.path.isfile(os.path.join(log_dir, name)), name
    # Pruning really happened, and the report counts MACs as pruning/macs does.
    pruning = callbacks[StructuredPruning]
    assert len(pruning.history) == 1 and pruning.speedup > 1.2
    assert run.macs()[0] == pytest.approx(pruning.macs) == pytest.approx(run.extra("model")["macs"])
    assert run.dense_macs() == pytest.approx(pruning.dense_macs)
    assert os.path.isfile(os.path.join(log_dir, "green_report_files", "macs_per_prune.png"))
    # The tuner said once that it is off.
    tuner = callbacks[PowerLimitTuner]
    assert tuner.state == "off" and tuner.disabled_reason == "no GPU"
    assert caplog.text.count("PowerLimitTuner: no GPU to tune (CPU-only run); the tuner is off.") == 1
    # The whole run is labelled as what it is: estimated on this CPU.
    assert run.label == "estimated" and run.total_energy_j > 0


def test_digits_preset_prunes_switches_precision_and_reports(tmp_path, caplog):
    result, callbacks, run = fit_preset("green.yaml", tmp_path, caplog, "--data.image_size=16")
    assert_green_run(result, callbacks, run, caplog)
    # policy auto from the first step: the device's low precision (bf16 on CPUs with AVX-512-BF16) instead of the
    # Trainer's fp32, which is back in place after fit.
    amp = callbacks[AMPScheduler]
    chosen = resolve_policy("auto", "cpu").mode
    assert amp.choice.mode == chosen
    modes = {p.value for p in run.scalars.series("precision/mode")}
    assert modes == ({BF16} if chosen == "bf16-mixed" else {32.0})
    assert type(result.trainer.strategy.precision_plugin).__name__ == "Precision"
    assert run.to_target("val_acc", 0.0, "max").reached  # GreenReport(target=...) has a metric to follow
    with open(os.path.join(result.trainer.log_dir, "green_report.md"), encoding="utf-8") as f:
        assert "val_acc ≥ 0.97 |" in f.read()  # the preset's own target reaches the report


def test_language_model_preset_prunes_width_and_mlp_head_by_head_and_switches_to_bf16(tmp_path, caplog):
    tiny_lm = [
        "--model.d_model=32",
        "--model.block_size=32",
        "--data.seq_len=32",
        "--data.batch_size=8",
        "--data.train_bytes=8192",
        "--data.val_bytes=2048",
    ]
    result, callbacks, run = fit_preset("green_gpt.yaml", tmp_path, caplog, *tiny_lm)
    assert_green_run(result, callbacks, run, caplog)
    # The MLPs lost hidden units and the width was cut with 4 whole heads of equal size left; the output layer is
    # whole (256 bytes).
    model = result.model
    assert sum(block.mlp[0].out_features for block in model.blocks) < len(model.blocks) * 4 * 32
    width = model.blocks[0].attn.embed_dim
    assert width < 32 and width % 4 == 0
    for block in model.blocks:
        attn = block.attn
        assert (attn.num_heads, attn.embed_dim, attn.head_dim * 4) == (4, width, width)
        assert tuple(attn.in_proj_weight.shape) == (3 * width, width)
    assert model.head.out_features == 256
    # One fp32 warm-up epoch, then the device's low precision.
    amp = callbacks[AMPScheduler]
    chosen = resolve_policy("auto", "cpu").mode
    if chosen != "32-true":
        assert [(s["epoch"], s["from"], s["to"]) for s in amp.switches] == [(1, "32-true", chosen)]
    assert math.isfinite(result.trainer.callback_metrics["val_loss"])
    assert run.metric_name("val_loss") == "val_loss" and len(run.curve("val_loss")) == 2
