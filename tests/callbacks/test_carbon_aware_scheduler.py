"""CarbonAwareScheduler on a real Trainer with a simulated clock: pauses at step boundaries, checkpoints, re-plans,
DDP agreement, power switching and every bad input."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_green import CarbonAwareScheduler, EnergyMonitor, PowerLimitTuner, workload_changed
from lightning_green.report import write_report
from lightning_green.testing import SimClock, SimulatedGPUWorkload, simulated_gpus
from tests.helpers import QUIET, make_trainer

H = 3600.0
START = dt.datetime(2022, 6, 1, tzinfo=dt.timezone.utc)
DATA = Path(__file__).resolve().parents[1] / "data" / "carbon"
CAISO = str(DATA / "us_caiso_2022-06-01_14_eia.csv")


class by_hour:  # noqa: N801 - reads as a function; a class so that ddp_spawn can pickle it
    """Intensity by hour since START (``default`` for hours not in ``table``)."""

    def __init__(self, table: dict[int, float], default: float = 400.0) -> None:
        self.table, self.default = table, default

    def __call__(self, when: dt.datetime) -> float:
        return self.table.get(int((when - START).total_seconds() // H), self.default)


class StepClock(Callback):
    """Each training step takes ``step_s`` of simulated time (rank r: ``step_s * (1 + skew * r)``); records when."""

    def __init__(self, clock: SimClock, step_s: float, skew: float = 0.0, out: str | None = None) -> None:
        self.clock, self.step_s, self.skew, self.out = clock, step_s, skew, out
        self.step_hours: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step_hours.append((self.clock() - START.timestamp()) / H)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.advance(self.step_s * (1 + self.skew * trainer.global_rank))

    def on_train_end(self, trainer, pl_module):
        if self.out is not None:
            sched = next(cb for cb in trainer.callbacks if isinstance(cb, CarbonAwareScheduler))
            steps = [p["step"] for p in sched.pauses]
            with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump({"pause_steps": steps, "paused_s": sched.paused_s}, f)


def sim_clock() -> SimClock:
    return SimClock(START.timestamp())


def test_pauses_and_resumes_at_step_boundaries_in_the_planned_hours(tmp_path):
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({1: 100.0, 4: 100.0, 5: 100.0}), deadline="12h", expected_duration="3h", clock=clock
    )
    steps = StepClock(clock, step_s=0.25 * H)
    trainer = make_trainer(tmp_path, max_steps=12, callbacks=[steps, sched])
    trainer.fit(BoringModel())
    assert sorted({int(h) for h in steps.step_hours}) == [1, 4, 5]
    assert [p["step"] for p in sched.pauses] == [0, 4]
    assert [p["seconds"] for p in sched.pauses] == [H, 2 * H]
    assert sched.paused_s == 3 * H
    assert clock() == START.timestamp() + 6 * H


def fit_with_long_pauses(trainer_cls, model_cls, root, checkpoint_cls):
    """12 steps of 15 min from START with clean hours 1, 4, 5: pauses at step 4 for 2 h (a checkpoint first)."""
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({1: 100.0, 4: 100.0, 5: 100.0}),
        deadline="12h",
        expected_duration="3h",
        checkpoint_after="30m",
        clock=clock,
        verbose=False,
    )
    callbacks = [StepClock(clock, 0.25 * H), sched, checkpoint_cls(dirpath=root / "ckpt")]
    trainer = trainer_cls(
        default_root_dir=root, max_steps=12, callbacks=callbacks, logger=False, limit_val_batches=0, **QUIET
    )
    trainer.fit(model_cls())
    return sched


def test_long_pause_is_preceded_by_a_checkpoint(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        fit_with_long_pauses(Trainer, BoringModel, tmp_path, ModelCheckpoint)
    # A full checkpoint, said so: not Lightning's "`weights_only` was not set" beside the scheduler's own line.
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]
    saved = torch.load(tmp_path / "ckpt" / "last-carbon-pause.ckpt", weights_only=False)
    assert saved["global_step"] == 4  # the pause at step 4 (2 h); the one before step 0 has nothing to save
    assert saved["callbacks"]  # loadable, with the callbacks' state
    # A job killed during that pause resumes from it with Lightning's usual `ckpt_path="last"`.
    resumed = make_trainer(
        tmp_path, max_steps=5, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")]
    )
    resumed.fit(BoringModel(), ckpt_path="last")
    assert Path(resumed.ckpt_path).name == "last-carbon-pause.ckpt"


@pytest.mark.parametrize("monitor_first", [True, False])
@pytest.mark.parametrize("interrupt", ["SIGTERM", "KeyboardInterrupt"])
def test_sigterm_ends_a_pause_within_a_second_and_lightning_stops_the_run(
    tmp_path, monkeypatch, interrupt, monitor_first
):
    import lightning_green.callbacks.carbon_aware_scheduler as module

    sim = sim_clock()
    slept: list[float] = []

    def fake_sleep(seconds):  # a real-clock pause (no `advance`), without sleeping: SIGTERM on its 3rd second
        slept.append(seconds)
        sim.advance(seconds)
        if len(slept) == 3:
            if interrupt == "KeyboardInterrupt":  # Ctrl-C: raised inside the sleep, after its second
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(module, "time", SimpleNamespace(sleep=fake_sleep, time=sim))
    sched = CarbonAwareScheduler(
        intensity=by_hour({0: 100.0, 3: 100.0, 4: 100.0}),  # pause at step 4 (hours 1-2 dirty)
        deadline="12h",
        expected_duration="3h",
        checkpoint_after="30m",
        clock=lambda: sim(),  # no `advance`: the scheduler sleeps
        verbose=False,
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    monitor = EnergyMonitor(print_summary=False, clock=lambda: sim())
    pair = [monitor, sched] if monitor_first else [sched, monitor]
    trainer = make_trainer(
        tmp_path, max_steps=12, enable_checkpointing=True, callbacks=[StepClock(sim, 0.25 * H), *pair, ckpt]
    )
    with pytest.raises(SIGTERMException if interrupt == "SIGTERM" else SystemExit):
        trainer.fit(BoringModel())
    assert trainer.global_step == 4
    assert len(slept) == 3 and max(slept) <= 1.0  # not one 2-h sleep
    assert sched.paused_s == pytest.approx(sum(slept))
    said = {"sigterm": True} if interrupt == "SIGTERM" else {"interrupted": "KeyboardInterrupt"}
    assert sched.pauses[-1]["step"] == 4 and sched.pauses[-1].items() >= said.items()
    assert (tmp_path / "ckpt" / "last-carbon-pause.ckpt").exists()  # the checkpoint before the pause is kept
    # The interrupted run's report has the pause, whichever callback's on_exception runs first (it had none).
    (path,) = tmp_path.rglob("energy_report.json")
    report = json.loads(path.read_text())
    assert report["status"].startswith("interrupted")
    assert report["extra"]["carbon_schedule"]["pauses"] == json.loads(json.dumps(sched.pauses))
    assert report["extra"]["carbon_schedule"]["paused_s"] == pytest.approx(sched.paused_s)


def test_sigterm_while_pausing_before_the_first_step_runs_no_step(tmp_path, monkeypatch):
    import lightning_green.callbacks.carbon_aware_scheduler as module

    sim = sim_clock()

    def fake_sleep(seconds):
        sim.advance(seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(module, "time", SimpleNamespace(sleep=fake_sleep, time=sim))
    sched = CarbonAwareScheduler(
        intensity=by_hour({2: 100.0}), deadline="12h", expected_duration="1h", clock=lambda: sim(), verbose=False
    )
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[sched])
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert trainer.global_step == 0 and sched.paused_s <= 1.0


def test_a_sigterm_on_another_rank_ends_the_pause_on_every_rank(tmp_path, monkeypatch):
    """Under DDP the ranks agree once per second of pause: a signal only another rank got ends this rank's too."""
    import lightning_green.callbacks.carbon_aware_scheduler as module

    sim = sim_clock()
    slept: list[float] = []

    def fake_sleep(seconds):
        slept.append(seconds)
        sim.advance(seconds)

    monkeypatch.setattr(module, "time", SimpleNamespace(sleep=fake_sleep, time=sim))
    sched = CarbonAwareScheduler(
        intensity=by_hour({0: 100.0, 3: 100.0, 4: 100.0}),
        deadline="12h",
        expected_duration="3h",
        clock=lambda: sim(),
        verbose=False,
    )
    trainer = make_trainer(tmp_path, max_steps=12, callbacks=[StepClock(sim, 0.25 * H), sched])
    asked: list[bool] = []

    def another_rank_got_sigterm(decision, all=True):  # noqa: A002 - Lightning's keyword
        asked.append(bool(decision))
        return bool(decision) or len(asked) >= 3  # this rank: no signal; the others: one on the 3rd look

    monkeypatch.setattr(trainer.strategy, "reduce_boolean_decision", another_rank_got_sigterm)
    with pytest.raises(SIGTERMException):  # raised here too, so that every rank stops at the same step
        trainer.fit(BoringModel())
    assert trainer.global_step == 4 and len(slept) == 2 and not any(asked)
    assert sched.pauses[-1]["sigterm"]


