import collections
import csv
import dataclasses
import json
import logging
import os
import re
import signal
import time
import warnings

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader, default_collate

from lightning_green import EnergyBudget, EnergyMonitor, GreenReport, workload_changed
from lightning_green.energy import read_report
from lightning_green.energy.report import format_summary
from lightning_green.testing import SimulatedGPUWorkload
from tests.helpers import (
    QUIET,
    DestroyProcessGroupAtExit,
    FailingModel,
    FakeRapl,
    InstallFakeRapl,
    SavesAtStep,
    SteadyModel,
    busy_cpu,
    make_trainer,
    tb_scalars,
)


def _report(trainer_or_dir) -> dict:
    log_dir = trainer_or_dir if isinstance(trainer_or_dir, (str, os.PathLike)) else trainer_or_dir.log_dir
    return read_report(os.path.join(log_dir, "energy_report.json"))


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"carbon_intensity": -1.0}, ValueError, r"EnergyMonitor\(carbon_intensity=-1.0\): `carbon_intensity` must be"),
        ({"pue": 0.9}, ValueError, r"`pue` must be a number >= 1.0"),
        ({"log_every_n_steps": -1}, ValueError, r"`log_every_n_steps` must be an int >= 0"),
        ({"samples_per_batch": 0}, ValueError, r"`samples_per_batch` must be an int >= 1"),
        ({"forecast_after_epochs": 0}, ValueError, r"`forecast_after_epochs` must be an int >= 1"),
        ({"forecast_after_epochs": 1.5}, TypeError, r"`forecast_after_epochs` must be an int"),
        ({"gpu_indices": [-1]}, ValueError, r"`gpu_indices` must be None or a list of non-negative ints"),
        ({"gpu_indices": "0"}, ValueError, r"`gpu_indices` must be None or a list"),
        ({"cpu_tdp_w": 0}, ValueError, r"`cpu_tdp_w` must be a number > 0"),
        ({"cpu_tdp_cores": 0}, ValueError, r"`cpu_tdp_cores` must be an int >= 1"),
        ({"dram_w_per_gb": -0.1}, ValueError, r"`dram_w_per_gb` must be a number >= 0"),
        ({"min_window_s": -1}, ValueError, r"`min_window_s` must be a number >= 0"),
        ({"report_filename": "logs/r.json"}, ValueError, r"`report_filename` must be None or a plain file name"),
        ({"report_filename": "."}, ValueError, r"`report_filename` must be None or a plain file name"),
        ({"report_filename": ".."}, ValueError, r"`report_filename` must be None or a plain file name"),
        ({"print_summary": "yes"}, TypeError, r"`print_summary` must be a bool"),
        ({"progress_bar": 1}, TypeError, r"`progress_bar` must be a bool"),
    ],
)
def test_monitor_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EnergyMonitor(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_energy": -1.0}, r"EnergyBudget\(max_energy=-1.0\): `max_energy` must be a number > 0"),
        ({"max_energy": 1.0, "unit": "GJ"}, r"`unit` must be one of \('J', 'Wh', 'kWh'\)"),
        ({"max_gco2e": 0.0}, r"`max_gco2e` must be a number > 0"),
        ({"max_energy": 1.0, "on_forecast": "panic"}, r"`on_forecast` must be one of \('stop', 'warn', 'ignore'\)"),
        ({}, r"give at least one budget"),
    ],
)
def test_budget_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnergyBudget(**kwargs)


def test_setup_errors_name_the_fix(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, max_steps=1, callbacks=[EnergyBudget(max_energy=1.0)], **QUIET)
    with pytest.raises(ValueError, match=r"add EnergyMonitor\(\) to Trainer\(callbacks"):
        trainer.fit(BoringModel())
    trainer = Trainer(default_root_dir=tmp_path, max_steps=1, callbacks=[EnergyMonitor(gpu_indices=[3])], **QUIET)
    with pytest.raises(ValueError, match=r"gpu_indices=\[3\]\): GPU index \[3\] not found; Zeus sees 0 GPU"):
        trainer.fit(BoringModel())


