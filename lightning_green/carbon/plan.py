"""Carbon-aware planning: put the remaining compute into the cleanest slots that still finish before a deadline.

No Lightning import. :class:`CarbonPlanner` is what :class:`~lightning_green.CarbonAwareScheduler` and
``benchmarks/carbon_aware.py`` both call: given the time now and the remaining compute, it plans and says whether
to run now or how long to pause. Slots follow the intensity trace's own grid (its start and its step, at most an
hour), so a job can start at the trace's cleanest interval; other sources are planned in UTC hours.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from lightning_green._internal.validation import InvalidArgumentError, check_number, fail
from lightning_green.carbon.trace import IntensityTrace, _iso

__all__ = [
    "FORECASTS",
    "MAX_DEADLINE_S",
    "MAX_PLAN_SLOTS",
    "slots_needed",
    "PERSISTENCE_DAYS",
    "history_needed_s",
    "is_date_time",
    "slot_grid",
    "CarbonPlanner",
    "Decision",
    "Forecast",
    "Plan",
    "make_plan",
    "parse_deadline",
    "parse_duration",
]

Forecast = Literal["trace", "persistence", "persistence-week"]
FORECASTS = ("trace", "persistence", "persistence-week")
DAY_S = 86400.0
HOUR_S = 3600.0
PERSISTENCE_DAYS = 7
"""Past days the ``"persistence-week"`` forecast averages by default (the trace must reach that far back)."""
TREND_H = 3
"""Hours over which ``"persistence"`` measures how today's intensity moves against yesterday's."""
MAX_DEADLINE_S = 366 * DAY_S
"""Farthest a deadline may lie after the start: 366 days.

