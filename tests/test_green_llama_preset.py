"""The Hugging Face preset examples/configs/green_llama.yaml through the CLI, on tiny settings."""

import importlib.util
import logging
import math
import os

import pytest
import torch
import yaml

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from lightning_green import AMPScheduler, EnergyMonitor, GreenReport, StructuredPruning  # noqa: E402
from lightning_green.cli import cli  # noqa: E402
from lightning_green.demos import HFCausalLM, StdlibTextDataModule  # noqa: E402
from lightning_green.precision.capability import resolve_policy  # noqa: E402
from lightning_green.report import load_run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "examples", "configs", "green_llama.yaml")
TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.limit_train_batches=6",  # taylor ranks on the first batches of a prune's epoch, then prunes
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_checkpointing=false",
    "--model.hidden_size=32",
    "--model.num_layers=2",
    "--model.intermediate_size=64",
    "--data.seq_len=32",
    "--data.batch_size=8",
    "--data.train_bytes=8192",
    "--data.val_bytes=2048",
]
#: The structure-aware pruner for Hugging Face causal LMs (issue 10's core); without it the preset's pruning cannot run.
HAS_LLM_PRUNER = importlib.util.find_spec("lightning_green.pruning.llm") is not None


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-green"])


def without_pruning(tmp_path):
    with open(PRESET, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    callbacks = config["trainer"]["callbacks"]
    config["trainer"]["callbacks"] = [cb for cb in callbacks if not cb["class_path"].endswith("StructuredPruning")]
    assert len(config["trainer"]["callbacks"]) == len(callbacks) - 1
    path = tmp_path / "green_llama_no_pruning.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_preset_builds_a_small_gqa_llama_with_the_green_callbacks():
    result = cli(["--config", PRESET, "--trainer.accelerator=cpu"], run=False)
    model, data, trainer = result.model, result.datamodule, result.trainer
    assert isinstance(model, HFCausalLM) and type(model.model).__name__ == "LlamaForCausalLM"
    cfg = model.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (3, 128, 4, 2)
    assert isinstance(data, StdlibTextDataModule) and data.batch_format == "causal_lm"
    kinds = {type(cb) for cb in trainer.callbacks}
    assert {EnergyMonitor, AMPScheduler, StructuredPruning, GreenReport} <= kinds
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    assert pruning.target_speedup == 1.5
    amp = next(cb for cb in trainer.callbacks if isinstance(cb, AMPScheduler))
    assert amp.policy == "auto"
    # log_every_n_steps is consistent with the batches per epoch: a whole number of logged points per epoch
    data.setup("fit")
    batches = math.ceil(len(data.train_set) / data.batch_size)
    assert batches == 64 and batches % trainer.log_every_n_steps == 0


def test_preset_without_pruning_trains_in_bf16_and_reports_macs_per_token(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = cli(
            ["fit", "--config", without_pruning(tmp_path), *TINY, "--trainer.max_epochs=2"]
            + [f"--trainer.default_root_dir={tmp_path}"]
        )
    trainer, model = result.trainer, result.model
    log_dir = trainer.log_dir
    for name in ("green_report.md", "green_report.html", "energy_report.json"):
        assert os.path.isfile(os.path.join(log_dir, name)), name
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    amp = next(cb for cb in trainer.callbacks if isinstance(cb, AMPScheduler))
    chosen = resolve_policy("auto", "cpu").mode
    if chosen != "32-true":
        assert [(s["epoch"], s["from"], s["to"]) for s in amp.switches] == [(1, "32-true", chosen)]
    run = load_run(log_dir)
    assert run.tokens_per_sample() == 32 and run.label == "estimated"
    with open(os.path.join(log_dir, "green_report.md"), encoding="utf-8") as f:
        assert "model MACs per token (final)" in f.read()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLM_PRUNER, reason="needs the Hugging Face LLM pruner (lightning_green.pruning.llm)")
def test_preset_prunes_the_llama_to_fewer_macs_with_whole_kv_groups(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = cli(
            ["fit", "--config", PRESET, *TINY, "--trainer.max_epochs=4"] + [f"--trainer.default_root_dir={tmp_path}"]
        )
    trainer, model = result.trainer, result.model
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    assert pruning.prunes_done >= 1 and pruning.speedup > 1.2
    cfg, layers = model.model.config, model.model.model.layers
    for layer in layers:  # the config describes the weights, and the query heads still group over the KV heads
        attn, mlp = layer.self_attn, layer.mlp
        assert mlp.gate_proj.out_features == mlp.up_proj.out_features == cfg.intermediate_size
        assert attn.q_proj.out_features == cfg.num_attention_heads * cfg.head_dim
        assert attn.k_proj.out_features == attn.v_proj.out_features == cfg.num_key_value_heads * cfg.head_dim
        assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    run = load_run(trainer.log_dir)
    assert run.macs()[0] == pytest.approx(pruning.macs)
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    out = model.generate(b"def ", max_new_bytes=4)
    assert out == model.generate(b"def ", max_new_bytes=4, use_cache=False)
