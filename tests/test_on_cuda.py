"""The training callbacks on a real CUDA GPU: NVML-measured energy, bf16/fp16 with pruning, Hugging Face LLMs, FSDP,
DataPruning with pinned multi-worker loaders, and exporting and benchmarking what was trained on the GPU.
(PowerLimitTuner only ever runs on the simulated GPU; CarbonAwareScheduler has nothing GPU-specific.)

All marked ``cuda`` (skipped without a GPU; ``benchmarks/gpu_check.sh`` runs them on a lent GPU). They only read a
GPU: no power limit, clock or persistence mode is set, and the first test checks the power limit did not move.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_green import (
    AMPScheduler,
    DataPruning,
    EnergyMonitor,
    GreenReport,
    StructuredPruning,
    reduce_sample_losses,
)
from lightning_green.pruning import load_pruned

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
GPU = {"accelerator": "cuda", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}


def power_limit_mw() -> int:
    from zeus.device import get_gpus

    return get_gpus().get_power_management_limit(0)


def energy_report(trainer: Trainer) -> dict:
    path = Path(trainer.log_dir) / "energy_report.json"
    return json.loads(path.read_text())


class ConvNet(LightningModule):
    """A small CNN on random 16x16 images with a per-sample loss (so DataPruning can score it)."""

    def __init__(self, optimizer: str = "adam", n: int = 512, num_workers: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
        self.optimizer = optimizer
        self.n = n
        self.num_workers = num_workers
        self.example_input_array = torch.zeros(1, 3, 16, 16)
        self.dtypes: dict[int, torch.dtype] = {}

    def forward(self, x):
        return self.net(x)

    def _data(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, 16, 16, generator=g)
        y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
        return TensorDataset(x, y)

    def train_dataloader(self):
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        return DataLoader(self._data(self.n, 0), batch_size=32, shuffle=True, pin_memory=True, **workers)

    def val_dataloader(self):
        return DataLoader(self._data(128, 1), batch_size=64)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.dtypes[self.global_step] = logits.dtype
        losses = nn.functional.cross_entropy(logits.float(), y, reduction="none")
        loss = reduce_sample_losses(self, losses)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits.float(), y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_energy_monitor_measures_the_gpu_through_nvml_and_leaves_its_power_limit(tmp_path):
    before = power_limit_mw()
    seed_everything(0)
    model = ConvNet()
    monitor = EnergyMonitor(print_summary=False)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, log_every_n_steps=4, callbacks=[monitor], **GPU)
    trainer.fit(model)
    fit = energy_report(trainer)["stages"]["fit"]
    assert fit["sources"]["gpu"] == "measured"
    assert fit["energy_j"]["gpu"] > 0
    # an H200 idles at tens of watts and draws more under load; anything outside 10 W..2 kW is a unit error
    avg_w = fit["energy_j"]["gpu"] / fit["time_s"]
    assert 10 < avg_w < 2000, avg_w
    metrics = trainer.callback_metrics
    assert metrics["energy/epoch_J"] > 0 and metrics["energy/total_J"] >= fit["energy_j"]["total"] * 0.5
    assert power_limit_mw() == before


class OptimizerStateOnTheGPU(Callback):
    """At the end of each epoch, while the model is still on the GPU (Lightning moves it back to the CPU in its
    teardown): every parameter and its Adam moments on CUDA with the parameter's (pruned) shape."""

    def __init__(self) -> None:
        self.checked: list[tuple[int, int]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        params = [p for group in opt.param_groups for p in group["params"]]
        assert {p.device.type for p in params} == {"cuda"}
        for p in params:
            state = opt.state[p]
            assert state["exp_avg"].shape == p.shape and state["exp_avg"].is_cuda
            assert state["exp_avg_sq"].shape == p.shape and state["exp_avg_sq"].is_cuda
        self.checked.append((trainer.current_epoch, sum(p.numel() for p in params)))


def test_fp16_with_a_grad_scaler_and_pruning_keeps_the_optimizer_state_on_the_gpu(tmp_path):
    seed_everything(0)
    model = ConvNet(optimizer="adam")
    amp = AMPScheduler(schedule={0: "16-mixed"})
    pruning = StructuredPruning(
        target_speedup=2.0, start_epoch=1, end_epoch=2, importance="magnitude-l2", verbose=False
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    state = OptimizerStateOnTheGPU()
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=4, callbacks=[amp, pruning, ckpt, state], **GPU)
    trainer.fit(model)
    assert pruning.speedup >= 1.9
    assert {model.dtypes[s] for s in model.dtypes} == {torch.float16}
    assert math.isfinite(amp.loss_scale) and amp.fallbacks == 0
    epochs, sizes = zip(*state.checked, strict=True)
    assert epochs == (0, 1, 2, 3) and sizes[0] > sizes[1] > sizes[2] == sizes[3]  # checked after each prune
    # the checkpoint loads with weights_only and rebuilds on the CPU, identical to the GPU model
    path = ckpt.last_model_path
    torch.load(path, weights_only=True, map_location="cpu")
    rebuilt = load_pruned(ConvNet(), path).eval()
    model.cuda().eval()  # Lightning's teardown put it back on the CPU
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x.cuda()).cpu(), rtol=1e-4, atol=1e-4)


def test_a_nan_in_fp16_on_the_gpu_falls_back_to_fp32_and_comes_back(tmp_path):
    class NaNNet(ConvNet):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                x, y = batch
                return super().training_step((x * float("nan"), y), batch_idx)
            return super().training_step(batch, batch_idx)

    seed_everything(0)
    model = NaNNet(optimizer="sgd", n=256)
    amp = AMPScheduler(schedule={0: "16-mixed"}, cooldown_steps=2)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[amp], **GPU)
    trainer.fit(model)
    assert amp.fallbacks == 1
    assert [model.dtypes[s] for s in range(8)] == [torch.float16] * 4 + [torch.float32] * 2 + [torch.float16] * 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_hf_llama_in_bf16_with_pruning_energy_and_report_on_the_gpu(tmp_path):
    pytest.importorskip("transformers")
    from lightning_green.demos import StdlibTextDataModule
    from lightning_green.testing.hf import tiny_hf_module

    seed_everything(0)
    model = tiny_hf_module("llama", hidden_size=64, num_layers=2, intermediate_size=192)
    data = StdlibTextDataModule(
        seq_len=64, batch_size=16, train_bytes=32_768, val_bytes=4_096, batch_format="causal_lm"
    )
    amp = AMPScheduler(policy="auto", warmup_epochs=1)
    pruning = StructuredPruning(
        target_speedup=1.5, start_epoch=1, end_epoch=2, importance="taylor", round_to=8, verbose=False
    )
    monitor = EnergyMonitor(print_summary=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=4,
        log_every_n_steps=8,
        callbacks=[monitor, amp, pruning, GreenReport(metric="val_loss"), ckpt],
        **GPU,
    )
    trainer.fit(model, data)
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert [(s["epoch"], s["to"]) for s in amp.switches][:1] == [(1, "bf16-mixed" if bf16 else "16-mixed")]
    assert pruning.speedup >= 1.45
    cfg = model.model.config
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    fit = energy_report(trainer)["stages"]["fit"]
    assert fit["sources"]["gpu"] == "measured" and fit["energy_j"]["gpu"] > 0
    assert fit.get("tokens", 0) > 0 or "J_per_token" in json.dumps(fit)
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    # checkpoint: weights only, rebuilt on the CPU with identical logits; generate() on the GPU
    path = ckpt.last_model_path
    torch.load(path, weights_only=True, map_location="cpu")
    rebuilt = load_pruned(tiny_hf_module("llama", hidden_size=64, num_layers=2, intermediate_size=192), path).eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    model.cuda().eval()  # Lightning's teardown put it back on the CPU
    with torch.no_grad():
        ref = model.model(ids.cuda()).logits.float().cpu()
        torch.testing.assert_close(rebuilt.model(ids).logits, ref, rtol=2e-3, atol=2e-3)
        out = model.model.generate(ids[:1].cuda(), max_new_tokens=8, do_sample=False)
    assert out.shape == (1, 32)


