"""Small models and trainer settings shared by the tests."""

from __future__ import annotations

import atexit
import os
import time
import uuid
from typing import Any

import torch
from lightning.fabric.utilities.distributed import _destroy_dist_connection
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

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


class FakeRapl:
    """A RAPL package counting 50 W (package) and 5 W (DRAM), installed where Zeus looks its CPUs up."""

    PACKAGE_W = 50.0
    DRAM_W = 5.0

    def __init__(self, with_dram: bool = True) -> None:
        from zeus.device.cpu.common import CPU, CpuDramMeasurement, CPUs

        t0 = time.monotonic()
        package_mw, dram_mw = self.PACKAGE_W * 1000, self.DRAM_W * 1000

        class Package(CPU):
            def get_total_energy_consumption(self):
                dt = time.monotonic() - t0
                return CpuDramMeasurement(cpu_mj=package_mw * dt, dram_mj=dram_mw * dt if with_dram else None)

            def supports_get_dram_energy_consumption(self):
                return with_dram

        class Packages(CPUs):
            def __init__(self):
                self._cpus = [Package(0)]

            def __del__(self):
                pass

            @property
            def cpus(self):
                return self._cpus

        self.cpus = Packages()
        self._previous = None

    def __enter__(self) -> FakeRapl:
        import zeus.device.cpu as zeus_cpu

        self._previous, zeus_cpu._cpus = zeus_cpu._cpus, self.cpus
        return self

    def __exit__(self, *exc: object) -> None:
        import zeus.device.cpu as zeus_cpu

        zeus_cpu._cpus = self._previous


class InstallFakeRapl(Callback):
    """Installs :class:`FakeRapl` in ``setup`` — in every ddp_spawn worker too — and removes it in ``teardown``."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._rapl = FakeRapl().__enter__()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._rapl.__exit__()

    def __getstate__(self) -> dict[str, Any]:
        return {}


_destroy_registered = False


class DestroyProcessGroupAtExit(Callback):
    """Destroys the process group when a DDP worker process exits (add it to every DDP test's callbacks).

    Lightning registers that at exit for NCCL only. A gloo group left to interpreter finalization can abort the
    worker with "terminate called without an active exception" (SIGABRT) after a successful fit: Gloo's threads still
    hold work objects whose tensors need the GIL (pytorch/pytorch#190489, #179291).
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        global _destroy_registered
        if not _destroy_registered and torch.distributed.is_available() and torch.distributed.is_initialized():
            atexit.register(_destroy_dist_connection)
            _destroy_registered = True


def tb_scalars(log_dir: str) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """The scalars (tag -> [(step, value)]) and every tag in the TensorBoard event files of ``log_dir``."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    plugin_tags: set[str] = set()
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("events.out.tfevents"):
            continue
        for event in EventFileLoader(os.path.join(log_dir, name)).Load():
            for v in event.summary.value:
                plugin_tags.add(v.tag)
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
                elif v.HasField("tensor") and v.metadata.plugin_data.plugin_name == "scalars":
                    import tensorboard.util.tensor_util as tu

                    scalars.setdefault(v.tag, []).append((event.step, float(tu.make_ndarray(v.tensor))))
    return scalars, plugin_tags


class SavesAtStep(Callback):
    """Saves a checkpoint in its on_train_batch_end at one global step (as CarbonAwareScheduler's pause does)."""

    def __init__(self, step: int, path: Any) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class ElsewhereLogger(Logger):
    """A logger like W&B or MLflow: ``trainer.log_dir`` is its ``save_dir``, which every run shares, and it keeps its
    metrics where no report reads them back (here in memory). W&B's version is a run id (str), MLflow's too."""

    def __init__(self, save_dir: Any = None, name: str = "project", version: str | int | None = None) -> None:
        super().__init__()
        self._save_dir = None if save_dir is None else os.fspath(save_dir)
        self._name = name
        self._version = version if version is not None else uuid.uuid4().hex[:8]
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | int:
        return self._version

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass
