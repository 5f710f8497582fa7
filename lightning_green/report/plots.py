"""The report's PNG plots, drawn with matplotlib's object API (no pyplot: no global state, no display needed).

Each function returns the PNG as bytes, or ``None`` when the run has no data for that plot.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from lightning_green.energy.carbon import energy_unit
from lightning_green.precision.modes import MODE_CODES, SHORT_NAMES
from lightning_green.report.run import Run, TargetResult

__all__ = [
    "average_power",
    "compare_metric_vs_energy",
    "energy_per_epoch",
    "energy_scale",
    "macs_per_prune",
    "metric_vs_energy",
    "power_limit",
    "precision_mode",
]

_COLORS = {"gpu": "#2a9d8f", "cpu": "#e9c46a", "dram": "#f4a261", "total": "#264653"}
#: ``precision/mode`` codes (AMPScheduler) → names.
PRECISION_NAMES = {code: SHORT_NAMES[mode] for mode, code in MODE_CODES.items()}


def energy_scale(max_j: float) -> tuple[float, str]:
    """Divisor and unit for plotting joules (:func:`~lightning_green.energy.carbon.energy_unit`).

    Example:
        >>> energy_scale(500.0), energy_scale(7200.0)
        ((1.0, 'J'), (3600.0, 'Wh'))
    """
    return energy_unit(max_j)


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def energy_per_epoch(run: Run) -> bytes | None:
    """Stacked bars: energy of each training epoch (validation included) by component."""
    epochs = run.epoch_energy()
    if not epochs:
        return None
    div, unit = energy_scale(max(e.total_j for e in epochs))
    fig = _figure()
    ax = fig.add_subplot()
    xs = [e.epoch for e in epochs]
    comps = [c for c in ("gpu", "cpu", "dram") if any(c in e.components_j for e in epochs)]
    sources = (run.stage("fit") or {}).get("sources", {})
    if comps:
        bottom = [0.0] * len(epochs)
        for c in comps:
            ys = [max(e.components_j.get(c, 0.0), 0.0) / div for e in epochs]
            if not any(ys):
                continue
            ax.bar(xs, ys, bottom=bottom, color=_COLORS[c], label=f"{c} ({sources.get(c, '?')})")
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        unsplit = [e for e in epochs if not e.components_j]  # epochs logged elsewhere (a resume): totals only
        if unsplit:
            ax.bar(
                [e.epoch for e in unsplit],
                [e.total_j / div for e in unsplit],
                color=_COLORS["total"],
                label="total (no split in this log)",
            )
        ax.legend(loc="best", fontsize="small")
    else:
        ax.bar(xs, [e.total_j / div for e in epochs], color=_COLORS["total"], label="total")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"energy ({unit})")
    ax.set_title(f"Energy per epoch ({run.label})")
    ax.set_xticks(xs)
    return _png(fig)


def average_power(run: Run) -> bytes | None:
    """Average power of each logging window over training steps (and of each validation)."""
    train = run.scalars.series("power/avg_W")
    val = run.scalars.series("validate/power/avg_W")
    if not train and not val:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if train:
        ax.plot([p.step for p in train], [p.value for p in train], color=_COLORS["total"], lw=1.2, label="training")
    if val:
        ax.plot([p.step for p in val], [p.value for p in val], "o", color=_COLORS["gpu"], ms=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("average power (W)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Average power ({run.label})")
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def metric_vs_energy(run: Run, metric: str, target: TargetResult | None = None) -> bytes | None:
    """The validation metric against cumulative energy, with the target and where it was first reached."""
    return compare_metric_vs_energy([run], metric, [target] if target is not None else None, title_run=run)


def compare_metric_vs_energy(
    runs: Sequence[Run],
    metric: str,
    targets: Sequence[TargetResult | None] | None = None,
    title_run: Run | None = None,
) -> bytes | None:
    """One line per run: ``metric`` against the cumulative energy at each validation."""
    curves = [[cp for cp in run.curve(metric) if cp.energy_j is not None] for run in runs]
    if not any(curves):
        return None
    div, unit = energy_scale(max(cp.energy_j for c in curves for cp in c))  # type: ignore[type-var]
    fig = _figure()
    ax = fig.add_subplot()
    for i, (run, curve) in enumerate(zip(runs, curves, strict=True)):
        if not curve:
            continue
        label = run.name if len(runs) > 1 else metric
        line = ax.plot([cp.energy_j / div for cp in curve], [cp.value for cp in curve], "o-", ms=3, lw=1.2, label=label)
        t = targets[i] if targets else None
        if t is not None and t.reached and t.energy_j is not None:
            ax.plot([t.energy_j / div], [t.value], "*", ms=12, color=line[0].get_color())
    t0 = next((t for t in (targets or []) if t is not None), None)
    if t0 is not None:
        ax.axhline(t0.target, color="grey", ls="--", lw=1, label=f"target {t0.target:g}")
    ax.set_xlabel(f"cumulative energy ({unit})")
    ax.set_ylabel(metric)
    who = f" ({title_run.label})" if title_run is not None else ""
    ax.set_title(f"{metric} vs energy{who}")
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def macs_per_prune(run: Run) -> bytes | None:
    """MACs of the model before pruning and after each prune, with the speedup over the dense model."""
    macs = run.scalars.series("pruning/macs")
    if not macs:
        return None
    dense = run.dense_macs()
    unit, per = run.macs_unit()
    dense = dense / per if dense else dense
    labels = ["dense"] if dense else []
    values = [dense] if dense else []
    steps = run.scalars.series("pruning/step")
    for i, p in enumerate(macs):
        k = int(steps[i].value) if i < len(steps) else i + 1
        labels.append(f"prune {k}")
        values.append(p.value / per)
    scale, prefix = (1e6, "M") if max(values) < 1e9 else (1e9, "G")
    fig = _figure()
    ax = fig.add_subplot()
    bars = ax.bar(labels, [v / scale for v in values], color=_COLORS["gpu"])
    if dense:
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                f"{dense / v:.2f}×",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize="small",
            )
    ax.set_ylabel(f"MACs ({prefix}) per {unit}")
    ax.set_title("MACs per pruning step")
    return _png(fig)


def precision_mode(run: Run) -> bytes | None:
    """The precision training ran in over steps (fp32 / bf16 / fp16), with the fallbacks marked."""
    mode = run.scalars.series("precision/mode")
    if not mode:
        return None
    fig = _figure(height=3.0)
    ax = fig.add_subplot()
    ax.step([p.step for p in mode], [p.value for p in mode], where="post", color=_COLORS["total"], lw=1.5)
    hits = [p.step for p in run.scalars.increases("precision/fallbacks")]
    if hits:
        ax.plot(hits, [32.0] * len(hits), "v", color="#e76f51", ms=8, label="fallback to fp32")
        ax.legend(loc="best", fontsize="small")
    codes = sorted({p.value for p in mode} | {32.0})
    ax.set_yticks(codes, [PRECISION_NAMES.get(c, f"{c:g}") for c in codes])
    lo, hi = min(codes), max(codes)
    ax.set_ylim(lo - 1, hi + 1)
    ax.set_xlabel("step")
    ax.set_ylabel("precision")
    ax.set_title("Precision over training")
    return _png(fig)


def power_limit(run: Run) -> bytes | None:
    """The GPU power limit over steps (profiling, then the chosen limit)."""
    limits = run.scalars.series("power/limit_W")
    if not limits:
        return None
    fig = _figure(height=3.0)
    ax = fig.add_subplot()
    ax.step([p.step for p in limits], [p.value for p in limits], where="post", color=_COLORS["total"], lw=1.5)
    chosen = (run.extra("power_limit") or {}).get("chosen_limit_w")
    if chosen is None and run.scalars.last("power/chosen_limit_W") is not None:
        chosen = run.scalars.last("power/chosen_limit_W").value  # type: ignore[union-attr]
    if chosen is not None and math.isfinite(chosen) and chosen > 0:
        ax.axhline(chosen, color=_COLORS["gpu"], ls="--", lw=1, label=f"chosen {chosen:g} W")
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("step")
    ax.set_ylabel("power limit (W)")
    ax.set_title("GPU power limit")
    return _png(fig)
