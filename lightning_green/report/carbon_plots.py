"""Carbon plots of the green report: intensity and CO₂ rate over the run, and the carbon-aware plan.

Each function takes a :class:`~lightning_green.report.run.Run` and returns PNG bytes, or ``None`` when the run has
no such data (a constant intensity has no windows; no ``CarbonAwareScheduler``, no plan).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from lightning_green.report.plots import _COLORS, _figure, _png
from lightning_green.report.run import Run

__all__ = ["carbon_plan", "intensity_and_co2_rate"]


def _when(t_s: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(t_s, _dt.timezone.utc)


def _time_axis(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")


def intensity_and_co2_rate(run: Run) -> bytes | None:
    """Grid intensity of each measured window (left) and the run's CO₂ rate in g/h (right), over time."""
    fit = run.stage("fit") or {}
    windows = (fit.get("carbon_windows") or {}).get("windows_s")
    rows = (fit.get("carbon_windows") or {}).get("windows")
    if not windows or not rows:
        return None
    pue = float((run.energy.get("carbon") or {}).get("pue", 1.0))
    xs, intensity, rate = [], [], []
    for (t0, t1), (_, _, energy_j, value) in zip(windows, rows, strict=False):
        if t1 <= t0:
            continue
        xs.append(_when(t0))
        intensity.append(value)
        rate.append(energy_j / 3.6e6 * value * pue / ((t1 - t0) / 3600.0))
    if not xs:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.step(xs, intensity, where="post", color=_COLORS["gpu"], lw=1.5, label="intensity")
    ax.set_ylabel("gCO2e/kWh", color=_COLORS["gpu"])
    ax2 = ax.twinx()
    ax2.step(xs, rate, where="post", color=_COLORS["total"], lw=1.2, ls="--", label="CO2 rate")
    ax2.set_ylabel("gCO2e/h", color=_COLORS["total"])
    _time_axis(ax)
    ax.set_title("Grid intensity and CO2 rate")
    return _png(fig)


def carbon_plan(run: Run) -> bytes | None:
    """The first plan against the forecast intensity: planned hours shaded, pauses hatched, the deadline dashed."""
    section = run.extra("carbon_schedule") or {}
    slots = section.get("first_plan_slots") or section.get("forecast_slots")
    if not slots:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    xs = [_when(a) for a, _, _ in slots] + [_when(slots[-1][1])]
    ys = [v for _, _, v in slots] + [slots[-1][2]]
    ax.step(xs, ys, where="post", color=_COLORS["total"], lw=1.5, label="forecast intensity")
    for i, (a, b) in enumerate(section.get("first_plan_chosen_s") or []):
        ax.axvspan(_when(a), _when(b), color=_COLORS["gpu"], alpha=0.25, lw=0, label="planned" if i == 0 else None)
    for i, p in enumerate(section.get("pauses") or []):
        a = float(p["start_s"])
        ax.axvspan(
            _when(a),
            _when(a + float(p["seconds"])),
            facecolor="none",
            hatch="//",
            edgecolor="#999999",
            lw=0,
            label="paused" if i == 0 else None,
        )
    if section.get("deadline_s"):
        ax.axvline(_when(float(section["deadline_s"])), color="#e76f51", ls="--", lw=1, label="deadline")
    ax.set_ylabel("gCO2e/kWh")
    _time_axis(ax)
    ax.legend(loc="best", fontsize="small")
    ax.set_title("Carbon-aware plan")
    return _png(fig)