# ------------------------------------------------------------------------------------------------- loggers
def test_tensorboard_gets_scalars_layout_and_hparams(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = EnergyMonitor(min_window_s=0.0, carbon_intensity=100.0, print_summary=False)
    trainer = make_trainer(
        tmp_path,
        logger=logger,
        max_epochs=2,
        limit_train_batches=8,
        limit_val_batches=2,
        log_every_n_steps=2,
        callbacks=[monitor],
    )
    trainer.fit(BoringModel())
    scalars, tags = tb_scalars(logger.log_dir)
    for tag in (
        "energy/step_J",
        "energy/epoch_J",
        "energy/total_J",
        "power/avg_W",
        "energy/J_per_sample",
        "carbon/total_gCO2e",
        "energy/cpu_J",
        "energy/dram_J",
        "validate/energy/total_J",
        "energy/forecast_total_J",
        "hparams/energy_total_J",
    ):
        assert tag in scalars, tag
    assert len(scalars["energy/step_J"]) == 2 * 8 // 2  # every 2nd of 8 batches, two epochs
    totals = [v for _, v in sorted(scalars["energy/total_J"])]
    assert totals == sorted(totals) and totals[-1] > 0
    assert all(v > 0 for _, v in scalars["energy/step_J"])
    report = _report(logger.log_dir)
    assert totals[-1] == pytest.approx(report["stages"]["fit"]["energy_j"]["total"], rel=1e-5)
    co2 = scalars["carbon/total_gCO2e"][-1][1]
    assert co2 == pytest.approx(totals[-1] / 3.6e6 * 100.0, rel=1e-5)
    assert "custom_scalars__config__" in tags
    assert "_hparams_/session_start_info" in tags
    # The final totals sit at Lightning's own last step (that of the epoch metrics), not at global_step.
    assert scalars["hparams/energy_total_J"][-1][0] == max(step for step, _ in scalars["energy/epoch_J"])


def test_csv_logger_gets_the_same_metrics(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(
        tmp_path,
        logger=logger,
        limit_train_batches=6,
        limit_val_batches=2,
        log_every_n_steps=3,
        callbacks=[EnergyMonitor(min_window_s=0.0, print_summary=False)],
    )
    trainer.fit(BoringModel())
    import csv

    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    header = rows[0].keys()
    for col in ("energy/step_J", "energy/epoch_J", "energy/total_J", "power/avg_W", "carbon/total_gCO2e"):
        assert col in header, col
    totals = [float(r["energy/total_J"]) for r in rows if r["energy/total_J"]]
    assert totals[-1] == pytest.approx(_report(logger.log_dir)["stages"]["fit"]["energy_j"]["total"], rel=1e-5)
    assert sum(1 for r in rows if r["energy/step_J"]) == 2
    # the totals are also monitorable (ModelCheckpoint / EarlyStopping read callback_metrics)
    assert {"energy/total_J", "energy/epoch_J", "carbon/total_gCO2e"} <= set(trainer.callback_metrics)


# ------------------------------------------------------------------------------------------------- measurement
def test_simulated_gpu_is_measured_cpu_estimated(tmp_path, sim_gpu):
    sim_gpu.demand_w = 120.0
    trainer = make_trainer(
        tmp_path,
        limit_train_batches=20,
        limit_val_batches=2,
        callbacks=[EnergyMonitor(gpu_indices=[0], print_summary=False)],
    )
    trainer.fit(SteadyModel(step_cpu_s=0.01))
    fit = _report(tmp_path)["stages"]["fit"]
    assert fit["sources"] == {"gpu": "measured", "cpu": "estimated", "dram": "estimated"}
    assert fit["label"] == "mixed"
    # the simulated GPU draws 120 W while the fit runs
    assert fit["energy_j"]["gpu"] == pytest.approx(120.0 * fit["time_s"], rel=0.1)
    assert fit["energy_j"]["cpu"] > 0


def test_counters_are_read_at_log_points_not_every_step(tmp_path, monkeypatch):
    from lightning_green.energy.meter import EnergyMeter

    reads = []
    original = EnergyMeter.read

    def counting_read(self):
        reads.append(1)
        return original(self)

    monkeypatch.setattr(EnergyMeter, "read", counting_read)
    trainer = make_trainer(
        tmp_path,
        limit_train_batches=30,
        callbacks=[EnergyMonitor(min_window_s=0.0, log_every_n_steps=10, print_summary=False)],
    )
    trainer.fit(BoringModel())
    # stage start + 3 step flushes + epoch end + fit end + stop: far fewer than 30 steps
    assert 4 <= len(reads) <= 8


def test_short_windows_are_extended_not_logged_as_zero(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(
        tmp_path,
        logger=logger,
        limit_train_batches=10,
        callbacks=[EnergyMonitor(min_window_s=30.0, log_every_n_steps=1, print_summary=False)],
    )
    trainer.fit(BoringModel())
    import csv

    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert not any(r.get("energy/step_J") for r in rows)  # no window reached 30 s
    epoch = [float(r["energy/epoch_J"]) for r in rows if r.get("energy/epoch_J")]
    assert len(epoch) == 1 and epoch[0] > 0  # the epoch end still accounts everything


def test_samples_inferred_or_given(tmp_path):
    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, limit_train_batches=5, limit_val_batches=3, callbacks=[monitor])
    trainer.fit(BoringModel())  # batch size 1
    assert monitor.ledgers["fit"].samples == 5
    assert monitor.ledgers["validate"].samples == 3
    assert monitor.ledgers["fit"].steps == 5
    given = EnergyMonitor(samples_per_batch=7, print_summary=False)
    trainer = make_trainer(tmp_path, limit_train_batches=5, callbacks=[given])
    trainer.fit(BoringModel())
    assert given.ledgers["fit"].samples == 35


def test_validate_test_predict_are_separate_stages(tmp_path):
    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(
        tmp_path, limit_val_batches=4, limit_test_batches=3, limit_predict_batches=2, callbacks=[monitor]
    )
    model = BoringModel()
    trainer.validate(model)
    trainer.test(model)
    trainer.predict(model)
    stages = _report(tmp_path)["stages"]
    assert set(stages) == {"validate", "test", "predict"}
    assert [stages[s]["samples"] for s in ("validate", "test", "predict")] == [4, 3, 2]
    assert all(stages[s]["energy_j"]["total"] > 0 for s in stages)
    # J/sample is in the report for every stage (issue 14); BoringModel's batches carry no tokens
    for s in stages.values():
        assert s["j_per_sample"] == pytest.approx(s["energy_j"]["total"] / s["samples"])
        assert s["tokens"] == 0 and s["j_per_token"] is None


def test_validate_and_test_results_hold_only_the_users_metrics(tmp_path):
    # issue 11 item 3: trainer.validate/test returned validate/energy/epoch_J, .../total_J (equal) and carbon keys
    class Logged(BoringModel):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            self.log("val_loss", out["x"])
            return out

        def test_step(self, batch, batch_idx):
            out = super().test_step(batch, batch_idx)
            self.log("test_loss", out["y"])
            return out

    monitor = EnergyMonitor(print_summary=False)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, limit_val_batches=3, limit_test_batches=3, callbacks=[monitor], logger=logger)
    model = Logged()
    assert set(trainer.validate(model)[0]) == {"val_loss"}
    assert set(trainer.test(model)[0]) == {"test_loss"}
    logger.save()
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        logged = set(next(csv.reader(f)))
    # the figures still reach the loggers, without the stand-alone run's redundant epoch_J
    assert {"validate/energy/total_J", "test/energy/total_J", "test/energy/J_per_sample"} <= logged
    assert "validate/energy/epoch_J" not in logged and "test/energy/epoch_J" not in logged


# ------------------------------------------------------------------------------------------------- forecast, budget
def test_forecast_on_a_steady_workload_is_within_ten_percent(tmp_path):
    monitor = EnergyMonitor(print_summary=False, forecast_after_epochs=1)
    seen = []
    monitor.add_listener(lambda trainer, m: seen.append((trainer.current_epoch, m.forecast_total_j)))
    trainer = make_trainer(tmp_path, max_epochs=5, limit_train_batches=10, callbacks=[monitor])
    trainer.fit(SteadyModel(step_cpu_s=0.02))
    forecast_after_2 = [f for epoch, f in seen if epoch == 1 and f is not None][-1]
    actual = monitor.total_energy_j("fit")
    assert forecast_after_2 == pytest.approx(actual, rel=0.10)


def test_a_fit_bounded_by_max_time_is_forecast_at_its_power_for_the_time_left(tmp_path):
    # max_time ends the fit long before max_epochs=1000: the forecast was for 1000 epochs (and EnergyBudget's
    # on_forecast="stop" stopped a run that max_time kept within the budget).
    monitor = EnergyMonitor(print_summary=False, forecast_after_epochs=1)
    seen = []
    monitor.add_listener(lambda trainer, m: seen.append(m.forecast_total_j))
    trainer = make_trainer(
        tmp_path, max_epochs=1000, max_time={"seconds": 2}, limit_train_batches=5, callbacks=[monitor]
    )
    trainer.fit(SteadyModel(step_cpu_s=0.02))
    forecasts = [f for f in seen if f is not None]
    assert 2 <= trainer.current_epoch < 1000 and forecasts
    actual = monitor.total_energy_j("fit")
    assert max(forecasts) < 2 * actual  # for 1000 epochs it was over 100x
    assert _report(trainer)["forecast"]["max_time_s"] == pytest.approx(2.0)


def test_the_forecast_is_said_while_it_forecasts_and_the_report_says_what_it_was_for(tmp_path, caplog):
    from lightning.pytorch.callbacks import EarlyStopping

    from lightning_green.report.green import _forecast_text

    def said(**fit_kwargs) -> tuple[list[str], dict]:
        callbacks = fit_kwargs.pop("callbacks", [])
        monitor = EnergyMonitor(print_summary=False, forecast_after_epochs=1, **fit_kwargs.pop("monitor_kwargs", {}))
        trainer = make_trainer(tmp_path, limit_train_batches=4, callbacks=[monitor, *callbacks], **fit_kwargs)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            trainer.fit(SteadyModel(step_cpu_s=0.002))
        return [r.getMessage() for r in caplog.records if "forecast for this run" in r.getMessage()], _report(trainer)

    # Said once, after the first epoch, while epochs remain; the report records what it was made for.
    lines, report = said(max_epochs=3)
    assert len(lines) == 1 and "after 1 epoch(s)" in lines[0]
    assert report["forecast"]["after_epochs"] == 3 and report["forecast"]["max_epochs"] == 3  # updated each epoch
    assert report["forecast"]["max_steps"] is None and report["forecast"]["max_time_s"] is None
    # A budget that stops the run mid-epoch (a window every 2 steps) or at the epoch end (listed after the monitor,
    # it decides after the monitor's epoch end): that epoch is the last, and no forecast is said from it.
    for every in (2, 0):
        budget = EnergyBudget(max_energy=1e-9, unit="J")
        monitor_kwargs = {"min_window_s": 0.0, "log_every_n_steps": every}
        lines, report = said(max_epochs=2, callbacks=[budget], monitor_kwargs=monitor_kwargs)
        assert budget.stopped_reason and lines == []
        assert report["stages"]["fit"]["steps"] == (2 if every else 4)
    # EarlyStopping after the first epoch of ten: nothing said; the green report says the fit ended before the bound.
    stop = EarlyStopping(monitor="energy/total_J", mode="max", patience=0, stopping_threshold=0.0)
    lines, report = said(max_epochs=10, callbacks=[stop])
    assert lines == [] and len(report["stages"]["fit"]["epochs_j"]) == 1
    assert report["forecast"]["max_epochs"] == 10
    assert "for max_epochs=10; the fit ended after 1 epoch, before that bound" in _forecast_text(
        report["forecast"], report
    )
    # The epoch max_epochs ends with: the total is known, nothing is said.
    lines, _ = said(max_epochs=1)
    assert lines == []


def test_workload_change_refits_the_forecast(tmp_path):
    class Pruner(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                workload_changed(trainer, "pruning", self)

    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=3, callbacks=[Pruner(), monitor])
    trainer.fit(BoringModel())
    assert len(monitor.forecast.history) == 1  # history restarted at the change
    assert len(monitor.ledgers["fit"].epochs_j) == 3


def test_budget_stops_training_cleanly_and_checkpoints(tmp_path):
    budget = EnergyBudget(max_energy=0.2, unit="J")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer = make_trainer(
        tmp_path,
        max_epochs=20,
        limit_train_batches=20,
        limit_val_batches=1,
        callbacks=[EnergyMonitor(min_window_s=0.0, log_every_n_steps=2, print_summary=False), budget, ckpt],
    )
    trainer.fit(SteadyModel(step_cpu_s=0.01))
    assert trainer.should_stop
    assert trainer.current_epoch < 19
    assert budget.stopped_reason and "budget 0.2 J" in budget.stopped_reason
    assert os.listdir(tmp_path / "ckpt")  # Lightning's normal checkpointing still ran


def test_budget_is_checked_at_a_mid_epoch_validation(tmp_path):
    # A val_check_interval validation logs the fit's running totals: the budget is checked there too, not only at
    # the next logging step or epoch end (here no step is logged, so the epoch end would be step 20).
    budget = EnergyBudget(max_energy=1e-9, unit="J")
    trainer = make_trainer(
        tmp_path,
        max_epochs=3,
        limit_train_batches=20,
        limit_val_batches=1,
        val_check_interval=5,
        callbacks=[EnergyMonitor(min_window_s=0.0, log_every_n_steps=0, print_summary=False), budget],
    )
    trainer.fit(SteadyModel(step_cpu_s=0.002))
    assert trainer.global_step == 5  # the first validation, at batch 5 of epoch 0
    assert budget.stopped_reason and "budget 1e-09 J" in budget.stopped_reason


def test_a_budget_does_not_stop_a_later_trainer_it_is_not_in(tmp_path):
    # The monitor kept the old budget as a listener: reused in a new Trainer (with a larger budget, or none), it was
    # stopped by the old one, silently (that budget's stopped_reason was already set).
    monitor = EnergyMonitor(min_window_s=0.0, log_every_n_steps=1, print_summary=False)
    small = EnergyBudget(max_energy=1e-9, unit="J")
    first = make_trainer(tmp_path / "a", max_epochs=3, limit_train_batches=4, callbacks=[monitor, small])
    first.fit(SteadyModel(step_cpu_s=0.002))
    assert small.stopped_reason and first.global_step < 12
    big = EnergyBudget(max_energy=1e9, unit="J")
    for callbacks in ([monitor, big], [monitor]):
        trainer = make_trainer(tmp_path / "b", max_epochs=3, limit_train_batches=4, callbacks=callbacks)
        trainer.fit(SteadyModel(step_cpu_s=0.002))
        assert trainer.global_step == 12 and big.stopped_reason is None


@pytest.mark.parametrize("action", ["stop", "warn", "ignore"])
def test_budget_acts_on_the_forecast(tmp_path, action):
    monitor = EnergyMonitor(print_summary=False)
    # a forecast far over budget, whatever this machine measures
    monitor.add_listener(lambda trainer, m: setattr(m, "forecast_total_j", 1e9))
    budget = EnergyBudget(max_energy=1e6, unit="J", on_forecast=action)
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[monitor, budget])
    if action == "warn":
        with pytest.warns(UserWarning, match="forecast exceeds the budget"):
            trainer.fit(BoringModel())
    else:
        trainer.fit(BoringModel())
    if action == "stop":
        assert trainer.global_step == 2 and "forecast for the run" in budget.stopped_reason
    else:
        assert trainer.global_step == 6 and budget.stopped_reason is None


