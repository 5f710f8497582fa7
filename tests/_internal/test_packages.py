"""Lightning's standalone ``pytorch_lightning`` package: the callbacks that only read a run work under its Trainer,
with its loggers and checkpoint callback; those that replace Lightning's own parts refuse it with what to change."""

from __future__ import annotations

import pytest
import pytorch_lightning as standalone
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_green import (
    AMPScheduler,
    EnergyMonitor,
    GreenRichProgressBar,
    GreenTQDMProgressBar,
    PowerLimitTuner,
    StructuredPruning,
)
from lightning_green._internal.packages import is_standalone_package, lightning_types
from lightning_green.testing import SimulatedGPUWorkload
from tests.callbacks.test_carbon_aware_scheduler import fit_with_long_pauses
from tests.helpers import QUIET, tb_scalars


def standalone_trainer(tmp_path, **kwargs) -> standalone.Trainer:
    settings = {**QUIET, "logger": False, "max_epochs": 1, "limit_val_batches": 0, **kwargs}
    return standalone.Trainer(default_root_dir=tmp_path, **settings)


@pytest.mark.parametrize(
    ("callback", "why"),
    [
        (lambda: AMPScheduler(policy="bf16-mixed"), "swaps Lightning's own precision plugins"),
        (lambda: StructuredPruning(target_speedup=1.5), "re-makes Lightning's DDP wrapper"),
        (GreenTQDMProgressBar, "is a subclass of Lightning's progress bars"),
        (GreenRichProgressBar, "is a subclass of Lightning's progress bars"),
    ],
    ids=["amp", "pruning", "tqdm", "rich"],
)
def test_callbacks_replacing_lightning_parts_refuse_its_standalone_package(tmp_path, callback, why):
    cb = callback()
    bar = isinstance(cb, (GreenTQDMProgressBar, GreenRichProgressBar))
    trainer = standalone_trainer(tmp_path, callbacks=[cb], enable_progress_bar=bar, max_steps=2)
    name = type(cb).__name__
    with pytest.raises(TypeError, match=rf"{name}\(trainer='pytorch_lightning.Trainer'\).*{why}.*lightning\.pytorch"):
        trainer.fit(BoringModel())


def test_energy_monitor_and_power_tuner_write_their_tensorboard_extras_through_its_logger(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    tuner = PowerLimitTuner(warmup_steps=1, profile_steps=2)
    sim = SimulatedGPUWorkload(step_work_s=0.001, gpu_kwargs={"curve": "v100-resnet50"})
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    trainer = standalone_trainer(tmp_path, logger=logger, max_epochs=2, callbacks=[sim, monitor, tuner])
    trainer.fit(BoringModel())
    assert tuner.chosen_limit_w is not None
    scalars, tags = tb_scalars(logger.log_dir)
    assert "energy/total_J" in scalars
    assert "custom_scalars__config__" in tags  # the layout
    assert "hparams/energy_total_J" in scalars  # the run's totals next to its hyperparameters
    assert any(t.startswith("power/profile") and t not in scalars for t in tags)  # the profile's text table


def test_carbon_pause_checkpoint_uses_its_model_checkpoint(tmp_path):
    fit_with_long_pauses(standalone.Trainer, BoringModel, tmp_path, ModelCheckpoint)
    assert (tmp_path / "ckpt" / "last-carbon-pause.ckpt").exists()


def test_lightning_types_and_the_package_check():
    assert len(lightning_types("loggers", "TensorBoardLogger")) == 2  # this module imported the standalone package
    assert isinstance(TensorBoardLogger("."), lightning_types("loggers", "TensorBoardLogger"))
    assert is_standalone_package(standalone.Trainer(logger=False, **QUIET))
    assert not is_standalone_package(object())
