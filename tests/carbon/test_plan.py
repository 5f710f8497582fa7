"""Planning: feasibility (never past the deadline), the no-slack rule, deadline/duration parsing."""

from __future__ import annotations

import math
import random

import pytest

from lightning_green.carbon import CarbonPlanner, IntensityTrace, make_plan, parse_deadline, parse_duration
from lightning_green.carbon.plan import MAX_DEADLINE_S, MAX_PLAN_SLOTS

H = 3600.0


def random_trace(seed: int, hours: int = 24 * 10) -> IntensityTrace:
    rng = random.Random(seed)
    return IntensityTrace(0.0, H, tuple(rng.uniform(50, 500) for _ in range(hours)))


@pytest.mark.parametrize("seed", range(5))
def test_plan_is_feasible_and_cleanest(seed):
    tr = random_trace(seed)
    rng = random.Random(seed)
    now = rng.uniform(0, 48) * H
    deadline = now + rng.uniform(6, 30) * H
    remaining = rng.uniform(0.5, 0.9) * (deadline - now)
    plan = make_plan(tr.mean, now, deadline, remaining)
    assert not plan.forced
    assert all(now <= a < b <= deadline for a, b, _ in plan.chosen)
    assert sum(b - a for a, b, _ in plan.chosen) >= remaining - 1e-6
    # every slot left out is at least as dirty as every slot chosen
    left_out = set(plan.slots) - set(plan.chosen)
    assert max(v for _, _, v in plan.chosen) <= min((v for _, _, v in left_out), default=float("inf"))


def test_plan_is_forced_when_the_work_no_longer_fits():
    tr = random_trace(0)
    plan = make_plan(tr.mean, 0.0, 5 * H, 6 * H)
    assert plan.forced and plan.runs_at(0.0)


@pytest.mark.parametrize("forecast", ["trace", "persistence", "persistence-week"])
@pytest.mark.parametrize("seed", range(3))
def test_replayed_jobs_never_miss_the_deadline(forecast, seed):
    """Decide, run or pause, as the scheduler does, for jobs of 8 h with a 24 h deadline at several starts."""
    tr = random_trace(seed)
    for start_h in range(24 * 7, 24 * 7 + 48, 7):
        start = start_h * H + 600.0  # not on the hour
        planner = CarbonPlanner(tr, start + 24 * H, forecast=forecast, safety_margin=0.05)
        t, done = start, 0.0
        while done < 8 * H - 1e-6:
            d = planner.decide(t, 8 * H - done)
            if d.run:
                t1 = min((t // H + 1) * H, t + 8 * H - done)
                done += t1 - t
                t = t1
            else:
                assert d.pause_s > 0
                t += d.pause_s
        assert t <= start + 24 * H + 1e-6


def test_no_pause_once_the_margin_is_reached():
    tr = IntensityTrace(0.0, H, (500.0,) * 3 + (10.0,) * 21)
    planner = CarbonPlanner(tr, 10 * H, safety_margin=0.1)
    # 9.2 h of work * 1.1 > 10 h left: must run now, although the clean hours come later
    assert planner.decide(0.0, 9.2 * H).run
    d = planner.decide(0.0, 5 * H)
    assert not d.run and d.pause_s == H


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("eight hours", r"X\(d='eight hours'\): `d` must be a duration"),
        (0, r"X\(d=0\): `d` must be a duration"),
        (-5.0, r"X\(d=-5.0\)"),
        (True, r"X\(d=True\)"),
    ],
)
def test_bad_durations(value, match):
    with pytest.raises(ValueError, match=match):
        parse_duration(value, "X", "d")


def test_deadlines():
    assert parse_deadline("2022-01-01T08:00", 0.0, "X") == pytest.approx(1641024000.0)
    assert parse_deadline("2022-01-01T09:00+01:00", 0.0, "X") == pytest.approx(1641024000.0)
    assert parse_deadline("1d2h", 100.0, "X") == 100.0 + 26 * H
    with pytest.raises(ValueError, match=r"X\(deadline='2022-13-45'\): `deadline` must be an ISO date-time"):
        parse_deadline("2022-13-45", 0.0, "X")
    with pytest.raises(ValueError, match=r"X\(deadline='soon'\): `deadline` must be an ISO date-time"):
        parse_deadline("soon", 0.0, "X")


