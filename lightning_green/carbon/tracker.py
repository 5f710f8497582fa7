"""The EnergyMonitor's carbon side: window energy → gCO2e with a constant or time-varying intensity. No Lightning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning_green._internal.validation import InvalidArgumentError
from lightning_green.carbon.source import (
    CallableIntensity,
    CarbonAccount,
    ConstantIntensity,
    as_intensity_source,
    ensure_covers,
)
from lightning_green.carbon.trace import IntensityTrace, _iso

__all__ = ["CarbonTracker"]

J_PER_KWH = 3.6e6
WORLD_AVERAGE_G_PER_KWH = 475.0


class CarbonTracker:
    """CO₂ of measured windows: ``Σ window energy × mean intensity over the window × PUE``.

    With a constant intensity (or none: the world average) totals are ``energy × intensity × PUE`` exactly, as
    before; with a trace or a callable every window is kept (span, joules, intensity) so the report can recompute
    them. The owner calls :meth:`start` when a measured span begins and :meth:`window` at each counter read.

    Args:
        intensity: ``None`` (world average), a number, a CSV path, an :class:`~lightning_green.carbon.IntensityTrace`
            or a callable ``datetime -> gCO2e/kWh``.
        pue: Power usage effectiveness.
        extend: ``"none"`` or ``"repeat-last-week"`` (what to do when the run outlives a trace).
        timezone: Zone of a CSV's timestamps without an offset.
        clock: POSIX-seconds clock (``time.time``).
        owner: Class name for messages.

    Example:
        >>> t = [0.0]
        >>> tracker = CarbonTracker(lambda when: 100.0 if when.hour == 0 else 300.0, clock=lambda: t[0])
        >>> tracker.start()
        >>> t[0] = 3600.0; tracker.window(["fit"], 3.6e6)
        100.0
        >>> t[0] = 7200.0; tracker.window(["fit"], 3.6e6)
        300.0
        >>> tracker.gco2e("fit", 7.2e6)
        400.0
    """

    def __init__(
        self,
        intensity: Any = None,
        pue: float = 1.0,
        extend: str = "none",
        timezone: str = "UTC",
        clock: Callable[[], float] | None = None,
        owner: str = "EnergyMonitor",
    ) -> None:
        self.is_default = intensity is None
        self.owner = owner
        value = WORLD_AVERAGE_G_PER_KWH if intensity is None else intensity
        self.source = as_intensity_source(value, owner, "carbon_intensity", timezone=timezone)
        self.constant = isinstance(self.source, ConstantIntensity)
        self.pue = float(pue)
        self.extend = extend
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        if callable(getattr(self.source, "use_clock", None)):
            self.source.use_clock(self.clock)  # an online source decides what is past by the same clock
        self.account = CarbonAccount(self.source, pue, extend)
        self._t_mark: float | None = None
        self.warned_extrapolation = False

    def check_covers_now(self) -> float:
        """Refuse a trace that does not cover the present (at setup); extend it if allowed. Returns the clock's now."""
        now = self.clock()
        self.account.source = self.source = ensure_covers(
            self.source, now, now, self.owner, "carbon_intensity", self.extend
        )
        if isinstance(self.source, CallableIntensity):
            self.source.at(now)  # a function that returns no number is refused now, not at the first window
        if self.extend == "repeat-last-week" and isinstance(self.source, IntensityTrace) and not self.source.has_a_week:
            # Refused now rather than when the run reaches the trace's end, hours into training.
            span_h = len(self.source.values) * self.source.step_s / 3600.0
            raise InvalidArgumentError(
                f"{self.owner}(carbon_extend='repeat-last-week'): repeating the last week of "
                f"carbon_intensity={self.source.source!r} needs at least a week of data; the trace spans "
                f"{span_h:.3g} h. Give a trace of a week or more, or carbon_extend='none' (a run that outlives the "
                "trace then holds its last value, with a warning)."
            )
        return now

    def start(self, at: float | None = None) -> None:
        """A measured span begins now, or at ``at`` (this tracker's clock; energy before it belongs to no window)."""
        self._t_mark = self.clock() if at is None else at

    def window(self, stages: list[str], energy_j: float) -> float:
        """Account the window since the last call for ``stages``; return its intensity (g/kWh)."""
        now = self.clock()
        t0 = self._t_mark if self._t_mark is not None else now
        self._t_mark = now
        if self.constant:
            return self.source.value  # type: ignore[union-attr]
        return self.account.add(stages, t0, now, energy_j)

    def reset(self, stage: str) -> None:
        """A stage starts from zero."""
        self.account.reset(stage)

    def stage_state(self, stage: str) -> list[list[float]]:
        """A copy of ``stage``'s windows, for :meth:`restore_stage`."""
        return [list(w) for w in self.account.windows.get(stage, ())]

    def restore_stage(self, stage: str, windows: list[list[float]]) -> None:
        """Put back what :meth:`stage_state` returned."""
        self.account.windows[stage] = [list(w) for w in windows]

    @property
    def extrapolated(self) -> bool:
        """Whether the run outlived the trace (its last week was repeated or its last value held)."""
        return self.account.extension is not None

    @property
    def extrapolation_note(self) -> str | None:
        """What was done past the trace's end, for the report and the warning (``None``: the trace covered the run)."""
        if self.account.extension is None:
            return None
        how = "its last week was repeated" if self.account.extension == "repeated" else "its last value was held"
        return (
            f"the run outlived the trace (it ends {_iso(self.account.trace_end_s)}): {how} "
            f"({self.account.extrapolated_windows} window(s))"
        )

    @property
    def intensity_now(self) -> float:
        """Intensity of the latest window (the constant, or the source now before any window)."""
        if self.constant:
            return self.source.value  # type: ignore[union-attr]
        if self.account.last_intensity is not None:
            return self.account.last_intensity
        now = self.clock()
        return self.account.intensity(now, now)

    def gco2e(self, stage: str, total_j: float) -> float:
        """Grams CO₂e of ``stage`` (whose energy is ``total_j``)."""
        if self.constant:
            return total_j / J_PER_KWH * self.source.value * self.pue  # type: ignore[union-attr]
        return self.account.gco2e(stage)

    def forecast_gco2e(self, stage: str, spent_j: float, forecast_j: float) -> float:
        """CO₂ of ``forecast_j``: CO₂ so far plus the forecast's remaining energy at the current intensity.

        A run that has already spent more than the forecast gets the forecast's joules at the run's mean intensity so
        far, so that the CO₂ is always that of the forecast's energy (not the larger energy spent).

        Example:
            >>> tracker = CarbonTracker(100.0)
            >>> tracker.forecast_gco2e("fit", 3.6e6, 7.2e6), tracker.forecast_gco2e("fit", 7.2e6, 3.6e6)
            (200.0, 100.0)
        """
        spent_g = self.gco2e(stage, spent_j)
        if forecast_j < spent_j:
            return spent_g * forecast_j / spent_j if spent_j > 0 else 0.0
        return spent_g + (forecast_j - spent_j) / J_PER_KWH * self.intensity_now * self.pue

    def as_dict(self, mean_g_per_kwh: float | None = None) -> dict[str, object]:
        """The report's ``carbon`` block."""
        if self.constant:
            value = self.source.value  # type: ignore[union-attr]
            return {
                "intensity_g_per_kwh": value,
                "intensity_source": "default: world average (IEA 2019)" if self.is_default else "user",
                "pue": self.pue,
                "formula": "gCO2e = energy_J / 3.6e6 * intensity_g_per_kwh * pue",
            }
        desc = self.source.describe()
        return {
            "intensity_g_per_kwh": mean_g_per_kwh if mean_g_per_kwh is not None else self.intensity_now,
            "intensity_source": f"{desc['kind']}: {desc['source']}",
            "source": desc,
            "extrapolated": self.extrapolation_note,
            "source_note": desc.get("note"),  # an online source that went on through failed requests
            "pue": self.pue,
            "formula": "gCO2e = sum over windows of energy_j / 3.6e6 * intensity_g_per_kwh * pue "
            "(intensity_g_per_kwh above: the fit's energy-weighted mean)",
        }

    def stage_windows(self, stage: str) -> dict[str, Any] | None:
        """Per-window figures of ``stage`` (``None`` with a constant intensity)."""
        return None if self.constant else self.account.as_dict(stage)

    def describe_now(self) -> str:
        """One line for messages."""
        return f"{self.intensity_now:.0f} gCO2e/kWh at {_iso(self.clock())}"

    def state_dict(self, pending: tuple[list[str], float] | None = None) -> dict[str, Any]:
        """Plain-type state.

        ``pending``: the ``(stages, joules)`` spent since the last :meth:`window`, not accounted yet; a checkpoint
        saves it as a window ending now (the running account gets it with its next window, as usual).

        Example:
            >>> from lightning_green.carbon.source import IntensityTrace
            >>> t = iter([0.0, 1800.0])
            >>> tracker = CarbonTracker(IntensityTrace(0.0, 3600.0, (100.0, 300.0)), clock=lambda: next(t))
            >>> tracker.start()
            >>> tracker.state_dict(pending=(["fit"], 3.6e6))["windows"]["fit"], tracker.account.windows
            ([[0.0, 1800.0, 3600000.0, 100.0]], {})
        """
        state = self.account.state_dict()
        if pending is None or self.constant or self._t_mark is None:
            return state
        stages, energy_j = pending
        now = self.clock()
        value = self.account.intensity(self._t_mark, now)
        for stage in stages:
            state["windows"].setdefault(stage, []).append([self._t_mark, now, float(energy_j), value])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.account.load_state_dict(state)