def test_budget_warns_of_the_forecast_once_per_run_and_again_in_a_new_trainer(tmp_path):
    monitor = EnergyMonitor(print_summary=False)
    monitor.add_listener(lambda trainer, m: setattr(m, "forecast_total_j", 1e9))
    budget = EnergyBudget(max_energy=1e6, unit="J")

    def warnings_of(fits: int) -> int:
        trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[monitor, budget])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for fit in range(fits):  # a second fit on the same Trainer continues its run
                trainer.fit_loop.max_epochs = 2 * (fit + 1)
                trainer.fit(BoringModel())
        return sum("forecast exceeds the budget" in str(w.message) for w in caught)

    assert warnings_of(fits=2) == 1
    assert warnings_of(fits=1) == 1  # a new Trainer is a new run: it was never warned there


# ------------------------------------------------------------------------------------------------- state, crash
def test_resume_continues_totals(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    first = EnergyMonitor(print_summary=False)
    trainer = make_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        callbacks=[first, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
    )
    trainer.fit(SteadyModel(0.005))
    after_two = first.total_energy_j("fit")
    state = first.state_dict()
    assert state["version"] == 1 and len(state["ledgers"]["fit"]["epochs_j"]) == 2

    second = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, max_epochs=4, limit_train_batches=4, limit_val_batches=1, callbacks=[second])
    trainer.fit(SteadyModel(0.005), ckpt_path=ckpt_dir / "last.ckpt")
    ledger = second.ledgers["fit"]
    assert len(ledger.epochs_j) == 4
    assert ledger.epochs_j[:2] == pytest.approx(first.ledgers["fit"].epochs_j, rel=1e-6)
    assert second.total_energy_j("fit") > after_two * 1.5
    assert ledger.steps == 16 and ledger.samples == 16