def _run_with_a_resume(tmp_path, max_steps: int, ckpt_path: str | None = None, deadline: str = "12h", after=()):
    clock = sim_clock()
    if ckpt_path:
        clock.advance(2 * H)  # the restarted job starts later
    sched = CarbonAwareScheduler(
        intensity=by_hour({1: 100.0, 4: 100.0, 5: 100.0}),
        deadline=deadline,
        expected_duration="3h",
        clock=clock,
        verbose=False,
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(
        tmp_path,
        max_steps=max_steps,
        max_epochs=-1,
        enable_checkpointing=True,
        callbacks=[StepClock(clock, 0.25 * H), sched, *after, ckpt],
    )
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    return sched


def test_a_resume_naming_another_deadline_plans_to_it(tmp_path):
    first = _run_with_a_resume(tmp_path, 2, deadline="2022-06-01T12:00")
    resumed = _run_with_a_resume(tmp_path, 3, str(tmp_path / "ckpt" / "last.ckpt"), deadline="2022-06-02T12:00")
    assert first.deadline_s == START.timestamp() + 12 * H
    assert resumed.deadline_s == START.timestamp() + 36 * H  # not the checkpoint's


def test_pause_time_and_deadline_survive_a_resume(tmp_path):
    first = _run_with_a_resume(tmp_path, 2)
    assert first.paused_s == H
    resumed = _run_with_a_resume(tmp_path, 12, str(tmp_path / "ckpt" / "last.ckpt"))  # its deadline stays the first
    assert resumed.deadline_s == first.deadline_s == START.timestamp() + 12 * H
    assert resumed.paused_s > first.paused_s and resumed.pauses[0] == first.pauses[0]


def test_a_pause_at_a_resume_does_not_count_the_checkpoints_steps_again(tmp_path):
    # The scheduler, listed before the monitor, pauses in on_train_start of the resumed fit (hour 2 is dirty) and
    # closes an energy window before the monitor's on_train_start: the window counted the 2 restored steps again.
    _run_with_a_resume(tmp_path, 2, after=[EnergyMonitor(print_summary=False)])
    monitor = EnergyMonitor(print_summary=False)
    resumed = _run_with_a_resume(tmp_path, 6, str(tmp_path / "ckpt" / "last.ckpt"), after=[monitor])
    assert resumed.pauses[-1]["step"] == 2  # the pause at the resume
    assert monitor.ledgers["fit"].steps == 6


def test_the_replan_count_survives_a_resume():
    # The report's carbon_schedule.replans counted only the resumed part of the run.
    def scheduler():
        return CarbonAwareScheduler(intensity=by_hour({0: 100.0}), deadline="12h", clock=sim_clock(), verbose=False)

    first, resumed = scheduler(), scheduler()
    first.replans = 3
    resumed.load_state_dict(first.state_dict())
    assert resumed.replans == 3 and resumed.report()["replans"] == 3


class SlowDown(Callback):
    """At step 4 the workload changes (e.g. a precision switch back to fp32): steps take twice as long."""

    def __init__(self, step_clock: StepClock) -> None:
        self.step_clock = step_clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 4:
            self.step_clock.step_s *= 2
            workload_changed(trainer, "precision", source=self)


def test_replans_after_a_workload_change_and_still_meets_the_deadline(tmp_path):
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({0: 100.0, 9: 100.0, 10: 100.0, 11: 100.0}),
        deadline="12h",
        estimate_after_steps=2,
        clock=clock,
        verbose=False,
    )
    steps = StepClock(clock, 0.25 * H)
    trainer = make_trainer(tmp_path, max_steps=16, callbacks=[steps, SlowDown(steps), sched])
    trainer.fit(BoringModel())
    assert sched.replans == 1
    # After the change it measured 2 steps of 30 min before planning: 10 steps left = 5 h, not the 3 h the old
    # step time would say (which would have paused until 09:00 and missed the deadline by 3 h).
    remaining = [p["remaining_s"] for p in sched.plans]
    first_after = next(r for r in remaining if r > 3.5 * H)
    assert first_after == 5 * H
    assert clock() <= START.timestamp() + 12 * H
    assert sched.paused_s > 0


