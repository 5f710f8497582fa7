"""Planning slots follow the trace's own grid (its start and its step), so a job can run in its cleanest interval;
UTC-hour-aligned hourly traces, numbers and callables keep the hourly plan."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from lightning_green.carbon import CallableIntensity, CarbonPlanner, ConstantIntensity, IntensityTrace
from lightning_green.carbon.plan import slot_grid

H = 3600.0
KOLKATA_MIDNIGHT = dt.datetime(2022, 5, 31, 18, 30, tzinfo=dt.timezone.utc).timestamp()  # 2022-06-01 00:00 IST


def replay(planner: CarbonPlanner, trace: IntensityTrace, now: float, work_s: float, tick_s: float = 60.0) -> float:
    """Run ``work_s`` of compute as the planner says, a tick at a time; the mean intensity it ran at."""
    t, done, gram_s = now, 0.0, 0.0
    while done < work_s - 1e-6:
        d = planner.decide(t, work_s - done)
        if d.run:
            t1 = min(t + tick_s, t + work_s - done)
            gram_s += trace.mean(t, t1) * (t1 - t)
            done += t1 - t
            t = t1
        else:
            assert d.pause_s > 0
            t += d.pause_s
    return gram_s / work_s


def kolkata_trace(days: int) -> IntensityTrace:
    """Hourly in India's time (hours start at :30 UTC): 400 g/kWh, but 100 from 10:00 to 11:00 IST every day."""
    values = [100.0 if h % 24 == 10 else 400.0 for h in range(24 * days)]
    return IntensityTrace(KOLKATA_MIDNIGHT, H, tuple(values))


@pytest.mark.parametrize("forecast", ["trace", "persistence", "persistence-week"])
def test_an_hourly_trace_on_half_hours_is_planned_on_its_own_hours(forecast):
    tr = kolkata_trace(days=10)
    now = KOLKATA_MIDNIGHT + 8 * 24 * H + 1.5 * H  # 01:30 IST on day 9, with a week of history
    planner = CarbonPlanner(tr, now + 20 * H, forecast=forecast, safety_margin=0.0)
    chosen = planner.plan(now, H).chosen
    assert [(a - KOLKATA_MIDNIGHT) % (24 * H) for a, _, _ in chosen] == [10 * H]
    assert replay(planner, tr, now, H) == pytest.approx(100.0)


def test_a_quarter_hour_trace_is_planned_by_quarter_hours():
    values = [200.0] * 96
    values[40] = 0.0  # 10:00-10:15 is clean
    values[60:64] = [150.0] * 4  # the cleanest whole hour is 15:00-16:00
    tr = IntensityTrace(0.0, 900.0, tuple(values))
    planner = CarbonPlanner(tr, 24 * H, safety_margin=0.0)
    d = planner.decide(0.0, 900.0)
    assert (d.run, d.pause_s, d.plan.chosen) == (False, 900.0, ((10 * H, 10.25 * H, 0.0),))
    assert replay(planner, tr, 0.0, 900.0) == 0.0


def test_an_explicit_slot_length_is_aligned_on_the_trace():
    tr = kolkata_trace(days=2)
    planner = CarbonPlanner(tr, KOLKATA_MIDNIGHT + 24 * H, slot_s=2 * H)
    assert (planner.origin_s, planner.slot_s) == (1800.0, 2 * H)
    assert planner.next_boundary(KOLKATA_MIDNIGHT + 0.5 * H) == KOLKATA_MIDNIGHT + 2 * H


@pytest.mark.parametrize(
    ("source", "grid"),
    [
        (ConstantIntensity(56.0), (0.0, H)),
        (CallableIntensity(lambda when: 100.0), (0.0, H)),
        (IntensityTrace(900.0, 300.0, (1.0,) * 12), (0.0, 300.0)),
        (IntensityTrace(1800.0, H, (1.0,) * 12), (1800.0, H)),
        (IntensityTrace(-1800.0, H, (1.0,) * 12), (1800.0, H)),
        (IntensityTrace(0.0, 3 * H, (1.0,) * 12), (0.0, H)),  # coarser than an hour: cut into hours
        (IntensityTrace(0.0, 5400.0, (1.0,) * 12), (0.0, 2700.0)),  # into equal parts on its own boundaries
    ],
)
def test_slot_grid_of_each_source(source, grid):
    assert slot_grid(source) == grid


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("forecast", ["trace", "persistence", "persistence-week"])
def test_utc_hourly_traces_plan_as_before(seed, forecast):
    """A trace on UTC hours gets the UTC-hour plan (what every hourly trace got before slots followed the grid)."""
    rng = random.Random(seed)
    start = dt.datetime(2022, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    tr = IntensityTrace(start, H, tuple(rng.uniform(50, 500) for _ in range(24 * 10)))
    now = start + 8 * 24 * H + rng.uniform(0, 24) * H
    planner = CarbonPlanner(tr, now + 24 * H, forecast=forecast, safety_margin=0.05)
    assert (planner.origin_s, planner.slot_s) == (0.0, H)
    slots = planner.plan(now, 8 * H).slots
    assert slots[0][0] == now and slots[-1][1] == now + 24 * H
    assert [a for a, _, _ in slots[1:]] == [(now // H + k) * H for k in range(1, len(slots))]


@pytest.mark.parametrize("slot_s", [0, -H, float("nan"), "1h", True])
def test_a_bad_slot_is_refused(slot_s):
    with pytest.raises((ValueError, TypeError), match=r"CarbonPlanner\(slot_s=.*\): `slot_s` must be None or a number"):
        CarbonPlanner(ConstantIntensity(1.0), H, slot_s=slot_s)
