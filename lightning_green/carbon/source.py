"""Intensity sources (a constant, a trace, a callable) and the per-window CO₂ account. No Lightning import."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Callable
from typing import Any, Literal, Protocol, Union, runtime_checkable

from lightning_green._internal.validation import InvalidArgumentError, as_real, fail
from lightning_green.carbon.online import ELECTRICITYMAPS_PREFIX, ElectricityMapsSource, parse_spec
from lightning_green.carbon.trace import WEEK_S, CSVTrace, IntensityTrace, _iso, read_trace

__all__ = [
    "EXTEND_CHOICES",
    "CallableIntensity",
    "CarbonAccount",
    "ConstantIntensity",
    "Extend",
    "IntensityLike",
    "IntensitySource",
    "as_intensity_source",
    "ensure_covers",
]

J_PER_KWH = 3.6e6
Extend = Literal["none", "repeat-last-week"]
EXTEND_CHOICES = ("none", "repeat-last-week")
IntensityLike = Union[float, str, "os.PathLike[str]", CSVTrace, IntensityTrace, Callable[[_dt.datetime], float]]


@runtime_checkable
class IntensitySource(Protocol):
    """Anything with a time-weighted mean intensity (gCO2e/kWh) over a span of POSIX seconds."""

    def mean(self, t0_s: float, t1_s: float) -> float:  # noqa: D102
        ...

    def covers(self, t0_s: float, t1_s: float) -> bool:  # noqa: D102
        ...

    def describe(self) -> dict[str, object]:  # noqa: D102
        ...


class ConstantIntensity:
    """The same intensity at all times.

    Example:
        >>> ConstantIntensity(56.0).mean(0.0, 3600.0)
        56.0
    """

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def mean(self, t0_s: float, t1_s: float) -> float:
        """The constant."""
        return self.value

    def at(self, t_s: float) -> float:
        """The constant."""
        return self.value

    def covers(self, t0_s: float, t1_s: float) -> bool:
        """Always."""
        return True

    def describe(self) -> dict[str, object]:
        """Plain-dict form for reports."""
        return {"kind": "constant", "source": "user", "value_g_per_kwh": self.value}


class CallableIntensity:
    """A user function ``datetime (UTC) -> gCO2e/kWh``, averaged over a span by sampling it every ``sample_s``.

    Example:
        >>> src = CallableIntensity(lambda when: 100.0 if when.hour < 12 else 300.0)
        >>> src.mean(0.0, 86400.0)
        200.0
    """

    def __init__(
        self,
        fn: Callable[[_dt.datetime], float],
        sample_s: float = 900.0,
        owner: str | None = None,
        argument: str = "carbon_intensity",
    ) -> None:
        self.fn = fn
        self.sample_s = float(sample_s)
        self.owner, self.argument = owner, argument  # who took it, as what: for messages

    def at(self, t_s: float) -> float:
        """The function's value at ``t_s``, checked."""
        value = self.fn(_dt.datetime.fromtimestamp(t_s, _dt.timezone.utc))
        real = as_real(value)  # a numpy number (a value from an array or a pandas column) is a number too
        if real is None or not (math.isfinite(real) and real >= 0):
            given = f"{self.argument}={_name(self.fn)}"
            given = f"{self.owner}({given})" if self.owner else given
            raise InvalidArgumentError(
                f"{given}: returned {value!r} for {_iso(t_s)}; it must return a finite number >= 0 (gCO2e/kWh)."
            )
        return real

    def mean(self, t0_s: float, t1_s: float) -> float:
        """Midpoint-rule mean over ``[t0_s, t1_s]``."""
        if t1_s <= t0_s:
            return self.at(t0_s)
        n = max(1, math.ceil((t1_s - t0_s) / self.sample_s))
        h = (t1_s - t0_s) / n
        return sum(self.at(t0_s + (i + 0.5) * h) for i in range(n)) / n

    def covers(self, t0_s: float, t1_s: float) -> bool:
        """A function is defined everywhere."""
        return True

    def describe(self) -> dict[str, object]:
        """Plain-dict form for reports."""
        return {"kind": "callable", "source": _name(self.fn)}


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def as_intensity_source(
    value: Any,
    owner: str,
    name: str = "carbon_intensity",
    **csv_options: Any,
) -> ConstantIntensity | IntensityTrace | CallableIntensity | ElectricityMapsSource:
    """Turn a number, a CSV path, a CSVTrace, a trace, a callable or ``"electricitymaps:<zone>"`` into a source.

    Anything else is refused. ``csv_options`` go to :func:`~lightning_green.carbon.read_trace`. Only the
    ``"electricitymaps:<zone>"`` form (or an :class:`~lightning_green.carbon.ElectricityMapsSource`) goes online; it
    needs a token (``ELECTRICITYMAPS_TOKEN``).

    Example:
        >>> as_intensity_source(56, "EnergyMonitor").describe()
        {'kind': 'constant', 'source': 'user', 'value_g_per_kwh': 56.0}
        >>> as_intensity_source(-1, "EnergyMonitor")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: EnergyMonitor(carbon_intensity=-1): `carbon_intensity` must be ...
    """
    allowed = (
        "a number >= 0 (gCO2e/kWh), a CSV path, a CSVTrace, 'electricitymaps:<zone>', an IntensityTrace or a "
        "callable datetime -> gCO2e/kWh"
    )
    if isinstance(value, (IntensityTrace, ConstantIntensity, CallableIntensity, ElectricityMapsSource)):
        return value
    if isinstance(value, str) and value.lower().startswith(ELECTRICITYMAPS_PREFIX):
        return parse_spec(value, owner, name)
    real = as_real(value)
    if real is not None:
        if not (math.isfinite(real) and real >= 0):
            fail(owner, name, value, allowed)
        return ConstantIntensity(real)
    if isinstance(value, CSVTrace):
        if not os.path.isfile(value.path):
            fail(owner, name, value, f"{allowed}; no file at that path")
        try:
            return value.read(csv_options.get("timezone", "UTC"))
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"{owner}({name}={value!r}): {err}") from None
    if isinstance(value, (str, os.PathLike)):
        if not os.path.isfile(value):
            fail(owner, name, value, f"{allowed}; no file at that path")
        try:
            return read_trace(value, **csv_options)
        except InvalidArgumentError as err:
            hint = ""
            option = re.search(r"\b(time_column|value_column|unit|max_gap_h)=", str(err))
            if option:
                # That is read_trace's option, not the callback's: say how a callback user passes it.
                opt = option.group(1)
                hint = (
                    f" From {owner}, give it through {name}=lightning_green.carbon.CSVTrace({os.fspath(value)!r}, "
                    f"{opt}=...) (YAML: class_path: lightning_green.carbon.CSVTrace, "
                    f"init_args: {{path: ..., {opt}: ...}})."
                )
            raise InvalidArgumentError(f"{owner}({name}={os.fspath(value)!r}): {err}{hint}") from None
    if callable(value):
        return CallableIntensity(value, owner=owner, argument=name)
    fail(owner, name, value, allowed, TypeError)
    raise AssertionError  # pragma: no cover