def test_plans_to_the_end_of_max_time_when_it_comes_before_the_deadline(tmp_path):
    # Lightning's Timer runs on through a pause: planned to the deadline (12 h), the run paused 3 h (to hours 1, 4
    # and 5) and max_time (4 h) stopped it unfinished right after, at step 4 of 12.
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({1: 100.0, 4: 100.0, 5: 100.0}), deadline="12h", expected_duration="3h", clock=clock
    )
    trainer = make_trainer(tmp_path, max_steps=12, max_time={"hours": 4}, callbacks=[StepClock(clock, 0.25 * H), sched])
    trainer.fit(BoringModel())
    assert trainer.global_step == 12
    assert clock() - START.timestamp() <= 4 * H  # done before max_time's end on the scheduler's own clock
    report = sched.report()
    assert report["deadline_s"] == START.timestamp() + 12 * H  # the deadline given is still the one reported
    assert report["max_time_end"] == "2022-06-01T04:00+00:00"


def test_a_pause_is_not_forecast_as_every_epochs_energy(tmp_path):
    # The forecast multiplied epoch 0's energy, a 5 h pause's idle power included, by the epochs left: 2.2 kWh for a
    # 1.3 kWh run, and EnergyBudget(on_forecast="stop") stopped a run within its budget.
    from lightning_green import EnergyBudget

    clock = sim_clock()
    gpu = SimulatedGPUWorkload(step_work_s=900.0, gpu_kwargs={"clock": clock, "idle_w": 60.0, "demand_w": 250.0})
    clean = by_hour({0: 100.0, 6: 100.0, 7: 100.0, 8: 100.0})
    sched = CarbonAwareScheduler(
        intensity=clean, deadline="12h", expected_duration="4h", clock=clock, checkpoint_after=None, verbose=False
    )
    monitor = EnergyMonitor(
        carbon_intensity=clean, clock=clock, print_summary=False, progress_bar=False, min_window_s=0.0
    )
    budget = EnergyBudget(max_energy=1.6, unit="kWh", on_forecast="stop")
    trainer = make_trainer(tmp_path, max_epochs=4, limit_train_batches=4, callbacks=[gpu, sched, monitor, budget])
    trainer.fit(BoringModel())
    assert sched.paused_s == 5 * H and trainer.global_step == 16  # not stopped by the budget
    epochs_kwh = [e / 3.6e6 for e in monitor.ledgers["fit"].epochs_j]
    assert epochs_kwh[0] == pytest.approx(0.25 + 0.06 * 5, rel=1e-3)  # the pause's idle energy is in its epoch's
    assert monitor.forecast_total_j == pytest.approx(monitor.total_energy_j("fit"), rel=1e-3)