def test_resume_from_an_epochs_last_batch_keeps_that_epochs_energy_apart(tmp_path):
    # The checkpoint lands on the last batch of epoch 0; Lightning runs no on_train_epoch_end for it on resume.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    first = EnergyMonitor(print_summary=False)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[first, ckpt]).fit(SteadyModel(0.005))
    second = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=4, callbacks=[second])
    trainer.fit(SteadyModel(0.005), ckpt_path=tmp_path / "ckpt" / "step=4.ckpt")
    ledger = second.ledgers["fit"]
    assert len(ledger.epochs_j) == 3 and ledger.steps == 12
    assert ledger.epochs_j[0] == pytest.approx(first.ledgers["fit"].epochs_j[0], rel=0.3)  # to its last batch
    assert max(ledger.epochs_j) < 2 * min(ledger.epochs_j)  # equal epochs: none holds two epochs' energy


def test_crash_leaves_a_valid_interrupted_report(tmp_path):
    monitor = EnergyMonitor(print_summary=False, min_window_s=0.0, log_every_n_steps=1)
    trainer = make_trainer(tmp_path, limit_train_batches=10, callbacks=[monitor])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(FailingModel(fail_at=3))
    report = _report(tmp_path)
    assert report["status"] == "interrupted: RuntimeError"
    assert report["stages"]["fit"]["energy_j"]["total"] > 0
    assert monitor.meter is None  # meter stopped
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


class FailingSetupData(Callback):
    """A callback whose setup fails: the run stops before the callbacks listed after it are set up."""

    def setup(self, trainer, pl_module, stage):
        raise FileNotFoundError("data/train.csv")


@pytest.mark.parametrize("reuse", [False, True])
def test_a_run_that_fails_before_the_monitor_is_set_up_leaves_the_last_runs_report_alone(tmp_path, reuse):
    # The failed run never measured anything; it wrote "interrupted" over the last (complete) run's report: into the
    # same folder (logger=False), or into the last run's own version dir (the monitor reused in a new Trainer).
    monitor = EnergyMonitor(print_summary=False)
    first = make_trainer(tmp_path, callbacks=[monitor], logger=TensorBoardLogger(tmp_path) if reuse else False)
    first.fit(BoringModel())
    path = os.path.join(first.log_dir if reuse else tmp_path, "energy_report.json")
    before = read_report(path)
    assert before["status"] == "complete"
    again = monitor if reuse else EnergyMonitor(print_summary=False)
    second = make_trainer(
        tmp_path, callbacks=[FailingSetupData(), again], logger=TensorBoardLogger(tmp_path) if reuse else False
    )
    with pytest.raises(FileNotFoundError):
        second.fit(BoringModel())
    assert read_report(path) == before
    if reuse:
        assert not os.path.exists(os.path.join(tmp_path, "energy_report.json"))


class SetUpWork(Callback):
    """A callback whose fit set-up costs CPU time (as StructuredPruning's dependency analysis does), 0.4 s in all."""

    def on_fit_start(self, trainer, pl_module):
        busy_cpu(0.2)

    def on_train_start(self, trainer, pl_module):
        busy_cpu(0.2)


@pytest.mark.parametrize("work_first", [True, False])
def test_the_fits_set_up_is_counted_whatever_the_callback_order_and_not_forecast(tmp_path, work_first):
    # Listed before the monitor, another callback's on_fit_start ran before the monitor opened the fit and was lost.
    # Counted (in the first epoch, where the report's cumulative curve starts), the forecast must leave it out: it
    # multiplied it by the number of epochs.
    monitor = EnergyMonitor(print_summary=False)
    callbacks = [SetUpWork(), monitor] if work_first else [monitor, SetUpWork()]
    trainer = make_trainer(tmp_path, callbacks=callbacks, limit_train_batches=4, max_epochs=4)
    trainer.fit(SteadyModel(step_cpu_s=0.02))
    fit = _report(tmp_path)["stages"]["fit"]
    assert fit["time_s"] >= 0.4 and fit["energy_j"]["total"] > 0
    epochs = monitor.ledgers["fit"].epochs_j
    assert len(epochs) == 4 and epochs[0] > 2 * max(epochs[1:])  # the 0.4 s set-up is 5x an epoch's 0.08 s
    learned = [e for e, _ in monitor.forecast.history]
    assert len(learned) == 4 and learned[0] < 2 * max(learned[1:]) and learned[1:] == epochs[1:]


def test_a_run_resumed_inside_its_first_epoch_leaves_the_first_set_up_out_of_the_forecast(tmp_path):
    # The checkpoint brings the first process's set-up back inside epoch 0; the forecast learned it as an epoch's cost.
    ckpt = tmp_path / "mid.ckpt"
    callbacks = [SetUpWork(), EnergyMonitor(print_summary=False), SavesAtStep(2, ckpt)]
    make_trainer(tmp_path / "a", callbacks=callbacks, limit_train_batches=4).fit(SteadyModel(step_cpu_s=0.02))
    resumed = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path / "b", callbacks=[resumed], limit_train_batches=4, max_epochs=3)
    trainer.fit(SteadyModel(step_cpu_s=0.02), ckpt_path=str(ckpt))
    learned = [e for e, _ in resumed.forecast.history]
    assert len(learned) == 3 and learned[0] < 2 * max(learned[1:])
    assert resumed.ledgers["fit"].epochs_j[0] > 2 * max(learned[1:])  # the set-up is still in epoch 0's energy


