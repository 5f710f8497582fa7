"""Callback state restored after on_fit_start (issue 11, item 10).

A strategy with ``restore_checkpoint_after_setup`` (FSDP, DeepSpeed, or any custom one) restores the callbacks'
state after ``on_fit_start``; EnergyMonitor and PowerLimitTuner must handle that order as well as the usual one.
"""

import json
from pathlib import Path

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from lightning_green import EnergyMonitor, PowerLimitTuner
from lightning_green.testing import SimulatedGPUWorkload, simulated_gpus
from tests.helpers import DestroyProcessGroupAtExit

FAST = {"warmup_steps": 1, "profile_steps": 2, "pl_step_w": 50, "wait_steps": 0}
PROFILE_STEPS = 4 * 3 + 1  # 4 limits x (1 warm-up + 2 profiled) + 1


class RestoreAfterSetup(SingleDeviceStrategy):
    """CPU single device, restoring the checkpoint after setup as FSDP/DeepSpeed do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


class RestoreAfterSetupDDP(DDPStrategy):
    """CPU DDP (spawned workers), restoring the checkpoint after setup as FSDP/DeepSpeed do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


class Record(Callback):
    """What the monitor and the tuner hold at the end of the fit, per rank (ddp_spawn workers write files)."""

    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        monitor = next(cb for cb in trainer.callbacks if isinstance(cb, EnergyMonitor))
        tuner = next((cb for cb in trainer.callbacks if isinstance(cb, PowerLimitTuner)), None)
        record = {"fit_steps": monitor.ledgers["fit"].steps}
        if tuner is not None:
            record.update(profiling_steps=tuner.profiling_steps, state=tuner.state, chosen=tuner.chosen_limit_w)
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _trainer(tmp_path, callbacks, **kw):
    kw = {
        "max_steps": 4,
        "limit_val_batches": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kw,
    }
    return Trainer(default_root_dir=tmp_path, callbacks=callbacks, **kw)


def test_energy_monitor_after_setup_restore_keeps_the_checkpoint_and_the_next_fit_starts_afresh(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = EnergyMonitor(print_summary=False)
    _trainer(tmp_path, [first, ckpt]).fit(BoringModel())
    saved_j = first.total_energy_j()

    monitor = EnergyMonitor(print_summary=False)
    _trainer(tmp_path, [monitor], max_steps=8, strategy=RestoreAfterSetup("cpu")).fit(
        BoringModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    resumed_j = monitor.total_energy_j()
    assert resumed_j > saved_j  # continued from the checkpoint's ledger

    _trainer(tmp_path, [monitor], max_steps=2, strategy=RestoreAfterSetup("cpu")).fit(BoringModel())  # no ckpt
    assert monitor.total_energy_j() < resumed_j  # a new fit: its own ledger, nothing left over from the restore


@pytest.fixture
def v100():
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240) as gpus:
        yield gpus.gpus[0]


def _work(count=1):
    return SimulatedGPUWorkload(count=count, step_work_s=0.002, gpu_kwargs={"curve": "v100-resnet50"})


def test_power_limit_tuner_uses_the_checkpoints_profile_when_restored_after_setup(tmp_path, v100):
    first = PowerLimitTuner(**FAST)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, [_work(), first, ckpt], max_steps=PROFILE_STEPS + 1).fit(BoringModel())
    assert first.state == "done"

    resumed = PowerLimitTuner(**FAST)
    _trainer(tmp_path, [_work(), resumed], max_steps=PROFILE_STEPS + 4, strategy=RestoreAfterSetup("cpu")).fit(
        BoringModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert resumed.state == "done" and resumed.profiling_steps == first.profiling_steps  # not profiled again
    assert resumed.chosen_limit_w == first.chosen_limit_w


@pytest.mark.slow
def test_ddp_restore_after_setup_keeps_energy_and_profile(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    ddp = {"devices": 2, "accelerator": "cpu"}
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    _trainer(
        tmp_path,
        [_work(2), EnergyMonitor(print_summary=False), PowerLimitTuner(**FAST), ckpt, Record(first_dir)]
        + [DestroyProcessGroupAtExit()],  # else gloo may abort a worker at exit (tests/helpers.py)
        max_steps=PROFILE_STEPS + 1,
        strategy=RestoreAfterSetupDDP(start_method="spawn"),
        **ddp,
    ).fit(BoringModel())
    first = json.loads((first_dir / "rank0.json").read_text())
    assert first["state"] == "done" and first["profiling_steps"] > 0

    _trainer(
        tmp_path,
        [_work(2), EnergyMonitor(print_summary=False), PowerLimitTuner(**FAST), Record(tmp_path)]
        + [DestroyProcessGroupAtExit()],
        max_steps=PROFILE_STEPS + 4,
        strategy=RestoreAfterSetupDDP(start_method="spawn"),
        **ddp,
    ).fit(BoringModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for rank in (0, 1):
        resumed = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # the checkpoint's profile, with its profiling steps (none more)
        assert resumed["state"] == "done" and resumed["profiling_steps"] == first["profiling_steps"]
        assert resumed["chosen"] == first["chosen"]
        assert resumed["fit_steps"] > first["fit_steps"]  # the checkpoint's ledger, continued