def test_a_scheduler_reused_in_a_new_trainer_starts_a_new_run(tmp_path):
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({1: 100.0, 4: 100.0, 5: 100.0}), deadline="12h", expected_duration="3h", clock=clock
    )
    make_trainer(tmp_path / "a", max_steps=12, callbacks=[StepClock(clock, 0.25 * H), sched]).fit(BoringModel())
    assert sched.paused_s == 3 * H
    clock.advance(START.timestamp() + 24 * H - clock())  # a day later every hour is dirty: nothing to pause for
    make_trainer(tmp_path / "b", max_steps=12, callbacks=[StepClock(clock, 0.25 * H), sched]).fit(BoringModel())
    report = sched.report()
    assert (report["paused_s"], report["pauses"], report["compute_s"]) == (0.0, [], 3 * H)
    assert report["first_plan_slots"][0][0] == START.timestamp() + 24 * H


def test_never_pauses_when_the_time_is_short(tmp_path):
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({10: 1.0}), deadline="4h", expected_duration="3h50m", clock=clock, verbose=False
    )
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[StepClock(clock, 0.9 * H), sched])
    trainer.fit(BoringModel())
    assert sched.paused_s == 0.0


def test_reads_a_csv_trace_and_logs_decisions(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    clock = SimClock(dt.datetime(2022, 6, 3, 8, tzinfo=dt.timezone.utc).timestamp())
    sched = CarbonAwareScheduler(intensity=CAISO, deadline="24h", expected_duration="4h", clock=clock, verbose=False)
    monitor = EnergyMonitor(carbon_intensity=CAISO, clock=clock, print_summary=False, progress_bar=False)
    trainer = make_trainer(
        tmp_path, max_steps=8, logger=CSVLogger(tmp_path), callbacks=[StepClock(clock, 0.5 * H), sched, monitor]
    )
    trainer.fit(BoringModel())
    assert sched.paused_s > 0  # California at 08:00 UTC is night: the clean solar hours come later
    text = Path(trainer.logger.log_dir, "metrics.csv").read_text()
    assert "carbon/plan" in text and "carbon/paused_s" in text and "carbon/intensity_g_per_kWh" in text
    report = json.loads(Path(trainer.log_dir, "energy_report.json").read_text())
    section = report["extra"]["carbon_schedule"]
    assert section["paused_s"] == sched.paused_s and section["forecast_slots"]
    assert report["carbon"]["intensity_source"].startswith("trace: ")
    files = write_report(trainer.log_dir)
    names = {p.name for p in files.images}
    assert {"carbon_intensity.png", "carbon_plan.png"} <= names
    for png in files.images:
        if png.name.startswith("carbon_"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "carbon-aware pauses" in files.markdown.read_text()


@pytest.mark.slow
def test_ddp_ranks_pause_at_the_same_steps(tmp_path):
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({1: 100.0, 4: 100.0, 5: 100.0}),
        deadline="12h",
        expected_duration="3h",
        clock=clock,
        verbose=False,
    )
    # rank 1's steps take 10 % longer: its clock drifts, but rank 0 decides for both
    steps = StepClock(clock, 0.25 * H, skew=0.1, out=str(tmp_path))
    trainer = make_trainer(
        tmp_path, max_steps=12, strategy="ddp_spawn", devices=2, callbacks=[steps, sched], use_distributed_sampler=False
    )
    trainer.fit(BoringModel())
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["pause_steps"] == r1["pause_steps"] == [0, 4]
    assert r0["paused_s"] == r1["paused_s"]


def test_clean_fast_switches_the_power_limit_by_the_grid(tmp_path):
    clock = sim_clock()
    # The GPU sleeps for real (Zeus times the profile with the wall clock); the grid's clock is simulated.
    with simulated_gpus(1, curve="v100-resnet50") as sims:
        gpu = SimulatedGPUWorkload(step_work_s=0.05)  # long enough for wall-clock noise on a busy machine
        tuner = PowerLimitTuner(objective="energy", warmup_steps=1, profile_steps=3, pl_step_w=50, wait_steps=0)
        sched = CarbonAwareScheduler(
            intensity=by_hour({h: 100.0 for h in range(0, 24, 2)}),  # even hours clean, odd hours dirty
            deadline="18h",
            expected_duration="15h",
            power="clean-fast",
            clock=clock,
            verbose=False,
        )
        steps = StepClock(clock, 0.25 * H)  # 15 min of simulated time a step
        trainer = make_trainer(tmp_path, max_steps=60, callbacks=[gpu, steps, tuner, sched])
        trainer.fit(BoringModel())
        history = [mw // 1000 for mw in sims.gpus[0].limit_history]
    assert tuner.state == "done"
    table = tuner.table()
    fastest = min(table, key=lambda r: r["time_s"])["limit_w"]
    leanest = min(table, key=lambda r: r["energy_j"])["limit_w"]
    assert fastest != leanest
    assert {"time", "energy"} <= set(sched.power_modes)
    after_profile = history[len(table) + 1 :]
    assert fastest in after_profile and leanest in after_profile


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"intensity": -1}, ValueError, r"CarbonAwareScheduler\(intensity=-1\): `intensity` must be a number >= 0"),
        ({"deadline": "soon"}, ValueError, r"CarbonAwareScheduler\(deadline='soon'\): `deadline` must be an ISO"),
        ({"deadline": 1e20}, ValueError, r"\(deadline=1e\+20\): `deadline` must be at most 366 days after the start"),
        ({"deadline": "367d"}, ValueError, r"\(deadline='367d'\): `deadline` must be at most 366 days after the"),
        ({"expected_duration": "8 hours please"}, ValueError, r"\(expected_duration='8 hours please'\)"),
        ({"forecast": "oracle"}, ValueError, r"\(forecast='oracle'\): `forecast` must be one of \('trace'"),
        ({"safety_margin": -0.1}, ValueError, r"\(safety_margin=-0.1\): `safety_margin` must be a number >= 0"),
        ({"power": "max"}, ValueError, r"\(power='max'\): `power` must be one of \('off', 'clean-fast'\)"),
        ({"checkpoint_after": 0}, ValueError, r"\(checkpoint_after=0\): `checkpoint_after` must be a duration"),
        ({"estimate_after_steps": 0}, ValueError, r"\(estimate_after_steps=0\): `estimate_after_steps` must be"),
        ({"extend": "loop"}, ValueError, r"\(extend='loop'\): `extend` must be one of \('none', 'repeat-last-week'"),
        ({"clock": 5}, TypeError, r"\(clock=5\): `clock` must be None or a callable"),
        ({"timezone": "Moon/Base"}, ValueError, r"\(timezone='Moon/Base'\): `timezone` must be an IANA"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"intensity": 100.0, **kwargs}
    with pytest.raises(exc, match=match):
        CarbonAwareScheduler(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"deadline": "2022-05-31T12:00"}, r"\(deadline='2022-05-31T12:00'\): `deadline` must be in the future"),
        ({"deadline": "6h", "expected_duration": "8h"}, r"`deadline` must be at least expected_duration=8 h .*6 h"),
        (
            {"deadline": "2023-06-03T00:00"},
            r"\(deadline='2023-06-03T00:00'\): `deadline` must be at most 366 days after the start "
            r"\(2022-06-01T00:00\+00:00\); it is 367 days after it",
        ),
        ({"intensity": CAISO, "deadline": "2022-06-20T00:00"}, r"\(intensity='.*caiso.*'\): the trace covers"),
        ({"intensity": CAISO, "forecast": "persistence"}, r"the run needs 2022-05-30T21:00"),
        ({"intensity": CAISO, "forecast": "persistence-week"}, r"the run needs 2022-05-25T00:00"),
        # the history before the start cannot come from repeating the last week: say what is needed instead
        *[
            (
                {"intensity": CAISO, "forecast": forecast, "extend": extend},
                rf"To fix: forecast='{forecast}' reads {hours} h of intensities before the run starts "
                rf"\(2022-06-01T00:00\+00:00\), so the trace must start by {start}\+00:00: give a trace with that "
                r"history \(a trace is never extended backwards\), or forecast='trace'\.$",
            )
            for forecast, hours, start in (
                ("persistence", 27, "2022-05-30T21:00"),
                ("persistence-week", 168, "2022-05-25T00:00"),
            )
            for extend in ("none", "repeat-last-week")
        ],
    ],
)
def test_bad_deadlines_and_coverage_are_refused_at_setup(tmp_path, kwargs, match):
    args = {"intensity": 100.0, "clock": sim_clock(), **kwargs}
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[CarbonAwareScheduler(**args)])
    with pytest.raises(ValueError, match=match):
        trainer.fit(BoringModel())