def test_data_pruning_on_the_gpu_with_pinned_memory_and_workers(tmp_path):
    seed_everything(0)
    model = ConvNet(optimizer="sgd", n=512, num_workers=2)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=4,
        limit_val_batches=0,
        callbacks=[dp, EnergyMonitor(print_summary=False)],
        **GPU,
    )
    trainer.fit(model)
    kept = [h["kept"] for h in dp.history]
    assert kept[0] == 512 and kept[-1] == 512  # unscored first epoch, annealing last epoch
    assert all(k < 512 for k in kept[1:3]), kept
    assert torch.isfinite(dp.scores.values).all()
    assert trainer.callback_metrics["data/samples_seen"].item() == sum(kept)
    assert energy_report(trainer)["stages"]["fit"]["sources"]["gpu"] == "measured"


def test_fsdp_on_one_gpu_runs_energy_and_data_pruning_and_refuses_structured_pruning(tmp_path):
    seed_everything(0)
    model = ConvNet(optimizer="adam", n=256)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        strategy="fsdp",
        callbacks=[dp, EnergyMonitor(print_summary=False)],
        **GPU,
    )
    trainer.fit(model)
    assert energy_report(trainer)["stages"]["fit"]["sources"]["gpu"] == "measured"
    assert dp.history[1]["kept"] < 256

    pruning = StructuredPruning(target_speedup=1.5, verbose=False)
    bad = Trainer(default_root_dir=tmp_path / "b", max_epochs=1, strategy="fsdp", callbacks=[pruning], **GPU)
    with pytest.raises(ValueError, match="StructuredPruning.*FSDP"):
        bad.fit(ConvNet(n=64))


def test_a_checkpoint_trained_on_the_gpu_exports_on_the_cpu(tmp_path):
    from lightning_green.export import export_checkpoint

    seed_everything(0)
    model = ConvNet(n=256)
    pruning = StructuredPruning(target_speedup=2.0, start_epoch=1, end_epoch=1, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, callbacks=[pruning, ckpt], **GPU)
    trainer.fit(model)
    result = export_checkpoint(
        ckpt.last_model_path, module=ConvNet, out=tmp_path / "model.onnx", format="onnx", verbose=False
    )
    assert result.size_bytes > 0 and result.checks and all(c.ok for c in result.checks)


def test_bench_inference_on_the_gpu_reads_nvml_and_runs_eager_bf16_and_torch_export(tmp_path, capsys):
    from lightning_green.cli import main

    seed_everything(0)
    model = ConvNet(n=256)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[ckpt], **GPU).fit(model)
    args = ["bench-inference", ckpt.last_model_path, "--module", f"{__name__}.ConvNet", "--device", "cuda"]
    args += ["--batch-sizes", "1,256", "--repeats", "10", "--rounds", "2", "--no-report", "--json", tmp_path / "b.json"]
    with pytest.raises(SystemExit) as exit_info:
        main([os.fspath(a) for a in args])
    assert exit_info.value.code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["device"] == "cuda:0"
    assert sorted({r["format"] for r in data["rows"]}) == ["bf16", "eager", "torch-export"]
    for row in data["rows"]:
        assert row["label"] in ("measured", "mixed") and row["energy_per_1k_j"] > 0, row


def test_energy_budget_stops_on_the_gpus_measured_energy(tmp_path):
    from lightning_green import EnergyBudget

    seed_everything(0)
    monitor = EnergyMonitor(print_summary=False, min_window_s=0.0)
    budget = EnergyBudget(max_energy=300, unit="J")
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=200,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[monitor, budget],
        **GPU,
    )
    trainer.fit(ConvNet(n=256))
    assert budget.stopped_reason is not None and trainer.current_epoch < 199
    fit = energy_report(trainer)["stages"]["fit"]
    assert fit["sources"]["gpu"] == "measured" and fit["energy_j"]["total"] >= 300