def ensure_covers(
    source: Any,
    t0_s: float,
    t1_s: float,
    owner: str,
    name: str,
    extend: str,
    extend_name: str | None = None,
    history_s: float = 0.0,
    forecast: str | None = None,
) -> Any:
    """Return ``source`` if it covers ``[t0_s, t1_s]``, the trace extended if ``extend`` allows; else refuse.

    Messages name the caller's own arguments: ``owner(name=...)`` for the source and ``extend_name`` for the
    extension (``None``: ``name`` with ``intensity`` replaced by ``extend``, so ``carbon_intensity`` pairs with
    ``carbon_extend`` and ``intensity`` with ``extend``). ``history_s``: how much of the span before the run's start
    is history that ``forecast`` reads (said in the message when the trace starts too late).

    Example:
        >>> tr = IntensityTrace(0.0, 3600.0, (1.0,) * 168)
        >>> ensure_covers(tr, 0.0, 2 * WEEK_S, "X", "intensity", "repeat-last-week").end_s >= 2 * WEEK_S
        True
        >>> ensure_covers(tr, 0.0, 2 * WEEK_S, "X", "carbon_intensity", "none")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: X(carbon_intensity='trace'): ... or carbon_extend='repeat-last-week' ...
    """
    if extend_name is None:
        extend_name = name.replace("intensity", "extend") if "intensity" in name else "extend"
    if source.covers(t0_s, t1_s):
        return source
    if extend == "repeat-last-week" and isinstance(source, IntensityTrace) and source.start_s <= t0_s:
        if len(source.values) < round(WEEK_S / source.step_s):  # what IntensityTrace.extended needs
            span_h = len(source.values) * source.step_s / 3600.0
            raise InvalidArgumentError(
                f"{owner}({extend_name}={extend!r}): repeating the last week of {name}={source.source!r} needs at "
                f"least a week of data; the trace spans {span_h:.1f} h."
            )
        return source.extended(t1_s + WEEK_S)
    desc = source.describe()
    if not isinstance(source, IntensityTrace):  # an online source: its history and forecast reach so far
        fixes = []
        if not source.covers(t0_s, t0_s):
            fixes.append("forecast='trace' (it reads no history)" if history_s > 0 else "a CSV trace")
        if not source.covers(t1_s, t1_s):
            fixes.append(f"a deadline by {desc.get('end')} (as far as the forecast reaches), or a CSV trace")
        extend_note = f" ({extend_name}={extend!r} extends CSV traces only)" if extend != "none" else ""
        raise InvalidArgumentError(
            f"{owner}({name}={desc.get('source')!r}): it has intensities for {desc.get('start')} .. {desc.get('end')} "
            f"but the run needs {_iso(t0_s)} .. {_iso(t1_s)}{extend_note}. To fix: give {' or '.join(fixes)}."
        )
    start_s = getattr(source, "start_s", -math.inf)
    end_s = getattr(source, "end_s", math.inf)
    fixes = []
    if start_s > t0_s:
        # Repeating the last week only reaches forward: a late start needs another trace (or less history).
        if history_s > 0:
            fixes.append(
                f"forecast={forecast!r} reads {history_s / 3600:g} h of intensities before the run starts "
                f"({_iso(t0_s + history_s)}), so the trace must start by {_iso(t0_s)}: give a trace with that history "
                "(a trace is never extended backwards), or forecast='trace'"
            )
        else:
            fixes.append(f"give a trace that starts by {_iso(t0_s)} (a trace is never extended backwards)")
    if end_s < t1_s:
        fixes.append(
            f"give a trace that reaches {_iso(t1_s)}, or {extend_name}='repeat-last-week' to repeat its last week"
            if extend != "repeat-last-week"
            else f"give a trace that reaches {_iso(t1_s)}"
        )
    raise InvalidArgumentError(
        f"{owner}({name}={desc.get('source')!r}): the trace covers {desc.get('start')} .. {desc.get('end')} but "
        f"the run needs {_iso(t0_s)} .. {_iso(t1_s)}; a trace is never extrapolated silently. To fix: "
        f"{'; and '.join(fixes)}."
    )