class _Stream(BoringModel):
    def train_dataloader(self):
        from lightning.pytorch.demos.boring_classes import RandomIterableDataset

        return torch.utils.data.DataLoader(RandomIterableDataset(32, 16), batch_size=2)


@pytest.mark.parametrize(
    ("model", "bounds"),
    [
        (BoringModel, {"max_epochs": -1, "max_steps": -1, "max_time": {"seconds": 5}}),
        (_Stream, {"max_epochs": 1}),  # an iterable dataset: Lightning estimates -1 steps (it never decided)
    ],
)
def test_unbounded_training_needs_an_expected_duration(tmp_path, model, bounds):
    sched = CarbonAwareScheduler(intensity=100.0, clock=sim_clock())
    trainer = make_trainer(tmp_path, callbacks=[sched], **bounds)
    with pytest.raises(ValueError, match=r"\(expected_duration=None\): training has no step limit"):
        trainer.fit(model())


def test_jsonargparse_builds_it_from_a_path(tmp_path):
    parser = ArgumentParser()
    parser.add_class_arguments(CarbonAwareScheduler, "sched")
    parser.add_class_arguments(EnergyMonitor, "monitor")
    cfg = parser.parse_args(
        [f"--sched.intensity={CAISO}", "--sched.deadline=2022-06-02T08:00", f"--monitor.carbon_intensity={CAISO}"]
    )
    assert cfg.sched.intensity == CAISO and cfg.monitor.carbon_intensity == CAISO
    init = parser.instantiate(cfg)
    assert init.sched.source.describe()["source"] == CAISO
    assert init.monitor.carbon_tracker.source.describe()["kind"] == "trace"
    assert parser.parse_args(["--sched.intensity=56.5"]).sched.intensity == 56.5