@pytest.mark.parametrize(("text", "seconds"), [("86400", 86400.0), ("1e5", 1e5), (" 90.5 ", 90.5)])
def test_seconds_given_as_text_are_a_duration(text, seconds):
    # the command line gives a number to a `str | float` argument (`deadline`) as text
    assert parse_duration(text, "X", "d") == seconds
    assert parse_deadline(text, 100.0, "X") == 100.0 + seconds


@pytest.mark.parametrize("text", ["nan", "inf", "-5", "0", "1_000", "+60", "\u0663\u0660", "\u0663\u0660h", "0x10"])
def test_seconds_as_text_must_be_finite_and_positive(text):
    with pytest.raises(ValueError, match=r"`d` must be a duration: seconds > 0"):
        parse_duration(text, "X", "d")


def test_eight_digits_alone_are_an_ambiguous_deadline():
    # ISO's basic date form, or 234 days in seconds: neither is guessed.
    with pytest.raises(
        ValueError, match=r"deadline='20261201'\): `deadline` must be a date with its dashes \('2026-12-01'\)"
    ):
        parse_deadline("20261201", 0.0, "X")
    with pytest.raises(ValueError, match=r"`deadline` must be a date with its dashes \('2026-12-01'\)"):
        parse_deadline(20261201.0, 0.0, "X")  # YAML's `deadline: 20261201` arrives as a number
    assert parse_deadline("20261201s", 0.0, "X") == 20261201.0
    assert parse_deadline("31536000", 0.0, "X") == parse_deadline(31536000, 0.0, "X") == 31536000.0  # not a date
    assert parse_duration("20261201", "X", "expected_duration") == 20261201.0  # a duration is never a date


@pytest.mark.parametrize("value", [1e20, "1e20", 1e308, "367d", MAX_DEADLINE_S + 1])
def test_a_duration_deadline_beyond_366_days_is_refused(value):
    with pytest.raises(
        ValueError, match=r"`deadline` must be at most 366 days after the start \('366d', 31622400 s\)\.$"
    ):
        parse_deadline(value, 0.0, "X", max_ahead_s=MAX_DEADLINE_S)


def test_a_date_time_deadline_beyond_366_days_of_the_start_is_refused():
    start = parse_deadline("2022-06-01T00:00", 0.0, "X")
    assert parse_deadline("2023-06-02T00:00", start, "X", max_ahead_s=MAX_DEADLINE_S) == start + 366 * 24 * H
    with pytest.raises(
        ValueError,
        match=r"X\(deadline='2023-06-03T00:00'\): `deadline` must be at most 366 days after the start "
        r"\(2022-06-01T00:00\+00:00\); it is 367 days after it\.$",
    ):
        parse_deadline("2023-06-03T00:00", start, "X", max_ahead_s=MAX_DEADLINE_S)


def test_a_plan_looks_a_bounded_number_of_slots_ahead():
    """However far the deadline (here ~5.7 years of hours), one plan holds at most MAX_PLAN_SLOTS slots."""
    plan = make_plan(lambda a, b: 100.0 if a < 10 * H else 50.0, 0.0, 50_000 * H, 4 * H)
    assert len(plan.slots) == MAX_PLAN_SLOTS and plan.slots[-1][1] == MAX_PLAN_SLOTS * H
    assert not plan.forced and [a for a, _, _ in plan.chosen] == [10 * H, 11 * H, 12 * H, 13 * H]
    # remaining time the horizon cannot hold: run now (never a pause the plan cannot account for)
    assert make_plan(lambda a, b: 1.0, 0.0, 50_000 * H, (MAX_PLAN_SLOTS + 1) * H).forced