class TunedSteadyModel(SteadyModel):
    """A SteadyModel whose learning rate Lightning's LR finder can set."""

    def __init__(self, step_cpu_s: float = 0.01, lr: float = 0.1) -> None:
        super().__init__(step_cpu_s)
        self.lr = lr
        self.steps_run = 0

    def training_step(self, batch, batch_idx):
        self.steps_run += 1
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_the_lr_finders_steps_are_the_fits_energy_but_not_its_samples_or_forecast(tmp_path):
    # Lightning runs its LR finder in on_fit_start, before any other callback's (it moves it first): its steps of
    # 0.02 s CPU each were not counted by the monitor's fit.
    from lightning.pytorch.callbacks import LearningRateFinder

    monitor = EnergyMonitor(print_summary=False)
    finder = LearningRateFinder(num_training_steps=20, early_stop_threshold=None)
    trainer = make_trainer(tmp_path, callbacks=[monitor, finder], limit_train_batches=4, max_epochs=3)
    model = TunedSteadyModel(step_cpu_s=0.02)
    trainer.fit(model)
    fit = monitor.ledgers["fit"]
    assert model.steps_run > 3 * 4 + 2  # the finder's steps and the fit's 12
    assert fit.time_s >= model.steps_run * 0.02  # all of them, on this process's CPU clock
    assert fit.samples == 3 * 4  # BoringModel's batches of 1, the fit's only
    assert fit.epochs_j[0] > 2 * max(fit.epochs_j[1:])  # the finder's 20 steps sit in epoch 0's energy
    learned = [e for e, _ in monitor.forecast.history]
    assert learned[0] < 2 * max(learned[1:])  # but not in what the forecast learned from


class FailsInSanityCheck(SteadyModel):
    fail = True

    def validation_step(self, batch, batch_idx):
        if self.trainer.sanity_checking and self.fail:
            raise RuntimeError("sanity boom")
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("validate_between", [True, False])
def test_a_fit_that_failed_in_its_set_up_and_is_retried_keeps_set_up_out_of_the_forecast(tmp_path, validate_between):
    # The failed fit's set-up (0.4 s) was learned as epoch 0's cost by the retry on the same Trainer; with a
    # validate() in between, the validation's whole energy was taken for set-up.
    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(
        tmp_path, callbacks=[SetUpWork(), monitor], limit_train_batches=4, limit_val_batches=2, max_epochs=3
    )
    model = FailsInSanityCheck(step_cpu_s=0.02)
    with pytest.raises(RuntimeError, match="sanity boom"):
        trainer.fit(model)
    model.fail = False
    if validate_between:
        trainer.validate(model, verbose=False)
        assert monitor.ledgers["validate"].total_j > 0
    trainer.fit(model)
    epochs = monitor.ledgers["fit"].epochs_j
    learned = [e for e, _ in monitor.forecast.history]
    assert len(learned) == 3 and epochs[0] > 2 * max(epochs[1:])  # both fits' set-up is in epoch 0's energy
    assert max(learned[1:]) / 2 < learned[0] < 2 * max(learned[1:])  # and none of it (nor the validation's) learned


class FailsAfterSetUpWork(SetUpWork):
    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        raise RuntimeError("set-up boom")


@pytest.mark.parametrize("fails_first", [True, False])
def test_a_fit_that_fails_in_its_set_up_reports_it_whatever_the_callback_order(tmp_path, fails_first):
    monitor = EnergyMonitor(print_summary=False)
    callbacks = [FailsAfterSetUpWork(), monitor] if fails_first else [monitor, FailsAfterSetUpWork()]
    with pytest.raises(RuntimeError, match="set-up boom"):
        make_trainer(tmp_path, callbacks=callbacks).fit(SteadyModel())
    report = _report(tmp_path)
    assert report["status"] == "interrupted: RuntimeError"
    assert report["stages"]["fit"]["time_s"] >= 0.2 and report["stages"]["fit"]["energy_j"]["total"] > 0


def test_a_batch_skipped_by_on_train_batch_start_is_not_counted_by_a_checkpoint(tmp_path):
    # Lightning marks a batch skipped with -1 processed but never started; the epoch-end checkpoint counted it.
    class Skips(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 3 else None

    monitor = EnergyMonitor(print_summary=False)
    settings = {"limit_train_batches": 6, "max_epochs": 2, "enable_checkpointing": True}  # its epoch-end checkpoint
    trainer = make_trainer(tmp_path, callbacks=[monitor], **settings)
    trainer.fit(Skips())
    fit = monitor.ledgers["fit"]
    assert fit.steps == 6 and fit.samples == 6  # 3 batches trained per epoch
    assert monitor._batch_in_flight is None  # no batch kept after the fit


def test_an_exception_after_a_batch_trained_counts_its_samples(tmp_path):
    class RaiseAtBatchEnd(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise RuntimeError("boom")

    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, callbacks=[RaiseAtBatchEnd(), monitor], limit_train_batches=6)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(BoringModel())
    fit = _report(tmp_path)["stages"]["fit"]
    assert fit["steps"] == fit["samples"] == 3


@pytest.mark.parametrize("saver_first", [True, False])
def test_a_checkpoint_saved_in_another_callbacks_batch_end_counts_the_batch_that_trained(tmp_path, saver_first):
    # Listed before the monitor, the saver's checkpoint had the batch's step but not its samples: a run resumed from it
    # counted one batch of samples fewer than the run it continued.
    def callbacks(monitor):
        saver = SavesAtStep(3, tmp_path / "mid.ckpt")
        return [saver, monitor] if saver_first else [monitor, saver]

    full = EnergyMonitor(print_summary=False)
    make_trainer(tmp_path / "full", callbacks=callbacks(full), limit_train_batches=6).fit(BoringModel())
    resumed = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path / "resumed", callbacks=[resumed], limit_train_batches=6)
    trainer.fit(BoringModel(), ckpt_path=str(tmp_path / "mid.ckpt"))
    assert resumed.ledgers["fit"].steps == full.ledgers["fit"].steps == 6
    assert resumed.ledgers["fit"].samples == full.ledgers["fit"].samples == 6  # BoringModel: one sample a batch


class InterruptedModel(BoringModel):
    """Raises ``exc`` in training_step at global step ``at``."""

    def __init__(self, exc: type[BaseException], at: int) -> None:
        super().__init__()
        self.exc, self.at = exc, at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at:
            raise self.exc("stop")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(("exc", "raised"), [(RuntimeError, RuntimeError), (KeyboardInterrupt, SystemExit)])
def test_interrupted_report_counts_the_batches_of_the_last_window(tmp_path, exc, raised):
    # No logging point before the crash (log_every_n_steps=50): the only window is the one on_exception accounts.
    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, limit_train_batches=20, callbacks=[monitor])
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a KeyboardInterrupt, then exits
    try:
        with pytest.raises(raised):
            trainer.fit(InterruptedModel(exc, at=6))
    finally:
        signal.signal(signal.SIGINT, sigint)
    report = _report(tmp_path)
    fit = report["stages"]["fit"]
    assert report["status"] == f"interrupted: {exc.__name__}"
    assert (fit["steps"], fit["samples"]) == (6, 6)  # six completed batches of one sample
    assert fit["j_per_sample"] == pytest.approx(fit["energy_j"]["total"] / 6)