class CarbonAccount:
    """CO₂ per window: each window's energy × the source's mean intensity over the window × PUE.

    ``gco2e(stage)`` is the sum of that stage's window contributions; every window keeps its span, energy and
    intensity, so the total can be recomputed from the stored figures.

    Example:
        >>> tr = IntensityTrace(0.0, 3600.0, (100.0, 300.0))
        >>> acc = CarbonAccount(tr, pue=1.0)
        >>> acc.add(["fit"], 0.0, 3600.0, 3.6e6), acc.add(["fit"], 3600.0, 7200.0, 3.6e6)
        (100.0, 300.0)
        >>> acc.gco2e("fit")
        400.0
    """

    def __init__(self, source: Any, pue: float = 1.0, extend: str = "none") -> None:
        self.source = source
        self.pue = float(pue)
        self.extend = extend
        self.windows: dict[str, list[list[float]]] = {}
        self.extrapolated_windows = 0
        self.trace_end_s = math.inf  # the trace's own end, once the run has outlived it
        self.extension: str | None = None  # how the trace was carried past its end: "repeated" or "held"
        self.last_intensity: float | None = None

    def intensity(self, t0_s: float, t1_s: float) -> float:
        """Mean intensity over a span, carrying the trace past its end when the run outlives it.

        A trace with a week of data repeats its last week; a shorter one (only possible with ``extend="none"``: the
        owner refuses ``"repeat-last-week"`` on it at setup) holds its last value, so the run goes on.
        """
        if not self.source.covers(t0_s, t1_s) and isinstance(self.source, IntensityTrace):
            if self.source.start_s > t0_s:
                raise InvalidArgumentError(
                    f"carbon intensity trace {self.source.source!r} starts at {_iso(self.source.start_s)}, after the "
                    f"window {_iso(t0_s)}: it is never extrapolated backwards."
                )
            if self.extension is None:
                self.trace_end_s = self.source.end_s
            if self.source.has_a_week or self.extend == "repeat-last-week":
                self.source = self.source.extended(t1_s + WEEK_S)
                self.extension = "repeated"
            else:
                self.source = self.source.held(t1_s + WEEK_S)
                self.extension = "held"
        return self.source.mean(t0_s, t1_s)

    def add(self, stages: list[str], t0_s: float, t1_s: float, energy_j: float) -> float:
        """Account one window for ``stages``; return its intensity (g/kWh)."""
        value = self.intensity(t0_s, t1_s)
        if self.extension is not None and t1_s > self.trace_end_s:
            self.extrapolated_windows += 1
        self.last_intensity = value
        for stage in stages:
            self.windows.setdefault(stage, []).append([t0_s, t1_s, float(energy_j), value])
        return value

    def reset(self, stage: str) -> None:
        """Forget a stage's windows (a fresh run of it)."""
        self.windows[stage] = []

    def gco2e(self, stage: str) -> float:
        """Grams CO₂e of ``stage``: Σ window energy × intensity × PUE."""
        return sum(e * i for _, _, e, i in self.windows.get(stage, ())) / J_PER_KWH * self.pue

    def energy_j(self, stage: str) -> float:
        """Joules accounted in ``stage``'s windows."""
        return sum(w[2] for w in self.windows.get(stage, ()))

    def mean_intensity(self, stage: str) -> float | None:
        """Energy-weighted mean intensity of ``stage`` (g/kWh)."""
        e = self.energy_j(stage)
        return None if e <= 0 else sum(w[2] * w[3] for w in self.windows.get(stage, ())) / e

    def as_dict(self, stage: str) -> dict[str, Any]:
        """Per-window figures of ``stage`` for the report."""
        return {
            "columns": ["start", "end", "energy_j", "intensity_g_per_kwh"],
            "windows": [[_iso(a), _iso(b), e, i] for a, b, e, i in self.windows.get(stage, ())],
            "windows_s": [[a, b] for a, b, _, _ in self.windows.get(stage, ())],
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state."""
        return {"windows": {k: [list(w) for w in v] for k, v in self.windows.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.windows = {k: [[float(x) for x in w] for w in v] for k, v in state.get("windows", {}).items()}