Intensity data reaches no further: forecasts (Electricity Maps') cover hours to days ahead, and a trace replayed as a
forecast covers a year at most (the bundled ones are calendar years, 2020 a leap year: 366 days); beyond that a plan
would only repeat a trace's last week. A job that may wait longer than a year for clean hours is not scheduled by the
grid's daily and weekly cycles, and every decision plans each slot up to the deadline, so an unbounded deadline costs
unbounded time and memory (and dates past the year 9999 cannot even be printed)."""
MAX_PLAN_SLOTS = 40_000
"""Most slots one plan holds (366 days of 15-minute slots are 35,136); later slots are left out of the plan."""
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
# Seconds as text, as the command line passes a number: plain ASCII digits, a decimal point and an exponent only.
_SECONDS = re.compile(r"^\s*(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$", re.ASCII)
_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*"
    r"(?:(\d+(?:\.\d+)?)\s*s)?\s*$",
    re.ASCII,
)


def parse_duration(value: Any, owner: str, name: str) -> float:
    """Seconds from a number of seconds or a text like ``"8h"``, ``"1d"``, ``"1h30m"``, ``"90s"``.

    Example:
        >>> parse_duration("1h30m", "X", "d"), parse_duration(60, "X", "d")
        (5400.0, 60.0)
    """
    allowed = "a duration: seconds > 0, or text like '8h', '90m', '1d', '1h30m'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            fail(owner, name, value, allowed)
        return float(value)
    if isinstance(value, str):
        if _SECONDS.match(value):  # the command line gives "86400" to a `str | float` argument as text
            seconds = float(value)
            if not (math.isfinite(seconds) and seconds > 0):
                fail(owner, name, value, allowed)
            return seconds
        m = _DURATION.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            total = d * DAY_S + h * 3600 + mi * 60 + s
            if total > 0:
                return total
    fail(owner, name, value, allowed)
    raise AssertionError  # pragma: no cover


def is_date_time(value: Any) -> bool:
    """Whether ``value`` is a deadline given as a date-time (a ``datetime`` or ISO text), not as a duration."""
    return isinstance(value, _dt.datetime) or (isinstance(value, str) and bool(_DATE.match(value.strip())))


def parse_deadline(
    value: Any, start_s: float, owner: str, name: str = "deadline", max_ahead_s: float | None = None
) -> float:
    """POSIX deadline from an ISO date-time (naive = UTC) or a duration from ``start_s``.

    ``max_ahead_s``: refuse a deadline more than this many seconds after ``start_s`` (e.g. :data:`MAX_DEADLINE_S`).

    Example:
        >>> parse_deadline("1970-01-02T00:00", 0.0, "X"), parse_deadline("24h", 0.0, "X")
        (86400.0, 86400.0)
    """
    allowed = "an ISO date-time like '2026-12-01T08:00' or a duration like '24h'"
    if isinstance(value, _dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        deadline_s = when.timestamp()
    elif is_date_time(value):
        try:
            when = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            fail(owner, name, value, allowed)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        deadline_s = when.timestamp()
    else:
        digits = _date_like_digits(value)
        if digits is not None:
            # 20261201: a date without its dashes (ISO's basic form), or 234 days in seconds? Neither is guessed.
            allowed = f"a date with its dashes ('{digits[:4]}-{digits[4:6]}-{digits[6:]}') or seconds with a unit "
            fail(owner, name, value, allowed + f"('{digits}s'); 8 digits that read as a date are ambiguous")
        try:
            deadline_s = start_s + parse_duration(value, owner, name)
        except InvalidArgumentError:
            fail(owner, name, value, allowed)
    if max_ahead_s is not None and deadline_s - start_s > max_ahead_s:
        days = max_ahead_s / DAY_S
        if is_date_time(value):
            ahead = f" ({_iso(start_s)}); it is {(deadline_s - start_s) / DAY_S:.0f} days after it"
        else:
            ahead = f" ('{days:g}d', {max_ahead_s:.0f} s)"
        fail(owner, name, value, f"at most {days:g} days after the start{ahead}")
    return deadline_s


def _date_like_digits(value: Any) -> str | None:
    """The 8 digits of ``value`` (text, or a whole number as YAML gives it) when they read as a date ``YYYYMMDD``.

    Example:
        >>> _date_like_digits("20261201"), _date_like_digits(20261201.0), _date_like_digits("31536000")
        ('20261201', '20261201', None)
    """
    if isinstance(value, str):
        digits = value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value != int(value):
            return None
        digits = str(int(value))
    else:
        return None
    if not re.fullmatch(r"\d{8}", digits, re.ASCII):
        return None
    try:
        _dt.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        return None
    return digits


def _days_back(b: float, now_s: float) -> int:
    """Whole days back from a slot ending at ``b`` to reach times at or before ``now_s`` (at least 1)."""
    return max(1, math.ceil((b - now_s) / DAY_S - 1e-9))


def history_needed_s(forecast: str, persistence_days: int = PERSISTENCE_DAYS) -> float:
    """How far before now a forecast reads the intensity source, seconds.

    Example:
        >>> [history_needed_s(f) / 3600 for f in ("trace", "persistence", "persistence-week")]
        [0.0, 27.0, 168.0]
    """
    if forecast == "persistence":
        return DAY_S + TREND_H * 3600.0
    if forecast == "persistence-week":
        return DAY_S * persistence_days
    return 0.0


def slot_grid(source: Any, slot_s: float | None = None) -> tuple[float, float]:
    """The planning grid of ``source``: ``(origin_s, slot_s)``, slot boundaries at ``origin_s + k × slot_s``.

    A trace is planned on its own grid: slots start where its intervals start (a trace in a zone with a
    half-hour offset starts at :30 UTC) and last one step (15 min for a 15-minute trace), so a job can start at
    the trace's cleanest interval. A step longer than an hour is cut into equal parts of at most an hour, which
    still end on the trace's boundaries. A constant, a callable or an online source has no grid of its own: UTC
    hours. An explicit ``slot_s`` sets the length; a trace's start still sets the origin. ``origin_s`` is reduced
    to ``[0, slot_s)``.

    Example:
        >>> slot_grid(IntensityTrace(1800.0, 900.0, (1.0,) * 8)), slot_grid(42.0)
        ((0.0, 900.0), (0.0, 3600.0))
        >>> slot_grid(IntensityTrace(1800.0, 3600.0, (1.0,) * 8)), slot_grid(IntensityTrace(0.0, 86400.0, (1.0,)))
        ((1800.0, 3600.0), (0.0, 3600.0))
    """
    trace = isinstance(source, IntensityTrace)
    if slot_s is None:
        if not trace:
            return 0.0, HOUR_S
        slot_s = source.step_s / math.ceil(source.step_s / HOUR_S - 1e-9)
    origin = math.fmod(source.start_s, slot_s) if trace else 0.0
    if origin < 0:
        origin += slot_s
    return origin, float(slot_s)


def _next_boundary(t_s: float, slot_s: float, origin_s: float) -> float:
    return origin_s + (math.floor((t_s - origin_s) / slot_s + 1e-9) + 1) * slot_s


@dataclass(frozen=True)
class Plan:
    """Chosen slots (start, end, forecast g/kWh), in time order, and what they were chosen from."""

    created_s: float
    deadline_s: float
    remaining_s: float
    chosen: tuple[tuple[float, float, float], ...]
    slots: tuple[tuple[float, float, float], ...]
    forced: bool

    def runs_at(self, t_s: float) -> bool:
        """Whether ``t_s`` falls in a chosen slot."""
        return self.forced or any(a <= t_s < b for a, b, _ in self.chosen)

    def next_start(self, t_s: float) -> float | None:
        """Start of the next chosen slot after ``t_s`` (``None`` if none)."""
        return next((a for a, _, _ in self.chosen if a > t_s), None)

    def as_dict(self) -> dict[str, Any]:
        """Plain form for logs and the report."""
        return {
            "created": _iso(self.created_s),
            "deadline": _iso(self.deadline_s),
            "remaining_s": self.remaining_s,
            "forced": self.forced,
            "chosen": [[_iso(a), _iso(b), round(v, 3)] for a, b, v in self.chosen],
            "chosen_s": [[a, b] for a, b, _ in self.chosen],
        }


def slots_needed(now_s: float, deadline_s: float, slot_s: float, origin_s: float = 0.0) -> int:
    """How many slots (the first may be partial) from ``now_s`` to the deadline, on the grid ``origin_s + k × slot_s``.

    Example:
        >>> slots_needed(0.0, 7200.0, 3600.0), slots_needed(1800.0, 7200.0, 3600.0), slots_needed(0.5, 4.0, 2.0)
        (2, 2, 2)
    """
    first_end = _next_boundary(now_s, slot_s, origin_s)
    if first_end >= deadline_s - 1e-9:
        return 1 if deadline_s > now_s else 0
    return 1 + math.ceil((deadline_s - first_end) / slot_s - 1e-9)


def _slots(now_s: float, deadline_s: float, slot_s: float, origin_s: float) -> list[tuple[float, float]]:
    """The slots from ``now_s`` to the deadline, at most :data:`MAX_PLAN_SLOTS` of them (the plan's horizon)."""
    out: list[tuple[float, float]] = []
    t = now_s
    while t < deadline_s - 1e-9 and len(out) < MAX_PLAN_SLOTS:
        end = min(_next_boundary(t, slot_s, origin_s), deadline_s)
        out.append((t, end))
        t = end
    return out


def make_plan(
    forecast: Any,
    now_s: float,
    deadline_s: float,
    remaining_s: float,
    slot_s: float = HOUR_S,
    origin_s: float = 0.0,
) -> Plan:
    """Choose the cleanest slots (by ``forecast(t0, t1)``) between now and the deadline holding ``remaining_s``.

    The slots start at ``now_s`` and follow the grid ``origin_s + k × slot_s`` (UTC hours by default; see
    :func:`slot_grid` for a trace's own grid); the first may be partial. If they cannot hold the remaining time
    the plan is ``forced``: run without pausing. The plan looks at most :data:`MAX_PLAN_SLOTS` slots ahead (planning
    and memory stay bounded for any deadline); slots beyond are never chosen, so a plan only ever runs earlier.

    Example:
        >>> f = lambda a, b: {0: 300.0, 1: 100.0, 2: 200.0}[int(a // 3600)]
        >>> p = make_plan(f, 0.0, 3 * 3600.0, 7200.0)
        >>> [int(a) for a, _, _ in p.chosen], p.runs_at(0.0), p.next_start(0.0)
        ([3600, 7200], False, 3600.0)
    """
    slots = [(a, b, float(forecast(a, b))) for a, b in _slots(now_s, deadline_s, slot_s, origin_s)]
    capacity = sum(b - a for a, b, _ in slots)
    if remaining_s <= 0:
        return Plan(now_s, deadline_s, remaining_s, (), tuple(slots), False)
    if capacity <= remaining_s + 1e-6:
        return Plan(now_s, deadline_s, remaining_s, tuple(slots), tuple(slots), True)
    chosen = []
    held = 0.0
    # Cleanest first; among equals, the earliest (finishing early is free insurance).
    for a, b, v in sorted(slots, key=lambda s: (s[2], s[0])):
        chosen.append((a, b, v))
        held += b - a
        if held >= remaining_s - 1e-6:
            break
    return Plan(now_s, deadline_s, remaining_s, tuple(sorted(chosen)), tuple(slots), False)


@dataclass(frozen=True)
class Decision:
    """Run now, or pause for ``pause_s`` seconds (then decide again).

    ``pause_s`` ends at the next slot boundary at the latest, to re-plan there; ``expected_pause_s`` is how long the
    whole pause is expected to last (until the next planned slot, or the last moment that leaves room for the work).
    """

    run: bool
    pause_s: float
    plan: Plan
    intensity_now: float
    expected_pause_s: float = 0.0


class CarbonPlanner:
    """Decide, at a point in time, whether to run or to pause, re-planning every time it is asked.

    Args:
        source: Intensity source (a trace, a callable or a constant) — the actual grid intensity.
        deadline_s: POSIX time by which the work must be done.
        forecast: ``"trace"``: the source's values are the forecast (a forecast file, an online forecast, or a
            replay with perfect knowledge). ``"persistence"``: each future hour is expected to repeat the same hour
            of the previous day, corrected by what today has shown so far: shifted by how far the intensity now is
            from yesterday's at this hour, plus the trend of that difference over the last 3 hours (continued for
            up to 6 hours); the correction fades over ``persistence_tau_h`` hours (default 12). ``"persistence-week"``:
            the mean of the same hour over the previous ``persistence_days`` days, shifted by the intensity now
            (fading over 48 h by default). The current hour is the intensity now; only times up to now are read.
        safety_margin: Never pause once ``remaining × (1 + safety_margin)`` no longer fits before the deadline.
        slot_s: Planning slot, seconds. ``None``: a trace's own grid (its start and its step, at most an hour);
            UTC hours for a constant, a callable or an online source (see :func:`slot_grid`). "The current hour"
            and "the same hours of the previous day" below are slots. The previous day is 24 h earlier (in UTC), also
            across a daylight-saving change.
        persistence_tau_h: Fade-out time of the persistence forecasts' correction, hours (``None``: 12 for
            ``"persistence"``, 48 for ``"persistence-week"``).
        persistence_days: Past days averaged by ``"persistence-week"``.

    Example:
        >>> from lightning_green.carbon.trace import IntensityTrace
        >>> tr = IntensityTrace(0.0, 3600.0, (300.0, 100.0, 200.0, 400.0))
        >>> planner = CarbonPlanner(tr, deadline_s=4 * 3600.0, safety_margin=0.0)
        >>> d = planner.decide(now_s=0.0, remaining_s=3600.0)
        >>> d.run, d.pause_s
        (False, 3600.0)
        >>> planner.decide(now_s=3600.0, remaining_s=3600.0).run
        True
    """

    def __init__(
        self,
        source: Any,
        deadline_s: float,
        forecast: Forecast = "trace",
        safety_margin: float = 0.05,
        slot_s: float | None = None,
        persistence_tau_h: float | None = None,
        persistence_days: int = PERSISTENCE_DAYS,
    ) -> None:
        if forecast not in FORECASTS:
            fail("CarbonPlanner", "forecast", forecast, f"one of {FORECASTS!r}")
        check_number("CarbonPlanner", "deadline_s", deadline_s)
        check_number("CarbonPlanner", "safety_margin", safety_margin, ge=0.0)
        if persistence_tau_h is not None:
            check_number("CarbonPlanner", "persistence_tau_h", persistence_tau_h, ge=0.0)
        check_number("CarbonPlanner", "persistence_days", persistence_days, integer=True, ge=1)
        self.source = source
        self.deadline_s = float(deadline_s)
        self.forecast = forecast
        self.safety_margin = float(safety_margin)
        if slot_s is not None and (
            isinstance(slot_s, bool)
            or not isinstance(slot_s, (int, float))
            or not (math.isfinite(slot_s) and slot_s > 0)
        ):
            fail("CarbonPlanner", "slot_s", slot_s, "None or a number of seconds > 0")
        self.origin_s, self.slot_s = slot_grid(source, slot_s)
        if persistence_tau_h is None:
            persistence_tau_h = 12.0 if forecast == "persistence" else 48.0
        self.tau_s = float(persistence_tau_h) * 3600.0
        self.days = int(persistence_days)

    def next_boundary(self, t_s: float) -> float:
        """End of the slot holding ``t_s`` (a time on a boundary starts a slot)."""
        return _next_boundary(t_s, self.slot_s, self.origin_s)

    def _forecast_fn(self, now_s: float) -> Any:
        src = self.source
        now_value = src.mean(now_s, now_s)
        if self.forecast == "trace":

            def perfect(a: float, b: float) -> float:
                return src.mean(a, b)

            return perfect
        current_end = self.next_boundary(now_s)
        if self.forecast == "persistence":
            return self._yesterday(now_s, now_value, current_end)
        days = range(1, self.days + 1)

        def past(a: float, b: float) -> float:
            k = _days_back(b, now_s) - 1  # never read after now: a slot more than a day ahead looks further back
            return sum(src.mean(a - (d + k) * DAY_S, b - (d + k) * DAY_S) for d in days) / self.days

        shift = now_value - past(now_s, now_s)

        def persistence_week(a: float, b: float) -> float:
            if a < current_end:
                return now_value  # the current hour: what the grid shows now
            fade = math.exp(-(a - now_s) / self.tau_s) if self.tau_s > 0 else 0.0
            return past(a, b) + shift * fade

        return persistence_week

    def _yesterday(self, now_s: float, now_value: float, current_end: float) -> Any:
        """Yesterday's same hours, corrected by today's level and trend against yesterday (all read up to now)."""
        src = self.source

        def yesterday(a: float, b: float) -> float:
            back = _days_back(b, now_s) * DAY_S  # the latest day whose same hours are all past
            return src.mean(a - back, b - back)

        def gap(t: float) -> float:  # how far today is from yesterday at t (t <= now)
            return src.mean(t, t) - src.mean(t - DAY_S, t - DAY_S)

        shift = now_value - yesterday(now_s, now_s)
        # A ramp that started in the last hours (wind picking up, a front passing) tends to go on for a while.
        trend_per_h = (shift - gap(now_s - TREND_H * 3600.0)) / TREND_H

        def persistence(a: float, b: float) -> float:
            if a < current_end:
                return now_value
            lead_h = (a - now_s) / 3600.0
            fade = math.exp(-(a - now_s) / self.tau_s) if self.tau_s > 0 else 0.0
            return yesterday(a, b) + (shift + trend_per_h * min(lead_h, 2 * TREND_H)) * fade

        return persistence

    def plan(self, now_s: float, remaining_s: float) -> Plan:
        """A plan for ``remaining_s`` of compute from ``now_s``."""
        return make_plan(self._forecast_fn(now_s), now_s, self.deadline_s, remaining_s, self.slot_s, self.origin_s)

    def decide(self, now_s: float, remaining_s: float) -> Decision:
        """Run now, or pause until the next planned slot (at most until the next slot boundary, to re-plan)."""
        plan = self.plan(now_s, remaining_s)
        intensity = self.source.mean(now_s, now_s)
        no_slack = remaining_s * (1.0 + self.safety_margin) >= self.deadline_s - now_s
        if remaining_s <= 0 or plan.runs_at(now_s) or no_slack:
            return Decision(True, 0.0, plan, intensity)
        boundary = self.next_boundary(now_s)
        nxt = plan.next_start(now_s)
        until = min(boundary, nxt) if nxt is not None else boundary
        # Never pause past the last moment that still leaves room for the work (with the margin).
        latest = max(self.deadline_s - remaining_s * (1.0 + self.safety_margin), now_s)
        until = min(until, latest)
        if until <= now_s:
            return Decision(True, 0.0, plan, intensity)
        resume = min(nxt, latest) if nxt is not None else latest
        return Decision(False, until - now_s, plan, intensity, max(resume, until) - now_s)
