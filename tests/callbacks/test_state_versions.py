"""Saved callback state (issue 11, item 12): versions are checked, AMPScheduler saves what it reads and validates
the precision mode it restores."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_green import (
    AMPScheduler,
    CarbonAwareScheduler,
    DataPruning,
    EnergyBudget,
    EnergyMonitor,
    GreenReport,
    PowerLimitTuner,
    StructuredPruning,
)
from lightning_green._internal.validation import InvalidArgumentError
from tests.helpers import make_trainer

CALLBACKS = [
    lambda: AMPScheduler(),
    lambda: CarbonAwareScheduler(intensity=100.0),
    lambda: DataPruning(),
    lambda: EnergyBudget(max_energy=1.0),
    lambda: EnergyMonitor(),
    lambda: GreenReport(),
    lambda: PowerLimitTuner(),
    lambda: StructuredPruning(),
]

VERSIONS = {"PowerLimitTuner": 2}  # the state versions that moved on from 1


@pytest.mark.parametrize("make", CALLBACKS, ids=lambda f: type(f()).__name__)
def test_a_newer_state_version_fails_clearly(make):
    callback = make()
    state = callback.state_dict()
    assert state["version"] == VERSIONS.get(type(callback).__name__, 1)
    callback.load_state_dict(dict(state))  # its own version loads
    name = type(callback).__name__
    with pytest.raises(InvalidArgumentError, match=rf"^{name}: .* version 7, newer than this lightning-green reads"):
        make().load_state_dict({**state, "version": 7})
    with pytest.raises(InvalidArgumentError, match=rf"^{name}: .* version 'x'"):
        make().load_state_dict({**state, "version": "x"})


def test_amp_scheduler_saves_only_what_it_reads():
    # load_state_dict/on_fit_start read these; `interval` and `low_precision` were written and never read.
    read = {"version", "mode", "position", "tracker", "scaler", "forced", "switches", "pending_cause"}
    assert set(AMPScheduler().state_dict()) == read


def _checkpoint(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    amp = AMPScheduler(schedule={0: "bf16-mixed"})
    trainer = make_trainer(tmp_path, callbacks=[amp, ckpt_cb], limit_train_batches=2, enable_checkpointing=True)
    trainer.fit(BoringModel())
    return tmp_path / "ckpt" / "epoch=0-step=2.ckpt"


def _set_mode(path, mode):
    ckpt = torch.load(path, weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("AMPScheduler"))
    assert state["mode"] == "bf16-mixed"
    state["mode"] = mode
    torch.save(ckpt, path)


def test_a_restored_unknown_precision_mode_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    _set_mode(path, "8-bit")
    trainer = make_trainer(tmp_path, callbacks=[AMPScheduler(schedule={0: "bf16-mixed"})], max_epochs=2)
    with pytest.raises(InvalidArgumentError, match=r"AMPScheduler: the checkpoint's precision mode '8-bit' is not one"):
        trainer.fit(BoringModel(), ckpt_path=path)


def test_a_restored_mode_outside_the_schedule_is_not_installed(tmp_path):
    path = _checkpoint(tmp_path)
    _set_mode(path, "16-mixed")
    resumed = AMPScheduler(schedule={0: "bf16-mixed"})
    trainer = make_trainer(tmp_path, callbacks=[resumed], max_epochs=2, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"saved in 16-mixed, which this run's schedule does not use"):
        trainer.fit(BoringModel(), ckpt_path=path)
    assert resumed.mode == "bf16-mixed"
    assert "16-mixed" not in {s.get("to") for s in resumed.switches}
