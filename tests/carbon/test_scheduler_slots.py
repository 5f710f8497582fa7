"""CarbonAwareScheduler and EnergyMonitor on a real Trainer with a simulated clock: slots on the trace's grid, the
``slot`` argument, checkpoints before long pauses, runs that outlive the deadline, messages naming the caller's
own arguments."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_green import CarbonAwareScheduler, EnergyMonitor
from lightning_green.carbon import IntensityTrace, ensure_covers
from lightning_green.testing import SimClock
from tests.callbacks.test_carbon_aware_scheduler import CAISO, START, StepClock, by_hour, sim_clock
from tests.helpers import make_trainer

H = 3600.0
T0 = START.timestamp()


def quarter_hour_trace() -> IntensityTrace:
    """A day of 15-minute values from START: 200 g/kWh, 0 from 10:00 to 10:15, the cleanest hour 15:00-16:00 (100)."""
    values = [200.0] * 96
    values[40] = 0.0
    values[60:64] = [100.0] * 4
    return IntensityTrace(T0, 900.0, tuple(values))


@pytest.mark.parametrize(("slot", "hours"), [(None, [10.0]), ("1h", [15.0, 15.0833, 15.1667])])
def test_the_job_runs_in_the_traces_cleanest_interval(tmp_path, slot, hours):
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=quarter_hour_trace(),
        deadline="20h",
        expected_duration="15m",
        checkpoint_after=None,
        clock=clock,
        verbose=False,
        **({"slot": slot} if slot else {}),
    )
    steps = StepClock(clock, step_s=300.0)  # 5 min a step
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[steps, sched])
    trainer.fit(BoringModel())
    assert [round(h, 4) for h in steps.step_hours] == (hours if slot else [10.0, 10.0833, 10.1667])


def test_a_bad_slot_is_refused():
    with pytest.raises(ValueError, match=r"CarbonAwareScheduler\(slot=0\): `slot` must be a duration"):
        CarbonAwareScheduler(intensity=100.0, slot=0)


def test_a_slot_too_short_for_the_deadline_is_refused_at_setup(tmp_path):
    # 24 h of 1-second slots is 86,400 slots; a plan holds 40,000, so the last 13 hours could never be planned.
    sched = CarbonAwareScheduler(intensity=100.0, deadline="24h", slot=1, clock=sim_clock(), verbose=False)
    with pytest.raises(
        ValueError,
        match=r"CarbonAwareScheduler\(slot=1\): `slot` must be at least 2.161 s with "
        r"deadline='24h' \(a plan holds at most 40000 slots; this one would need 86400\)",
    ):
        make_trainer(tmp_path, max_steps=2, callbacks=[sched]).fit(BoringModel())
    five_minutes = IntensityTrace(T0 - H, 300.0, tuple([100.0] * (12 * 24 * 201)))
    trace_step = CarbonAwareScheduler(intensity=five_minutes, deadline="200d", clock=sim_clock(), verbose=False)
    with pytest.raises(ValueError, match=r"`slot` must be at least 432.1 s \(None: the trace's own step, 300 s\)"):
        make_trainer(tmp_path, max_steps=2, callbacks=[trace_step]).fit(BoringModel())
    # the minimum as printed is enough (rounded up, not to the nearest)
    fine = CarbonAwareScheduler(intensity=100.0, deadline="24h", slot=2.161, clock=sim_clock(), verbose=False)
    make_trainer(tmp_path, max_steps=2, callbacks=[fine]).fit(BoringModel())
    assert fine.planner is not None and fine.planner.slot_s == 2.161


def test_a_long_pause_starting_late_in_a_slot_is_checkpointed(tmp_path):
    """Steps of 50 min: the pause starts at 01:40 and lasts until the clean 04:00, its first slot only 20 min."""
    clock = sim_clock()
    sched = CarbonAwareScheduler(
        intensity=by_hour({0: 100.0, 4: 100.0}),
        deadline="12h",
        expected_duration="150m",
        checkpoint_after="30m",
        clock=clock,
        verbose=False,
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer = make_trainer(
        tmp_path, max_steps=3, enable_checkpointing=True, callbacks=[StepClock(clock, 50 * 60.0), sched, ckpt]
    )
    trainer.fit(BoringModel())
    assert [(p["step"], p["seconds"]) for p in sched.pauses] == [(2, 140 * 60.0)]
    saved = torch.load(tmp_path / "ckpt" / "last-carbon-pause.ckpt", weights_only=False)
    assert saved["global_step"] == 2


def test_a_run_that_outlives_its_deadline_and_trace_keeps_training(tmp_path):
    """The trace ends at the deadline (enough for setup); the steps take longer than expected."""
    clock = sim_clock()
    trace = IntensityTrace(T0, H, (400.0, 400.0, 100.0, 100.0, 100.0, 100.0))
    sched = CarbonAwareScheduler(
        intensity=trace, deadline="6h", expected_duration="1h", checkpoint_after=None, clock=clock, verbose=False
    )
    trainer = make_trainer(tmp_path, max_steps=20, callbacks=[StepClock(clock, 0.5 * H), sched])
    trainer.fit(BoringModel())
    assert trainer.global_step == 20
    assert clock() - T0 == 2 * H + 20 * 0.5 * H  # paused in the 2 dirty hours, then ran to the end


def test_energy_monitor_coverage_error_names_its_own_argument(tmp_path):
    clock = SimClock(START.timestamp() + 30 * 24 * H)  # after the two-week excerpt
    mon = EnergyMonitor(carbon_intensity=CAISO, clock=clock, print_summary=False)
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[mon])
    with pytest.raises(ValueError, match=r"EnergyMonitor\(carbon_intensity=.*, or carbon_extend='repeat-last-week'"):
        trainer.fit(BoringModel())


@pytest.mark.parametrize(
    ("name", "extend_name", "expected"),
    [
        ("carbon_intensity", None, "carbon_extend"),
        ("intensity", None, "extend"),
        ("source", None, "extend"),
        ("intensity", "stretch", "stretch"),
    ],
)
def test_ensure_covers_names_the_callers_extend_argument(name, extend_name, expected):
    tr = IntensityTrace(0.0, H, (1.0,) * 24)
    with pytest.raises(ValueError, match=rf"X\({name}='trace'\): .* or {expected}='repeat-last-week' to repeat"):
        ensure_covers(tr, 0.0, 2 * tr.end_s, "X", name, "none", extend_name)
    with pytest.raises(ValueError, match=rf"X\({expected}='repeat-last-week'\): .* needs at least a week of data"):
        ensure_covers(tr, 0.0, 2 * tr.end_s, "X", name, "repeat-last-week", extend_name)