class PastOnly:
    """A trace that fails the test if anything after ``now`` is read (the persistence forecasts must not peek)."""

    def __init__(self, trace: IntensityTrace, now: float) -> None:
        self.trace, self.now = trace, now

    def mean(self, t0: float, t1: float) -> float:
        assert t1 <= self.now + 1e-6, f"read {t1 - self.now:.0f} s after now"
        return self.trace.mean(t0, t1)


@pytest.mark.parametrize("forecast", ["persistence", "persistence-week"])
@pytest.mark.parametrize("deadline_h", [5, 24, 60])
def test_persistence_forecasts_read_only_the_past(forecast, deadline_h):
    tr = random_trace(7)
    now = 8 * 24 * H + 1234.0
    planner = CarbonPlanner(PastOnly(tr, now), now + deadline_h * H, forecast=forecast)
    plan = planner.plan(now, 3 * H)
    assert plan.slots[-1][1] == pytest.approx(now + deadline_h * H) and len(plan.chosen) >= 3


def test_persistence_is_yesterdays_hours_shifted_by_today_and_its_trend():
    # yesterday: 300 except a clean 14:00 (100); today 100 dirtier so far, and the gap grew 30 g/kWh per hour
    # over the last 3 hours (06:00..09:00)
    yesterday = [300.0] * 24
    yesterday[14] = 100.0
    today = [400.0] * 6 + [430.0, 460.0, 490.0, 520.0]
    tr = IntensityTrace(0.0, H, tuple(yesterday + today))
    now = (24 + 9) * H  # 09:00 today
    planner = CarbonPlanner(tr, now + 12 * H, forecast="persistence", safety_margin=0.0)
    plan = planner.plan(now, 1 * H)
    assert [a for a, _, _ in plan.chosen] == [(24 + 14) * H]  # yesterday's clean hour, today
    values = {round(a / H) - 24: v for a, _, v in plan.slots}
    assert values[9] == 520.0  # the current hour is what the grid shows now
    shift, trend = 220.0, 30.0
    for h in (10, 12, 14, 20):
        lead = h - 9
        fade = math.exp(-lead / 12.0)
        assert values[h] == pytest.approx(yesterday[h] + (shift + trend * min(lead, 6)) * fade)


def test_persistence_week_averages_the_week():
    week = [[200.0 + 10 * d] * 24 for d in range(7)]
    tr = IntensityTrace(0.0, H, tuple(v for day in week for v in day) + (235.0,) * 24)
    now = 7 * 24 * H
    slots = CarbonPlanner(tr, now + 6 * H, forecast="persistence-week", persistence_tau_h=0).plan(now, H).slots
    assert slots[0][2] == 235.0 and all(v == pytest.approx(230.0) for _, _, v in slots[1:])


def test_slots_needed_counts_the_partial_first_slot_as_the_plan_does():
    from lightning_green.carbon.plan import _slots, slots_needed

    for now, deadline, slot, origin in [(0.5, 80_000.0, 2.0, 0.0), (0.0, 10.0, 2.0, 0.0), (3.0, 3.5, 2.0, 1.0)]:
        assert slots_needed(now, deadline, slot, origin) == len(_slots(now, deadline, slot, origin))
    # 40,000 × 2 s starting half a second off the grid is 40,001 slots: the last half second would be left out
    assert slots_needed(0.5, 0.5 + MAX_PLAN_SLOTS * 2.0, 2.0) == MAX_PLAN_SLOTS + 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"deadline_s": math.nan}, r"CarbonPlanner\(deadline_s=nan\): `deadline_s` must be a number that is finite"),
        ({"safety_margin": -1}, r"CarbonPlanner\(safety_margin=-1\): `safety_margin` must be a number >= 0"),
        (
            {"persistence_tau_h": -1},
            r"CarbonPlanner\(persistence_tau_h=-1\): `persistence_tau_h` must be a number >= 0",
        ),
        ({"persistence_days": 0}, r"CarbonPlanner\(persistence_days=0\): `persistence_days` must be an int >= 1"),
    ],
)
def test_planner_bad_arguments(kwargs, match):
    args = {"deadline_s": 10 * H, **kwargs}
    with pytest.raises(ValueError, match=match):
        CarbonPlanner(random_trace(0), **args)
