"""Issue 11 item 4: every preset in examples/configs logs per-step energy (no Lightning logging-interval warning)."""

import glob
import os
import warnings

import pytest

from lightning_green import EnergyMonitor
from lightning_green.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "examples", "configs", "*.yaml")))


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_logs_per_step_energy_within_an_epoch(path, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-green"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(["--config", path, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=0"], run=False)
    trainer = result.trainer
    monitors = [cb for cb in trainer.callbacks if isinstance(cb, EnergyMonitor)]
    assert monitors and all(m.log_every_n_steps is None for m in monitors)  # they follow the Trainer's interval
    # Lightning's own check, as fit runs it (max_steps=0: the data is set up, nothing trains; ours are left out)
    trainer.callbacks = [cb for cb in trainer.callbacks if type(cb).__module__.startswith("lightning.pytorch")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(result.model, datamodule=result.datamodule)
    interval = [str(w.message) for w in caught if "logging interval" in str(w.message)]
    assert interval == [], interval
    batches = trainer.num_training_batches
    assert 0 < trainer.log_every_n_steps <= batches / 2  # at least two per-step points an epoch