class _TwoOptimizers(BoringModel):
    """Manual optimization with two optimizers: ``global_step`` moves by two a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer2 = torch.nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        for opt, layer in zip(self.optimizers(), (self.layer, self.layer2), strict=True):
            loss = layer(batch).sum()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.layer2.parameters(), lr=0.1)]


class _BatchLogger(Logger):
    """Every ``log_metrics`` call as ``(step, training batch being run or None, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.batch: int | None = None
        self.calls: list[tuple[int | None, int | None, dict]] = []

    @property
    def name(self):
        return "batches"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, self.batch, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class _TagBatches(Callback):
    def __init__(self, logger: _BatchLogger) -> None:
        self.logger = logger

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.logger.batch = batch_idx


def test_decisions_are_logged_at_lightnings_step_with_two_optimizers(tmp_path):
    # global_step counts both optimizers' steps: logging at global_step - 1 put batch 0's decision at step 1
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({}, default=100.0), deadline="12h", expected_duration="2h", clock=clock, verbose=False
    )
    logger = _BatchLogger()
    callbacks = [_TagBatches(logger), StepClock(clock, 0.25 * H), sched]
    trainer = make_trainer(tmp_path, max_steps=8, logger=logger, log_every_n_steps=1, callbacks=callbacks)
    trainer.fit(_TwoOptimizers())
    lightning = {batch: step for step, batch, m in logger.calls if "train_loss" in m}
    assert lightning == {0: 0, 1: 1, 2: 2, 3: 3}
    decisions = [(step, batch) for step, batch, m in logger.calls if "carbon/plan" in m and batch is not None]
    assert decisions
    assert [step for step, _ in decisions] == [lightning[batch] for _, batch in decisions]


