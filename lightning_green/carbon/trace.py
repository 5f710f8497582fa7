"""Grid carbon-intensity traces: CSV parsing with explicit units, time-weighted means, coverage and extension.

No Lightning import and no network. Times are POSIX seconds (UTC) inside; the public readers take datetimes and
time-zone names. A trace is a step function on a regular grid: the value at ``times_s[i]`` holds until the next
grid point (an hourly average holds for its hour).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lightning_green._internal.validation import InvalidArgumentError, fail

__all__ = ["UNITS", "CSVTrace", "IntensityTrace", "check_timezone", "header_unit", "read_trace", "to_seconds"]

WEEK_S = 7 * 86400.0

UNITS: dict[str, float] = {
    "g/kWh": 1.0,
    "kg/MWh": 1.0,
    "kg/kWh": 1000.0,
    "t/MWh": 1000.0,
    "g/MWh": 0.001,
    "lbs/MWh": 453.59237 / 1000.0,
    "lbs/kWh": 453.59237,
}
"""Units a trace may be given in, with the factor to gCO2e/kWh. Converted only when named explicitly."""

# Column names of the supported formats, most specific first (compared case-insensitively).
_TIME_COLUMNS = ("datetime (utc)", "datetime_utc", "datetime", "timestamp", "time", "from", "date")
_VALUE_COLUMNS = (
    "avg_ci",  # EIA exports of HewlettPackard/dc-rl (shared/data/carbon/us_*)
    "carbon intensity",  # dos-group/lets-wait-awhile (shared/data/carbon/de_*)
    "carbon intensity gco₂eq/kwh (life cycle)",  # Electricity Maps data portal export (current)
    "carbon intensity gco2eq/kwh (life cycle)",
    "carbon intensity gco₂eq/kwh (lca)",  # Electricity Maps data portal export (older)
    "carbon intensity gco2eq/kwh (lca)",
    "carbon_intensity_avg",  # older Electricity Maps export
    "carbon_intensity",
    "actual",  # UK Carbon Intensity API (from, to, forecast, actual, index)
    "actual carbon intensity (gco2/kwh)",  # UK Carbon Intensity download
    "intensity",
    "ci",
)
# A unit in a column header: "gCO₂eq/kWh", "lbs CO2/MWh", "intensity (kg/kWh)", "co2_g_per_kwh", "kg_per_kwh".
# "kg CO2/kWh", "gCO₂eq/kWh", "lbs CO2-eq/MWh", "co2_e_per_kwh": the gas and its "-eq"/"e" may be written with a
# space, "_" or "-" between; a suffix after such a separator starts with "e", so "co2_per_kwh" still reads per.
# Spelled out: "grams CO2e per kWh", "kilograms", "pounds", "tonnes" (not "tons": short or metric is not said).
_UNIT_IN_HEADER = re.compile(
    r"(?<![a-z])(kilograms?|grams?|pounds?|tonnes?|k?g|lbs?|t)(?:[\s_-]*co[2₂](?:[\s_-]?e[a-z]*|[a-z]*))?[\s_-]*"
    r"(?:/|per)[\s_-]*(k|m)wh(?![a-z])",
    re.IGNORECASE,
)
# The word before "[CO2] per kWh" / "/MWh" in a header: a mass _UNIT_IN_HEADER does not read ("ounces CO2/kWh",
# "tons per MWh") is refused until `unit=` names it; a word in _NOT_A_MASS ("intensity_per_kwh") names no unit.
_WORD_PER_ENERGY = re.compile(
    r"([a-z]+)[\s_-]*(?:co[2₂][a-z]*[\s_-]*)?(?:/|(?<![a-z])per)[\s_-]*(?:k|m)wh(?![a-z])", re.IGNORECASE
)
_NOT_A_MASS = {"intensity", "carbon", "ci", "emission", "emissions", "factor", "avg", "average", "mean", "value"}
# Life-cycle (LCA) intensity, as Electricity Maps names it: "(LCA)", "(Life cycle)", "life-cycle", "lifecycle".
_LIFE_CYCLE = re.compile(r"lca|life[\s_-]*cycle", re.IGNORECASE)
# A time column whose header says its times are UTC ("Datetime (UTC)", "datetime_utc").
_UTC_IN_HEADER = re.compile(r"(?<![a-z])utc(?![a-z])", re.IGNORECASE)
_LOOKS_LIKE_KG_BELOW = 1.5  # g/kWh of real grids: ~10-1200; every value below this is far likelier kg/kWh
_OWNER = "read_trace"


def check_timezone(owner: str, name: str, value: object) -> str:
    """Return ``value`` if it is an IANA time-zone name; else raise naming ``owner(name=value)``.

    Example:
        >>> check_timezone("X", "timezone", "Europe/Berlin")
        'Europe/Berlin'
    """
    try:
        ZoneInfo(value)  # type: ignore[arg-type]
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        fail(owner, name, value, "an IANA time-zone name such as 'UTC' or 'Europe/Berlin'")
    return value  # type: ignore[return-value]


def to_seconds(when: _dt.datetime | float) -> float:
    """POSIX seconds of ``when``; a naive datetime is taken as UTC.

    Example:
        >>> to_seconds(_dt.datetime(1970, 1, 2))
        86400.0
    """
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        return when.timestamp()
    return float(when)


def _iso(t_s: float) -> str:
    """``t_s`` as an ISO date-time in UTC; a time no date-time can hold (past the year 9999, NaN) as seconds."""
    try:
        return _dt.datetime.fromtimestamp(t_s, _dt.timezone.utc).isoformat(timespec="minutes")
    except (ValueError, OverflowError, OSError):  # a report or message must not fail on the time it shows
        return f"{t_s:.6g} s (POSIX)"


@dataclass(frozen=True)
class IntensityTrace:
    """Carbon intensity (gCO2e/kWh) on a regular time grid.

    Args:
        start_s: POSIX time of the first value.
        step_s: Grid step, seconds.
        values: One value per step, gCO2e/kWh (finite, >= 0).
        source: Where it came from (a path, ``"extended: ..."``), for the report.

    Example:
        >>> tr = IntensityTrace(start_s=0.0, step_s=3600.0, values=(100.0, 300.0))
        >>> tr.at(1800.0), tr.mean(1800.0, 5400.0), tr.end_s
        (100.0, 200.0, 7200.0)
    """

    start_s: float
    step_s: float
    values: tuple[float, ...]
    source: str = "trace"
    _cum: list[float] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.values:
            raise InvalidArgumentError(f"IntensityTrace(source={self.source!r}): the trace has no values.")
        if not (self.step_s > 0 and math.isfinite(self.step_s)):
            raise InvalidArgumentError(f"IntensityTrace(step_s={self.step_s!r}): `step_s` must be > 0.")
        bad = next((v for v in self.values if not (math.isfinite(v) and v >= 0)), None)
        if bad is not None:
            raise InvalidArgumentError(
                f"IntensityTrace(source={self.source!r}): intensity {bad!r} is not allowed; values must be finite "
                "and >= 0 gCO2e/kWh."
            )
        cum = [0.0]
        for v in self.values:
            cum.append(cum[-1] + v * self.step_s)
        object.__setattr__(self, "_cum", cum)

    @property
    def end_s(self) -> float:
        """POSIX time where the trace stops (end of its last step)."""
        return self.start_s + len(self.values) * self.step_s

    def covers(self, t0_s: float, t1_s: float) -> bool:
        """Whether ``[t0_s, t1_s]`` lies inside the trace."""
        return self.start_s <= t0_s and t1_s <= self.end_s

    def _check(self, t0_s: float, t1_s: float) -> None:
        if not self.covers(t0_s, t1_s):
            raise InvalidArgumentError(
                f"IntensityTrace(source={self.source!r}): the time {_iso(t0_s)} .. {_iso(t1_s)} is outside the "
                f"trace ({_iso(self.start_s)} .. {_iso(self.end_s)}); it is never extrapolated silently. Use a trace "
                "that covers it, or extend it explicitly (IntensityTrace.extended; in the callbacks "
                "CarbonAwareScheduler(extend=...), EnergyMonitor(carbon_extend=...))."
            )

    def at(self, t_s: float) -> float:
        """Intensity at POSIX time ``t_s`` (the value of the step holding it)."""
        self._check(t_s, t_s)
        i = min(int((t_s - self.start_s) // self.step_s), len(self.values) - 1)
        return self.values[i]

    def _integral(self, t_s: float) -> float:
        x = (t_s - self.start_s) / self.step_s
        i = min(int(x), len(self.values) - 1)
        return self._cum[i] + (x - i) * self.step_s * self.values[i]

    def mean(self, t0_s: float, t1_s: float) -> float:
        """Time-weighted mean intensity over ``[t0_s, t1_s]`` (the value at ``t0_s`` for an empty span)."""
        if t1_s <= t0_s:
            return self.at(t0_s)
        self._check(t0_s, t1_s)
        return (self._integral(t1_s) - self._integral(t0_s)) / (t1_s - t0_s)

    def extended(self, until_s: float) -> IntensityTrace:
        """A copy that reaches ``until_s`` by repeating the trace's last week (as many times as needed).

        Raises:
            ValueError: The trace is shorter than a week.
        """
        if until_s <= self.end_s:
            return self
        per_week = round(WEEK_S / self.step_s)
        if not self.has_a_week:
            raise InvalidArgumentError(
                f"IntensityTrace(source={self.source!r}): repeating the last week needs at least a week of data; "
                f"the trace spans {len(self.values) * self.step_s / 3600:.1f} h."
            )
        week = self.values[-per_week:]
        missing = math.ceil((until_s - self.end_s) / self.step_s)
        extra = tuple(week[i % per_week] for i in range(missing))
        return IntensityTrace(self.start_s, self.step_s, self.values + extra, f"{self.source} (last week repeated)")

    def held(self, until_s: float) -> IntensityTrace:
        """A copy that reaches ``until_s`` by holding the trace's last value (for traces too short to repeat a week).

        Example:
            >>> IntensityTrace(0.0, 3600.0, (100.0, 300.0)).held(4 * 3600.0).values
            (100.0, 300.0, 300.0, 300.0)
        """
        if until_s <= self.end_s:
            return self
        missing = math.ceil((until_s - self.end_s) / self.step_s)
        return IntensityTrace(
            self.start_s, self.step_s, self.values + (self.values[-1],) * missing, f"{self.source} (last value held)"
        )

    @property
    def has_a_week(self) -> bool:
        """Whether the trace holds a full week, so that :meth:`extended` can repeat it."""
        return len(self.values) >= round(WEEK_S / self.step_s)

    def hourly(self) -> IntensityTrace:
        """Hourly means (for traces finer than an hour whose start is on the hour); hourly traces are returned as is."""
        if self.step_s >= 3600.0:
            return self
        n = int((self.end_s - self.start_s) // 3600.0)
        vals = tuple(self.mean(self.start_s + h * 3600.0, self.start_s + (h + 1) * 3600.0) for h in range(n))
        return IntensityTrace(self.start_s, 3600.0, vals, self.source)

    def describe(self) -> dict[str, object]:
        """Plain-dict form for reports."""
        return {
            "kind": "trace",
            "source": self.source,
            "start": _iso(self.start_s),
            "end": _iso(self.end_s),
            "step_s": self.step_s,
        }


def _pick(header: Sequence[str], wanted: str | None, candidates: Sequence[str], arg: str, path: str) -> int:
    lower = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted not in header:
            fail(_OWNER, arg, wanted, f"a column of {path!r} (it has {list(header)!r})")
        return list(header).index(wanted)
    for c in candidates:
        if c in lower:
            return lower.index(c)
    if arg == "value_column":
        # A column that says it is an intensity, or whose header names an intensity unit ("co2_g_per_kwh").
        found = [i for i, h in enumerate(lower) if "intensity" in h or header_unit(h) is not None]
        found.sort(key=lambda i: (_LIFE_CYCLE.search(lower[i]) is None, "forecast" in lower[i]))
        if found:
            return found[0]
    fail(_OWNER, arg, None, f"given: no known column name found in {path!r} (it has {list(header)!r})")
    return -1  # pragma: no cover


def _parse_time(text: str, row: int, path: str) -> _dt.datetime:
    s = text.strip()
    if not s:
        raise InvalidArgumentError(f"read_trace(path={path!r}): row {row} has no timestamp; every row needs one.")
    try:
        return _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgumentError(
            f"read_trace(path={path!r}): row {row} timestamp {s!r} is not an ISO date-time (e.g. 2022-01-01 00:00)."
        ) from None


def _local_seconds(
    when: _dt.datetime,
    tz: _dt.tzinfo,
    previous: tuple[_dt.datetime, int | None] | None,
    row: int,
    path: str,
    zone: str,
) -> tuple[float, int | None]:
    """POSIX seconds of a naive wall-clock time in ``tz``, and its fold if the time is ambiguous (else ``None``).

    At the autumn clock change an hour of wall-clock times happens twice. A file in local time lists it twice, in
    order: a repeated time is the second occurrence (fold 1) when the previous row was an ambiguous time at or after
    it on the wall clock (the clock went back), or was itself a second occurrence. A time the spring change skips
    does not exist in the zone and is refused.
    """
    first, second = when.replace(tzinfo=tz, fold=0), when.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.timestamp(), None
    if _dt.datetime.fromtimestamp(first.timestamp(), tz).replace(tzinfo=None) != when:
        before = (when - _dt.timedelta(hours=3)).replace(tzinfo=tz).tzname()
        after = (when + _dt.timedelta(hours=3)).replace(tzinfo=tz).tzname()
        raise InvalidArgumentError(
            f"read_trace(path={path!r}, timezone={zone!r}): row {row} timestamp {when.isoformat(sep=' ')!r} does not "
            f"exist in {zone} (the clocks skip it when they change from {before} to {after}); timestamps without an "
            "offset are read as wall-clock times of `timezone`. Is the file in another zone (e.g. timezone='UTC')?"
        )
    fold = 0
    if previous is not None and previous[1] is not None and (previous[1] == 1 or when <= previous[0]):
        fold = 1
    return (second if fold else first).timestamp(), fold


def header_unit(header: str) -> str | None:
    """The unit a column header names, a key of :data:`UNITS` or ``"t/kWh"`` (not one); ``None`` if it names none.

    Example:
        >>> header_unit("intensity (kg/kWh)"), header_unit("co2_g_per_kwh"), header_unit("Carbon Intensity lbs CO2/MWh")
        ('kg/kWh', 'g/kWh', 'lbs/MWh')
        >>> header_unit("carbon_intensity") is None
        True
    """
    m = _UNIT_IN_HEADER.search(header)
    if m is None:
        return None
    mass = m.group(1).lower()
    mass = {"kilo": "kg", "gram": "g", "poun": "lbs", "tonn": "t"}.get(mass[:4], mass)
    mass = "lbs" if mass.startswith("lb") else mass
    return f"{mass}/{'kWh' if m.group(2).lower() == 'k' else 'MWh'}"


def unread_mass(header: str) -> str | None:
    """The word a header puts before "[CO2] per kWh/MWh" where it is no mass :func:`header_unit` reads, else ``None``.

    Example:
        >>> unread_mass("intensity (ounces CO2/kWh)"), unread_mass("intensity_per_kwh"), unread_mass("g/kWh")
        ('ounces', None, None)
    """
    if header_unit(header) is not None:
        return None
    m = _WORD_PER_ENERGY.search(header)
    return m.group(1) if m is not None and m.group(1).lower() not in _NOT_A_MASS else None


def _off_grid(times: Sequence[float], step: float) -> float | None:
    """The first of ``times`` that is not on the grid of ``step`` from ``times[0]``; ``None`` if all are."""
    for t in times:
        k = (t - times[0]) / step
        if abs(k - round(k)) > 1e-6:
            return t
    return None


def _grid_step(times: Sequence[float], path: str) -> float:
    """The grid step of strictly increasing ``times`` (at least two), or refuse them as irregular.

    The step between rows that occurs most often (ties: the shorter), when every timestamp lies on its grid. Else
    the shortest step between rows, when every timestamp lies on its grid and most of its grid points are rows of the
    file. So a short trace with as many gaps as regular steps (rows at 0, 3 and 4 h) or more (0, 2, 4, 6, 7 and 8 h)
    is read as a trace with gaps, while a stray row a second off does not turn a long hourly trace into a one-second
    one, nor a row 20 min off (0, 1, 1:20 and 2:20 h) an hourly trace into a 20-min one.
    """
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    counts = Counter(steps)
    common = min(counts, key=lambda s: (-counts[s], s))
    off = _off_grid(times, common)
    if off is None:
        return common
    shortest = min(steps)
    if _off_grid(times, shortest) is None and round((times[-1] - times[0]) / shortest) + 1 < 2 * len(times):
        return shortest
    when = _dt.datetime.fromtimestamp(off, _dt.timezone.utc).isoformat(timespec="seconds")  # a stray second shows
    raise InvalidArgumentError(
        f"read_trace(path={path!r}): timestamp {when} is off the trace's {common:g}-s grid; a trace must be "
        "regular (gaps are allowed)."
    )


def read_trace(
    path: str | os.PathLike[str],
    time_column: str | None = None,
    value_column: str | None = None,
    timezone: str = "UTC",
    unit: str | None = None,
    max_gap_h: float = 24.0,
) -> IntensityTrace:
    r"""Read a carbon-intensity CSV (timestamp + intensity) into an :class:`IntensityTrace`.

    Recognised without options: the files in ``shared/data/carbon`` (``Time``/``Carbon Intensity``;
    ``timestamp``/``avg_CI``), an Electricity Maps export (``Datetime (UTC)`` and the life-cycle column,
    ``Carbon intensity gCO₂eq/kWh (Life cycle)``, in older exports ``... (LCA)``) and a UK Carbon Intensity export
    (``from``/``actual``).

    Rows with an empty intensity and grid points missing from the file are interpolated linearly when the gap is
    at most ``max_gap_h`` hours; anything else that is not a clean time series is refused. The grid step is the most
    common step between rows, or the shortest when most of the grid it makes are rows of the file (a short file with
    many gaps).

    Args:
        path: CSV file with a header row.
        time_column: Timestamp column; ``None`` picks a known name.
        value_column: Intensity column; ``None`` picks a known name.
        timezone: IANA zone of timestamps that carry no offset (``"UTC"``, ``"Europe/Berlin"``): wall-clock times
            there. Not used when the time column's header says UTC (``Datetime (UTC)``, ``datetime_utc``): its
            timestamps are UTC whatever ``timezone`` is. The hour the autumn clock change repeats is listed twice,
            in order (the second time is read as the later one); a time the spring change skips does not exist and
            is refused with its row.
        unit: Unit of the values, one of :data:`UNITS`. ``None``: gCO2e/kWh, unless the column header names
            another unit (``kgCO2/kWh``, ``intensity (kg/kWh)``, ``co2_lbs_per_mwh``, ``g/MWh``) — then it must be
            given explicitly to be converted. Values that are all below 1.5 under a header that names no unit are
            read as g/kWh with a warning that they look like kg/kWh.
        max_gap_h: Longest gap (hours) that is interpolated.

    Raises:
        ValueError: Missing, unsorted, duplicate or off-grid timestamps, a local time that does not exist in
            ``timezone``, negative or NaN intensities, an unknown or implicit non-g/kWh unit, an unknown column or
            time zone, a gap longer than ``max_gap_h``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ci.csv"
        >>> _ = p.write_text("timestamp,avg_CI\n2022-01-01 00:00:00+00:00,100\n2022-01-01 01:00:00+00:00,\n"
        ...                  "2022-01-01 02:00:00+00:00,300\n")
        >>> read_trace(p).values
        (100.0, 200.0, 300.0)
    """
    if not isinstance(path, (str, os.PathLike)):
        fail(_OWNER, "path", path, "the path of a CSV file (str or os.PathLike)", TypeError)
    spath = os.fspath(path)
    if unit is not None and unit not in UNITS:
        fail(_OWNER, "unit", unit, f"one of {tuple(UNITS)!r} (or None for gCO2e/kWh)")
    if isinstance(max_gap_h, bool) or not isinstance(max_gap_h, (int, float)) or not max_gap_h >= 0:
        fail(_OWNER, "max_gap_h", max_gap_h, "a number >= 0")
    try:
        tz: _dt.tzinfo = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        fail(_OWNER, "timezone", timezone, "an IANA time-zone name such as 'UTC' or 'Europe/Berlin'")
    try:
        with open(spath, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        fail(_OWNER, "path", spath, f"a readable CSV file ({err.strerror})")
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        fail(_OWNER, "path", spath, "a CSV with a header row and at least one data row")
    header = rows[0]
    ti = _pick(header, time_column, _TIME_COLUMNS, "time_column", spath)
    vi = _pick(header, value_column, _VALUE_COLUMNS, "value_column", spath)
    factor = 1.0 if unit is None else UNITS[unit]
    named = header_unit(header[vi])
    if named is not None and named not in UNITS:
        fail(
            _OWNER,
            "value_column",
            value_column,
            f"a column in one of the units {tuple(UNITS)!r}: column {header[vi]!r} is in {named}; convert the file "
            "or name another column",
        )
    word = unread_mass(header[vi]) if named is None and unit is None else None
    if word is not None:
        fail(
            _OWNER,
            "unit",
            unit,
            f"given explicitly: column {header[vi]!r} names an amount in {word!r} per kWh or MWh, which is not read "
            f"from headers; pass unit= one of {tuple(UNITS)!r}",
        )
    if named is not None and unit is None and UNITS.get(named) != 1.0:
        fail(
            _OWNER,
            "unit",
            unit,
            f"given explicitly: column {header[vi]!r} is not in gCO2e/kWh; pass unit= one of {tuple(UNITS)!r} "
            "to convert",
        )
    if named is not None and unit is not None and UNITS.get(named) != factor:
        # None is allowed only where the header's unit needs no conversion (kg/MWh = g/kWh).
        either = ", or None" if UNITS[named] == 1.0 else ""
        fail(_OWNER, "unit", unit, f"the unit of column {header[vi]!r} ({named}){either}")

    if _UTC_IN_HEADER.search(header[ti]):
        tz = _dt.timezone.utc  # the header says so: `timezone` is for files whose times are local
    times: list[float] = []
    vals: list[float | None] = []
    previous: tuple[_dt.datetime, int | None] | None = None  # the last naive time and its fold (DST)
    for n, r in enumerate(rows[1:], start=2):
        when = _parse_time(r[ti] if ti < len(r) else "", n, spath)
        if when.tzinfo is None:
            t, fold = _local_seconds(when, tz, previous, n, spath, timezone)
            previous = (when, fold)
        else:
            t, previous = when.timestamp(), None
        cell = r[vi].strip() if vi < len(r) else ""
        if cell == "":
            v = None
        else:
            try:
                v = float(cell) * factor
            except ValueError:
                raise InvalidArgumentError(
                    f"read_trace(path={spath!r}): row {n} intensity {cell!r} is not a number."
                ) from None
            if not (math.isfinite(v) and v >= 0):
                raise InvalidArgumentError(
                    f"read_trace(path={spath!r}): row {n} intensity {cell!r} is not allowed; intensities must be "
                    "finite numbers >= 0."
                )
        if times and t <= times[-1]:
            what = "duplicate" if t == times[-1] else "unsorted"
            raise InvalidArgumentError(
                f"read_trace(path={spath!r}): row {n} timestamp {r[ti].strip()!r} is {what}; timestamps must be "
                "strictly increasing."
            )
        times.append(t)
        vals.append(v)
    known = [(t, v) for t, v in zip(times, vals, strict=True) if v is not None]
    if not known:
        fail(_OWNER, "path", spath, "a CSV with at least one intensity value")
    if unit is None and named is None and 0 < max(v for _, v in known) < _LOOKS_LIKE_KG_BELOW:
        warnings.warn(
            f"read_trace(path={spath!r}): every intensity in column {header[vi]!r} is below {_LOOKS_LIKE_KG_BELOW:g}, "
            "which looks like kg/kWh (grids run at ~10-1200 gCO2e/kWh); the values are read as gCO2e/kWh. If they "
            "are kg/kWh, say so: unit='kg/kWh' (callbacks: carbon_intensity=lightning_green.carbon.CSVTrace(path, "
            "unit='kg/kWh'), in YAML its class_path/init_args), or a column header that names the unit.",
            UserWarning,
            stacklevel=2,
        )
    if len(times) == 1:
        return IntensityTrace(times[0], 3600.0, (known[0][1],), spath)
    start = times[0]
    step = _grid_step(times, spath)
    n_grid = round((times[-1] - start) / step) + 1
    grid: list[float | None] = [None] * n_grid
    for t, v in known:
        grid[round((t - start) / step)] = v
    # Leading/trailing empty values are not interpolated: trim them.
    first = next(i for i, v in enumerate(grid) if v is not None)
    last = max(i for i, v in enumerate(grid) if v is not None)
    grid = grid[first : last + 1]
    out: list[float] = []
    i = 0
    while i < len(grid):
        if grid[i] is not None:
            out.append(grid[i])  # type: ignore[arg-type]
            i += 1
            continue
        j = i
        while grid[j] is None:
            j += 1
        gap_h = (j - i + 1) * step / 3600.0
        if gap_h > max_gap_h:
            raise InvalidArgumentError(
                f"read_trace(path={spath!r}, max_gap_h={max_gap_h!r}): {gap_h:g} h of values are missing after "
                f"{_iso(start + (first + i - 1) * step)}; gaps longer than `max_gap_h` are refused."
            )
        a, b = grid[i - 1], grid[j]
        for k in range(i, j):
            out.append(a + (b - a) * (k - i + 1) / (j - i + 1))  # type: ignore[operator]
        i = j
    return IntensityTrace(start + first * step, step, tuple(out), spath)


UnitName = Literal["g/kWh", "kg/MWh", "kg/kWh", "t/MWh", "g/MWh", "lbs/MWh", "lbs/kWh"]


class CSVTrace:
    r"""A CSV intensity trace with :func:`read_trace`'s options, for a callback's ``carbon_intensity``/``intensity``.

    A plain path is read with the defaults; a CSV whose columns or unit need naming goes through this class — in
    Python or, as ``class_path: lightning_green.carbon.CSVTrace`` with ``init_args``, in a LightningCLI YAML. The file
    is read when the callback is built. It is also a callable ``datetime -> gCO2e/kWh``.

    Args:
        path: CSV file with a header row.
        time_column: Timestamp column; ``None`` picks a known name.
        value_column: Intensity column; ``None`` picks a known name.
        unit: Unit of the values (one of :data:`UNITS`); ``None``: gCO2e/kWh unless the header names another.
        timezone: IANA zone of timestamps without an offset; ``None``: the callback's (``carbon_timezone`` /
            ``timezone``, UTC by default). A time column whose header says UTC is read as UTC.
        max_gap_h: Longest gap (hours) that is interpolated.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ci.csv"
        >>> _ = p.write_text("when,co2\n2022-01-01 00:00,0.3\n2022-01-01 01:00,0.25\n")
        >>> CSVTrace(p, time_column="when", value_column="co2", unit="kg/kWh").read().values
        (300.0, 250.0)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        time_column: str | None = None,
        value_column: str | None = None,
        unit: UnitName | None = None,
        timezone: str | None = None,
        max_gap_h: float = 24.0,
    ) -> None:
        name = type(self).__name__
        if not isinstance(path, (str, os.PathLike)):
            fail(name, "path", path, "a CSV path", TypeError)
        for arg, value in (("time_column", time_column), ("value_column", value_column)):
            if value is not None and not isinstance(value, str):
                fail(name, arg, value, "None or a column name", TypeError)
        if unit is not None and unit not in UNITS:
            fail(name, "unit", unit, f"one of {tuple(UNITS)!r} (or None for gCO2e/kWh)")
        if timezone is not None:
            check_timezone(name, "timezone", timezone)
        if isinstance(max_gap_h, bool) or not isinstance(max_gap_h, (int, float)) or not max_gap_h >= 0:
            fail(name, "max_gap_h", max_gap_h, "a number >= 0")
        self.path = os.fspath(path)
        self.time_column, self.value_column, self.unit = time_column, value_column, unit
        self.timezone, self.max_gap_h = timezone, float(max_gap_h)
        self._trace: IntensityTrace | None = None

    def read(self, timezone: str = "UTC") -> IntensityTrace:
        """Read the file (``timezone``: the zone to use when this trace names none)."""
        return read_trace(
            self.path,
            time_column=self.time_column,
            value_column=self.value_column,
            timezone=self.timezone or timezone,
            unit=self.unit,
            max_gap_h=self.max_gap_h,
        )

    # Callable so that the callbacks' `Callable[[datetime], float]` argument takes it from YAML (class_path/init_args):
    # a class added to that type union instead makes jsonargparse read a plain CSV path's content as the value.
    def __call__(self, when: _dt.datetime) -> float:
        """Intensity at ``when`` (gCO2e/kWh; a naive datetime is UTC), reading the file on first use."""
        if self._trace is None:
            self._trace = self.read()
        return self._trace.at(to_seconds(when))

    def __repr__(self) -> str:
        opts = {k: getattr(self, k) for k in ("time_column", "value_column", "unit", "timezone")}
        shown = "".join(f", {k}={v!r}" for k, v in opts.items() if v is not None)
        return f"CSVTrace({self.path!r}{shown})"