# ------------------------------------------------------------------------------------------------- DDP
def _ddp_fit(tmp_path, *callbacks, **monitor_kwargs) -> dict:
    monitor = EnergyMonitor(print_summary=False, min_window_s=0.0, log_every_n_steps=2, **monitor_kwargs)
    trainer = make_trainer(
        tmp_path,
        limit_train_batches=6,
        limit_val_batches=2,
        strategy="ddp_spawn",
        devices=2,
        callbacks=[*callbacks, monitor, DestroyProcessGroupAtExit()],
    )
    trainer.fit(SteadyModel(0.005))
    return _report(tmp_path)["stages"]["fit"]


@pytest.mark.slow
def test_ddp_counts_each_rank_once_and_the_node_once(tmp_path):
    # Each spawned rank installs a fake RAPL package (50 W, node-wide) and its own simulated GPU.
    fit = _ddp_fit(tmp_path, InstallFakeRapl(), SimulatedGPUWorkload(count=2, step_work_s=0.002))
    ranks = fit["per_rank"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert fit["sources"] == {"gpu": "measured", "cpu": "measured", "dram": "measured"}
    # the node's RAPL counter is read by local rank 0 only: 50 W over the run, not 2 x 50 W
    assert ranks[0]["energy_j"]["cpu"] == pytest.approx(FakeRapl.PACKAGE_W * ranks[0]["time_s"], rel=0.1)
    assert ranks[1]["energy_j"]["cpu"] == 0.0 and ranks[1]["energy_j"]["dram"] == 0.0
    assert fit["energy_j"]["cpu"] == pytest.approx(FakeRapl.PACKAGE_W * fit["time_s"], rel=0.1)
    # each rank measures the GPU it trains on
    assert ranks[0]["energy_j"]["gpu"] > 0 and ranks[1]["energy_j"]["gpu"] > 0
    assert fit["samples"] == 2 * 6  # both ranks' batches of 1
    assert fit["steps"] == 6
    json.dumps(fit)  # plain data


class SlowMeterOnRankZero(EnergyMonitor):
    """Building rank 0's meter takes 0.3 s longer (as a meter that reads the node's RAPL counters does)."""

    def _build_meter(self, trainer):
        if trainer.global_rank == 0:
            time.sleep(0.3)
        return super()._build_meter(trainer)


@pytest.mark.slow
def test_ddp_ranks_start_metering_together(tmp_path):
    # Rank 1 started its meter 0.3 s before rank 0: the fit's time (the slowest rank's) spanned 0.3 s in which the
    # node's counters (read on rank 0) were not.
    monitor = SlowMeterOnRankZero(print_summary=False, min_window_s=0.0, log_every_n_steps=2)
    trainer = make_trainer(
        tmp_path,
        limit_train_batches=6,
        strategy="ddp_spawn",
        devices=2,
        callbacks=[InstallFakeRapl(), monitor, DestroyProcessGroupAtExit()],
    )
    trainer.fit(SteadyModel(0.005))
    fit = _report(tmp_path)["stages"]["fit"]
    times = [r["time_s"] for r in fit["per_rank"]]
    assert abs(times[0] - times[1]) < 0.1
    assert fit["energy_j"]["cpu"] == pytest.approx(FakeRapl.PACKAGE_W * fit["time_s"], rel=0.1)


@pytest.mark.slow
def test_ddp_checkpoint_holds_every_ranks_unlogged_window(tmp_path):
    # No logging point before the checkpoint at step 3 (log_every_n_steps=50): each rank's window is unflushed.
    monitor = EnergyMonitor(print_summary=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    trainer = make_trainer(
        tmp_path,
        limit_train_batches=6,
        strategy="ddp_spawn",
        devices=2,
        callbacks=[monitor, ckpt, DestroyProcessGroupAtExit()],
    )
    trainer.fit(SteadyModel(0.005))
    saved = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)
    fit = next(v for k, v in saved["callbacks"].items() if k.startswith("EnergyMonitor"))["ledgers"]["fit"]
    assert (fit["steps"], fit["samples"]) == (3, 2 * 3)  # both ranks' batches of one sample
    assert len(fit["per_rank"]) == 2 and all(sum(r[:-1]) > 0 for r in fit["per_rank"])


@pytest.mark.slow
def test_ddp_estimates_are_per_process_and_explicit_gpus_per_node(tmp_path):
    fit = _ddp_fit(tmp_path, SimulatedGPUWorkload(count=2, step_work_s=0.002), gpu_indices=[0, 1])
    ranks = fit["per_rank"]
    assert fit["sources"]["cpu"] == "estimated"
    # no RAPL: every rank estimates its own process's CPU time, which neither double counts nor misses a rank
    cpu = sorted(r["energy_j"]["cpu"] for r in ranks)
    assert cpu[0] > 0 and cpu[1] < 3 * cpu[0]
    # an explicit GPU list is the node's: measured by local rank 0 only
    assert ranks[0]["sources"]["gpu"] == "measured" and ranks[0]["energy_j"]["gpu"] > 0
    assert ranks[1]["sources"]["gpu"] == "none" and ranks[1]["energy_j"]["gpu"] == 0.0


def test_resume_from_a_checkpoint_taken_before_the_first_flush(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    first = EnergyMonitor(print_summary=False)  # flushes every 50 batches: none before the checkpoint at step 1
    make_trainer(tmp_path, max_steps=1, callbacks=[first, ckpt]).fit(BoringModel())
    saved = torch.load(next((tmp_path / "ckpt").iterdir()), weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("EnergyMonitor"))
    assert len(state["ledgers"]["fit"]["per_rank"]) == 1  # the unflushed window was saved
    second = EnergyMonitor(print_summary=False)
    make_trainer(tmp_path, max_steps=4, callbacks=[second]).fit(
        BoringModel(), ckpt_path=next((tmp_path / "ckpt").iterdir())
    )
    assert second.total_energy_j() > state["ledgers"]["fit"]["per_rank"][0][1]
    assert second.ledgers["fit"].sources[0][1] == "estimated"


def test_a_failing_report_does_not_mask_the_users_exception(tmp_path, monkeypatch):
    monitor = EnergyMonitor(print_summary=False)
    monkeypatch.setattr(monitor, "_write_report", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(tmp_path, limit_train_batches=10, callbacks=[monitor]).fit(FailingModel(fail_at=2))
    assert monitor.meter is None  # stopped all the same


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_bar_shows_live_power_and_energy(tmp_path, enabled):
    class Spy(Callback):
        seen: list = []

        def on_train_batch_end(self, trainer, *args):
            self.seen.append(dict(trainer.progress_bar_metrics))

    spy = Spy()
    spy.seen = []
    monitor = EnergyMonitor(min_window_s=0.0, log_every_n_steps=2, print_summary=False, progress_bar=enabled)
    trainer = make_trainer(tmp_path, limit_train_batches=6, callbacks=[monitor, spy], enable_progress_bar=True)
    trainer.fit(SteadyModel(0.002))
    if enabled:
        joules = [m["energy/fit_J"] for m in spy.seen if "energy/fit_J" in m]
        assert len(joules) == 5 and joules == sorted(joules) and joules[0] > 0  # live from the 2nd batch on
        assert spy.seen[-1]["energy/power_W"] > 0
        assert trainer.progress_bar_metrics["energy/fit_J"] == pytest.approx(monitor.ledgers["fit"].total_j, rel=0.5)
    else:
        assert all(not any(k.startswith("energy/") for k in m) for m in spy.seen)
        assert monitor.progress_bar_metrics() == {}


def test_no_progress_bar_no_progress_bar_logging(tmp_path):
    monitor = EnergyMonitor(min_window_s=0.0, log_every_n_steps=1, print_summary=False)
    trainer = make_trainer(tmp_path, limit_train_batches=3, callbacks=[monitor])  # enable_progress_bar=False
    trainer.fit(SteadyModel(0.002))
    assert trainer.progress_bar_metrics == {} and "energy/power" in monitor.progress_bar_metrics()


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_lightning_s_progress_bars_show_watts_and_joules(tmp_path, bar):
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    progress = TQDMProgressBar() if bar == "tqdm" else RichProgressBar()
    monitor = EnergyMonitor(min_window_s=0.0, log_every_n_steps=2, print_summary=False)
    bar_on = {"enable_progress_bar": True, "enable_checkpointing": False}
    trainer = make_trainer(tmp_path, limit_train_batches=4, callbacks=[monitor, progress], **bar_on)
    model = SteadyModel(0.002)
    trainer.fit(model)
    shown = progress.get_metrics(trainer, model)  # what the bar renders after its own entries
    assert shown["energy/power_W"] > 0 and shown["energy/fit_J"] > 0  # namespaced numbers (a bar shows floats)
    assert "W" not in shown and "J" not in shown


def test_budget_on_carbon_uses_the_monitors_intensity(tmp_path):
    budget = EnergyBudget(max_gco2e=1e-4)
    monitor = EnergyMonitor(
        carbon_intensity=1000.0, pue=2.0, min_window_s=0.0, log_every_n_steps=2, print_summary=False
    )
    trainer = make_trainer(tmp_path, max_epochs=50, limit_train_batches=10, callbacks=[monitor, budget])
    trainer.fit(SteadyModel(0.01))
    assert "gCO2e >= budget 0.0001 gCO2e" in budget.stopped_reason
    assert monitor.total_gco2e() >= 1e-4
    assert trainer.current_epoch < 49


# ------------------------------------------------------------------------------------------------- issue 11 / 10 / 14
def test_green_progress_bars_show_formatted_figures(tmp_path):
    from lightning_green import GreenTQDMProgressBar

    progress = GreenTQDMProgressBar()
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    bar_on = {"enable_progress_bar": True, "enable_checkpointing": False}
    trainer = make_trainer(
        tmp_path, limit_train_batches=4, log_every_n_steps=2, callbacks=[monitor, progress], **bar_on
    )
    model = SteadyModel(0.002)
    trainer.fit(model)
    shown = progress.get_metrics(trainer, model)
    assert re.fullmatch(r"[0-9.]+ k?W", shown["energy/power"]), shown
    assert re.fullmatch(r"[0-9.e+-]+ (J|Wh|kWh)", shown["energy/total"]), shown
    # the numbers are not logged as well when the bar formats them (no self.log call, no float entries)
    assert not any(k in trainer.progress_bar_metrics for k in ("W", "J", "energy/power_W", "energy/fit_J"))


@pytest.mark.parametrize(
    ("joules", "text"), [(515.951, "516 J"), (23.551, "23.6 J"), (4500.0, "1.25 Wh"), (9.0e6, "2.5 kWh")]
)
def test_progress_bar_energy_switches_units_as_totals_grow(joules, text):
    from lightning_green.callbacks.progress_bar import format_energy_short

    assert format_energy_short(joules) == text


@dataclasses.dataclass
class _Pair:
    x: torch.Tensor
    y: torch.Tensor


@pytest.mark.parametrize("kind", ["userdict", "dataclass", "batchencoding"])
def test_samples_of_mapping_and_dataclass_batches(kind):
    # issue 11 item 14: a Mapping that is not a dict, or a dataclass, counted as 1 sample
    from lightning_green.callbacks.energy_monitor import _batch_size

    x = torch.zeros(5, 3)
    if kind == "userdict":
        batch = collections.UserDict({"x": x})
    elif kind == "dataclass":
        batch = _Pair(x, torch.zeros(5))
    else:
        transformers = pytest.importorskip("transformers")
        batch = transformers.BatchEncoding({"input_ids": x.long()})
    assert _batch_size(batch) == 5


class _TokenLM(LightningModule):
    """A tiny LM over dict batches of ``input_ids``/``attention_mask``."""

    def __init__(self, wrap=dict) -> None:
        super().__init__()
        self.wrap = wrap
        self.emb = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, batch):
        return self.head(self.emb(batch["input_ids"]))

    def training_step(self, batch, batch_idx):
        busy_cpu(0.002)
        return self(batch).logsumexp(-1).mean()

    def predict_step(self, batch, batch_idx):
        return self(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self):
        # 6 sequences of 8 tokens, the i-th with i + 3 real tokens (then padding): batches of 2
        rows = []
        for i in range(6):
            mask = torch.zeros(8, dtype=torch.long)
            mask[: i + 3] = 1
            rows.append({"input_ids": torch.randint(0, 16, (8,)), "attention_mask": mask})
        return DataLoader(rows, batch_size=2, collate_fn=lambda items: self.wrap(default_collate(items)))

    def train_dataloader(self):
        return self._loader()

    def predict_dataloader(self):
        return self._loader()


@pytest.mark.parametrize("wrap", [dict, collections.UserDict], ids=["dict", "userdict"])
def test_j_per_token_from_the_attention_mask_in_fit_and_predict(tmp_path, wrap):
    # issue 10: J/token for token batches; issue 14: J/sample and J/token in the report for predict
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, logger=logger, log_every_n_steps=1, callbacks=[monitor])
    model = _TokenLM(wrap)
    trainer.fit(model)
    trainer.predict(model)
    real_tokens = sum(i + 3 for i in range(6))  # 33 of 48 positions
    report = _report(logger.log_dir)
    assert "J/token" in format_summary(report).splitlines()[1]
    from lightning_green.report import build_report, load_run

    assert "| J/token |" in build_report(load_run(logger.log_dir)).to_markdown(str(tmp_path))
    fit, predict = (report["stages"][s] for s in ("fit", "predict"))
    for stage in (fit, predict):
        assert stage["samples"] == 6 and stage["tokens"] == real_tokens
        assert stage["j_per_token"] == pytest.approx(stage["energy_j"]["total"] / real_tokens)
        assert stage["j_per_sample"] == pytest.approx(stage["energy_j"]["total"] / 6)
    logger.save()
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        header = set(next(csv.reader(f)))
    assert {"energy/J_per_token", "predict/energy/J_per_token", "predict/energy/J_per_sample"} <= header


class _MemoryLogger(Logger):
    """Every ``log_metrics`` call, in order, as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def points(self, key):
        return [(step, m[key]) for step, m in self.calls if key in m]


def test_window_rates_stay_per_window_and_the_fits_averages_have_their_own_names(tmp_path):
    # power/avg_W, J/sample and J/token are the rates of the window logged with the loss; the epoch end logged the
    # fit's cumulative averages under the same names, a second and different point at the epoch's last step.
    memory = _MemoryLogger()
    trainer = make_trainer(
        tmp_path,
        logger=memory,
        max_epochs=2,
        log_every_n_steps=1,
        callbacks=[EnergyMonitor(min_window_s=0.0, print_summary=False)],
    )
    trainer.fit(_TokenLM())  # 3 batches an epoch: logged at steps 0-5, epochs end at 2 and 5
    for key in ("power/avg_W", "energy/J_per_sample", "energy/J_per_token"):
        assert [step for step, _ in memory.points(key)] == list(range(6)), key
    for key in ("power/fit_avg_W", "energy/fit_J_per_sample", "energy/fit_J_per_token"):
        assert [step for step, _ in memory.points(key)] == [2, 5], key
    # the fit's averages divide one energy by all samples (6 an epoch) and all real tokens (33 an epoch)
    per_sample = [v for _, v in memory.points("energy/fit_J_per_sample")]
    per_token = [v for _, v in memory.points("energy/fit_J_per_token")]
    assert [s / t for s, t in zip(per_sample, per_token, strict=True)] == pytest.approx([33 / 6, 33 / 6])


def test_two_fits_on_one_trainer_are_one_run(tmp_path):
    # issue 11 item 13: the ledger restarted per fit(), so EnergyBudget budgeted each call, not the run
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    announced = []
    monitor.add_listener(lambda trainer, m: announced.append(m._forecast_announced))
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=4, log_every_n_steps=2, callbacks=[monitor])
    trainer.fit(SteadyModel(0.005))
    first = monitor.total_energy_j("fit")
    assert announced[-1] is True  # said at the start of epoch 1
    trainer.fit_loop.max_epochs = 4
    announced.clear()
    trainer.fit(SteadyModel(0.005))
    fit = monitor.ledgers["fit"]
    assert monitor.total_energy_j("fit") > 1.5 * first  # continued, not restarted
    assert len(fit.epochs_j) == 4 and fit.steps == 16 and fit.samples == 16
    assert announced[0] is False and announced[-1] is True  # the second fit() announces its own forecast
    # the same monitor in a new Trainer is a new run
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[monitor]).fit(SteadyModel(0.005))
    assert monitor.ledgers["fit"].steps == 2


def test_a_new_trainer_reports_only_its_own_stages(tmp_path):
    # A smoke test's test and predict stages were in the real run's report; a test-only Trainer's report held the
    # last Trainer's fit.
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    smoke = make_trainer(tmp_path / "smoke", fast_dev_run=2, callbacks=[monitor])
    model = SteadyModel(0.005)
    smoke.fit(model)
    smoke.test(model, verbose=False)
    smoke.predict(model)
    assert {"fit", "test", "predict"} <= set(monitor.ledgers)
    real = make_trainer(tmp_path / "real", max_epochs=1, limit_train_batches=2, callbacks=[monitor])
    real.fit(model)
    assert set(_report(real)["stages"]) <= {"fit", "validate"} and monitor.ledgers["fit"].steps == 2
    real.test(model, verbose=False)  # the same Trainer: the same run
    assert {"fit", "test"} <= set(_report(real)["stages"])
    tester = make_trainer(tmp_path / "tester", limit_test_batches=1, callbacks=[monitor])
    tester.test(model, verbose=False)
    assert set(_report(tester)["stages"]) == {"test"} and monitor.ledgers["test"].steps == 1
    real.predict(model)  # the tester's test (1 step) is not the first Trainer's (its own ledger is gone)
    assert set(monitor.report()["stages"]) == {"fit", "validate", "predict"}
    # ... and the first Trainer's run is not lost: its report keeps its fit, and a later fit() on it continues its
    # totals (its lifetime's budget).
    real.test(model, verbose=False)
    assert {"fit", "test"} <= set(monitor.report()["stages"])
    real.fit_loop.max_epochs = 2
    real.fit(model)
    assert monitor.ledgers["fit"].steps == 4 and len(monitor.ledgers["fit"].epochs_j) == 2
    # A stage that fails on a new Trainer before it measured anything reports nothing of the other Trainer's.
    broken = make_trainer(tmp_path / "broken", limit_test_batches=1, callbacks=[monitor])
    with pytest.raises(ValueError, match="no test data"):
        broken.test(model, dataloaders=_Broken(), verbose=False)
    assert set(monitor.report()["stages"]) == set()


def test_a_trainers_report_never_shows_another_trainers_fit_validation(tmp_path):
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    model = SteadyModel(0.005)
    first = make_trainer(tmp_path / "a", limit_val_batches=3, callbacks=[monitor])
    first.validate(model, verbose=False)
    make_trainer(tmp_path / "b", max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[monitor]).fit(
        model
    )
    first.test(model, verbose=False)
    assert set(monitor.report()["stages"]) == {"test"}  # its own validate is gone; the fit's one is not its own


class _Broken:
    def __iter__(self):
        raise ValueError("no test data")

    def __len__(self):
        return 1


def test_budget_covers_the_trainers_lifetime(tmp_path):
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[monitor])
    trainer.fit(SteadyModel(0.005))
    spent = monitor.total_energy_j("fit")
    budget = EnergyBudget(max_energy=spent * 0.9, unit="J")  # already used up by the first fit()
    trainer.callbacks.append(budget)
    trainer.fit_loop.max_epochs = 3
    trainer.fit(SteadyModel(0.005))
    assert budget.stopped_reason is not None and "budget" in budget.stopped_reason
    assert trainer.current_epoch == 1 and monitor.ledgers["fit"].steps == 4  # stopped before its first batch


class _SyncDistWarningIsAnError(Callback):
    def setup(self, trainer, pl_module, stage):
        warnings.filterwarnings("error", message=r".*It is recommended to use `self\.log\(")


@pytest.mark.slow
def test_ddp_epoch_totals_raise_no_sync_dist_warning(tmp_path):
    # issue 11 item 3: each epoch-level self.log(..., sync_dist=False) triggered Lightning's warning under DDP
    fit = _ddp_fit(tmp_path, _SyncDistWarningIsAnError(), GreenReport())
    assert fit["steps"] == 6
    assert os.path.isfile(tmp_path / "green_report.md")
