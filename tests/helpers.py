"""Small models and trainer settings shared by the tests."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

QUIET: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
    "devices": 1,
}


def make_trainer(root_dir: Any, **overrides: Any) -> Trainer:
    """A quiet CPU Trainer writing under ``root_dir``: no logger, one epoch, no validation unless overridden."""
    kwargs: dict[str, Any] = {"logger": False, "max_epochs": 1, "limit_val_batches": 0, **QUIET, **overrides}
    return Trainer(default_root_dir=root_dir, **kwargs)


def busy_cpu(seconds: float) -> None:
    """Spin on this process's CPU clock (a steady, measurable workload)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class SteadyModel(BoringModel):
    """BoringModel whose every training step burns the same CPU time."""

    def __init__(self, step_cpu_s: float = 0.01) -> None:
        super().__init__()
        self.step_cpu_s = step_cpu_s

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        busy_cpu(self.step_cpu_s)
        return super().training_step(batch, batch_idx)


class FailingModel(BoringModel):
    """Raises in training_step at ``fail_at`` (global step)."""

    def __init__(self, fail_at: int = 3) -> None:
        super().__init__()
        self.fail_at = fail_at

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.global_step == self.fail_at:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def finite(model: torch.nn.Module) -> bool:
    """All parameters finite."""
    return all(torch.isfinite(p).all() for p in model.parameters())