@pytest.mark.parametrize(
    "bound",
    [
        {"max_epochs": 2, "limit_train_batches": 8},  # Lightning's estimate: 16 batches (global_step reaches 32)
        {"max_epochs": 5, "limit_train_batches": 8, "max_steps": 32},  # max_steps (global_step) binds: 16 batches
    ],
)
def test_plans_a_gan_by_its_batches_not_its_optimizer_steps(tmp_path, bound):
    # Two optimizers step each batch. Counted in global_step against Lightning's estimate in batches, the plan
    # needed half the time and stopped deciding halfway: the second half then ran in the dirty hours 4-5.
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({2: 100.0, 3: 100.0, 6: 100.0, 7: 100.0}),
        deadline="12h",
        expected_duration="4h",
        clock=clock,
        verbose=False,
    )
    steps = StepClock(clock, step_s=0.25 * H)
    trainer = make_trainer(tmp_path, callbacks=[steps, sched], **bound)
    trainer.fit(_TwoOptimizers())
    assert len(steps.step_hours) == 16
    assert sorted({int(h) for h in steps.step_hours}) == [2, 3, 6, 7]
    batches_left = [p["remaining_s"] / (0.25 * H) for p in sched.plans]
    assert batches_left[0] == 16 and batches_left[-1] == 1 and all(n == int(n) for n in batches_left)
    assert sched.remaining_s(trainer) == 0.0
