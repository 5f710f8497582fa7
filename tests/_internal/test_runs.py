"""Callbacks reused across Trainers: one run per Trainer, and picklable after a fit (ddp_spawn pickles them)."""

from __future__ import annotations

import pickle

from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_green import AMPScheduler, DataPruning, EnergyMonitor, GreenReport
from tests.callbacks.test_data_pruning import Model
from tests.helpers import make_trainer


def test_callbacks_pickle_after_a_fit_without_their_trainer(tmp_path):
    amp, monitor, report = AMPScheduler(), EnergyMonitor(print_summary=False), GreenReport(count_macs=False)
    make_trainer(tmp_path, max_steps=2, callbacks=[amp, monitor, report]).fit(BoringModel())
    pruning = DataPruning()
    make_trainer(tmp_path, max_epochs=1, callbacks=[pruning]).fit(Model())
    for callback, ref in ((amp, "_fit_trainer"), (monitor, "_trainer_ref"), (report, "_fit_trainer")):
        assert getattr(callback, ref) is not None
        copy = pickle.loads(pickle.dumps(callback))
        assert getattr(copy, ref) is None  # in a spawned worker: a new run
    assert pickle.loads(pickle.dumps(pruning)).history == pruning.history
