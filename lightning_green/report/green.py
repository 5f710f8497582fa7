"""The green report of one run: plots and tables from its energy report and logged scalars."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_green.energy.carbon import energy_unit, format_energy
from lightning_green.energy.meter import COMPONENTS
from lightning_green.report import carbon_plots, plots
from lightning_green.report.document import Document, ReportFiles
from lightning_green.report.run import Run, TargetResult, load_run, metric_mode, target_sign
from lightning_green.report.scalars import NO_SCALARS_WHY

__all__ = [
    "build_report",
    "fmt_bound_seconds",
    "fmt_energy",
    "fmt_macs",
    "fmt_num",
    "fmt_seconds",
    "recorded_settings",
    "report_settings",
    "resolve_mode",
    "write_report",
]

_KNOWN_EXTRA = {"power_limit", "model", "inference_cost", "carbon_schedule", "data", "green_report"}


def fmt_energy(j: float | None) -> str:
    """Joules for a table (J, Wh or kWh by size, see ``format_energy``); ``n/a`` for ``None``.

    Example:
        >>> fmt_energy(12.345), fmt_energy(7200.0), fmt_energy(None)
        ('12.3 J', '2.00 Wh', 'n/a')
    """
    if j is None or not math.isfinite(j):
        return "n/a"
    return format_energy(j)


def fmt_energy_sig(j: float | None, digits: int = 3) -> str:
    """Joules with ``digits`` significant figures (J, Wh or kWh by size), for small per-unit figures.

    ``fmt_energy`` keeps 0.1 J, which turns inference energy per 1,000 predictions (often well under a joule) into
    0.1 J or 0.0 J.

    Example:
        >>> fmt_energy_sig(0.0896), fmt_energy_sig(0.04), fmt_energy_sig(12.345), fmt_energy_sig(1234.0)
        ('0.0896 J', '0.0400 J', '12.3 J', '1234 J')
        >>> fmt_energy_sig(0.0), fmt_energy_sig(None)
        ('0 J', 'n/a')
    """
    if j is None or not math.isfinite(j):
        return "n/a"
    divisor, unit = energy_unit(j)
    x = j / divisor
    if x == 0:
        return f"0 {unit}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f} {unit}"


def fmt_num(x: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``n/a`` for ``None``."""
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def fmt_macs(x: float | None) -> str:
    """MACs as M or G; ``n/a`` for ``None``."""
    if x is None:
        return "n/a"
    return f"{x / 1e9:.3g} G" if x >= 1e9 else f"{x / 1e6:.3g} M"


def fmt_seconds(s: float | None) -> str:
    """Seconds, or minutes from 10 minutes on; ``n/a`` for ``None``."""
    if s is None or not math.isfinite(s):
        return "n/a"
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


def fmt_bound_seconds(s: float | None) -> str:
    """An upper bound on a time, ``≤ 1.5 s``; ``not known`` for ``None`` (a log that cannot tell).

    Example:
        >>> fmt_bound_seconds(1.5), fmt_bound_seconds(None)
        ('≤ 1.5 s', 'not known')
    """
    if s is None or not math.isfinite(s):
        return "not known"
    return f"≤ {fmt_seconds(s)}"


def recorded_settings(run: Run) -> dict[str, Any]:
    """The settings the run's :class:`~lightning_green.GreenReport` recorded (``extra.green_report``), those valid.

    Keys among ``metric``, ``mode``, ``target``, ``filename``, ``html``; empty for a run without GreenReport.
    """
    rec = run.extra("green_report")
    if not isinstance(rec, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(rec.get("metric"), str) and rec["metric"]:
        out["metric"] = rec["metric"]
    if rec.get("mode") in ("auto", "max", "min"):
        out["mode"] = rec["mode"]
    target = rec.get("target")
    if isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target):
        out["target"] = float(target)
    name = rec.get("filename")
    if isinstance(name, str) and name and os.path.basename(name) == name and name not in (".", ".."):
        out["filename"] = name
    if isinstance(rec.get("html"), bool):
        out["html"] = rec["html"]
    return out


def report_settings(
    run: Run,
    metric: str | None = None,
    mode: str | None = None,
    target: float | None = None,
    html: bool | None = None,
) -> dict[str, Any]:
    """:func:`write_report`'s settings for ``run``: those given, else what its GreenReport recorded, else defaults.

    A ``metric`` other than the recorded one drops the recorded ``mode`` and ``target`` (they were the other metric's).
    The file name is always the recorded one (``green_report`` without GreenReport), so the run's own report is the
    one rewritten, not a second one beside it.

    Example:
        >>> from lightning_green.report import Scalars
        >>> run = Run(Path("."), {"extra": {"green_report": {"metric": "val_loss", "target": 0.3, "filename": "mine"}}},
        ...           Scalars())
        >>> report_settings(run)
        {'metric': 'val_loss', 'mode': 'auto', 'target': 0.3, 'filename': 'mine', 'html': True}
        >>> report_settings(run, metric="val_acc", html=False)
        {'metric': 'val_acc', 'mode': 'auto', 'target': None, 'filename': 'mine', 'html': False}
    """
    rec = recorded_settings(run)
    same_metric = metric is None or metric == rec.get("metric")
    return {
        "metric": metric if metric is not None else rec.get("metric"),
        "mode": mode or (rec.get("mode") if same_metric else None) or "auto",
        "target": target if target is not None else (rec.get("target") if same_metric else None),
        "filename": rec.get("filename", "green_report"),
        "html": html if html is not None else rec.get("html", True),
    }


def resolve_mode(metric: str, mode: str) -> str:
    """``mode`` unless it is ``"auto"``: then by the metric's name (see :func:`~.run.metric_mode`)."""
    return metric_mode(metric, mode)


def build_report(run: Run, metric: str | None = None, mode: str = "auto", target: float | None = None) -> Document:
    """The report of ``run`` as a :class:`~lightning_green.report.document.Document`.

    Args:
        run: The finished run.
        metric: Validation metric to follow; ``None`` picks the first logged of ``val_acc``, ``val_loss``,
            ``val_ppl``.
        mode: ``"max"``/``"min"`` (is higher better?), or ``"auto"`` from the metric's name.
        target: Value of ``metric`` for energy-/time-to-target; ``None`` leaves those out.
    """
    doc = Document(f"Green report — {run.name}")
    name = run.metric_name(metric)
    mode = resolve_mode(name, mode) if name else mode
    hit = run.to_target(name, target, mode) if name is not None and target is not None else None
    status = run.status
    doc.paragraph(
        f"Run directory `{run.path}`. Energy report: status {status}, written {run.energy.get('created', '?')}. "
        f"Scalars from {run.scalars.source}."
    )
    if status == "unknown":
        doc.paragraph("The energy report records no status: whether the run finished normally is not known.", note=True)
    elif status != "complete":
        doc.paragraph(f"The run did not finish normally ({status}): the figures cover what ran.", note=True)
    stages = run.energy.get("stages") or {}
    for stage, entry in stages.items():
        stage_status = entry.get("status") if isinstance(entry, dict) else None
        # A validate/test/predict that failed (after the fit, whose own status is the report's; or alone, where the
        # report's status already says it).
        if isinstance(stage_status, str) and stage != "fit" and ("fit" in stages or stage_status != status):
            doc.paragraph(
                f"The {stage} run did not finish normally ({stage_status}): its figures cover what ran.", note=True
            )
    for problem in run.scalars.problems:
        doc.paragraph(f"The logged scalars are incomplete: {problem}.", note=True)
    first = run.first_logged_epoch()
    if first is not None:
        doc.paragraph(
            f"This log dir holds the fit from epoch {first} on; epochs 0–{first - 1} were logged elsewhere (a run "
            "resumed with `fit(ckpt_path=...)` into a new log dir). Energy per epoch and the totals come from the "
            "energy report, which covers the whole fit; the validation figures (final, best, energy- and "
            "time-to-target) cover the logged epochs only, so energy- and time-to-target are upper bounds."
            + (
                ""
                if "time/elapsed_s" in run.scalars
                else " Without GreenReport's `time/elapsed_s` in this log the elapsed fit time is not known: the log's "
                "clock starts at the resume."
            ),
            note=True,
        )
    if not len(run.scalars):
        doc.paragraph(_NO_SCALARS, note=True)
    elif metric is not None and name is None:
        doc.paragraph(f"Metric `{metric}` was not logged in this run.", note=True)
    if name is not None and name.endswith("/dataloader_idx_0") and name != metric:
        doc.paragraph(
            f"`{name.removesuffix('/dataloader_idx_0')}` was logged per validation dataloader: this report follows "
            f"the first one's, `{name}` (name another with `metric=`).",
            note=True,
        )

    _summary(doc, run, name, mode, hit)
    _energy(doc, run)
    _totals(doc, run)
    _measured_vs_estimated(doc, run)
    _carbon(doc, run)
    if name is not None:
        _metric(doc, run, name, hit)
    _pruning(doc, run)
    _precision(doc, run)
    _power(doc, run)
    _inference(doc, run)
    _data(doc, run)
    _other_sections(doc, run)
    return doc


def write_report(
    run_dir: str | os.PathLike[str] | Run,
    metric: str | None = None,
    mode: str = "auto",
    target: float | None = None,
    filename: str = "green_report",
    html: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
) -> ReportFiles:
    """Build the report of a run directory and write it there (or into ``out_dir``).

    Writes ``{filename}.md``, ``{filename}.html`` and the PNGs in ``{filename}_files/``.

    Raises:
        RunDirError: ``run_dir`` is not a readable run directory.
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    doc = build_report(run, metric=metric, mode=mode, target=target)
    return doc.write(Path(out_dir) if out_dir is not None else run.path, filename, html_page=html)


# ------------------------------------------------------------------------------------------------ sections
def _summary(doc: Document, run: Run, metric: str | None, mode: str, hit: TargetResult | None) -> None:
    doc.heading("Summary")
    total, time_s = run.total_energy_j, run.time_s
    fit = run.stage("fit") or {}
    rows = [
        ["fit energy", f"{fmt_energy(total)} ({run.label})"],
        ["fit time (metered)", fmt_seconds(time_s)],
        ["average power", f"{total / time_s:.1f} W" if total is not None and time_s else "n/a"],
        ["CO₂", f"{fit['gco2e']:.4g} gCO2e" if "gco2e" in fit else "n/a"],
        ["optimizer steps / samples", f"{fit.get('steps', 'n/a')} / {fit.get('samples', 'n/a')}"],
    ]
    if metric is not None:
        rows.append([f"final {metric}", fmt_num(run.final_metric(metric))])
        rows.append([f"best {metric} ({mode})", fmt_num(run.best_metric(metric, mode))])
    if hit is not None:
        sign = target_sign(hit.mode)
        partial = hit.logged_from_epoch
        if hit.reached and partial is not None:  # reached by this epoch; maybe earlier, in the epochs not logged here
            where = f"(by epoch {hit.epoch}; epochs before {partial} are not in this log)"
            rows.append([f"energy to {metric} {sign} {hit.target:g}", f"≤ {fmt_energy(hit.energy_j)} {where}"])
            rows.append([f"time to {metric} {sign} {hit.target:g}", fmt_bound_seconds(hit.time_s)])
        elif hit.reached:
            rows.append(
                [f"energy to {metric} {sign} {hit.target:g}", f"{fmt_energy(hit.energy_j)} (epoch {hit.epoch})"]
            )
            rows.append([f"time to {metric} {sign} {hit.target:g}", fmt_seconds(hit.time_s)])
        elif partial is not None:
            rows.append(
                [
                    f"target {metric} {sign} {hit.target:g}",
                    f"not reached from epoch {partial} on (epochs before it are not in this log)",
                ]
            )
        else:
            rows.append([f"target {metric} {sign} {hit.target:g}", "not reached"])
    macs, params = run.macs()
    dense = run.dense_macs()
    if macs is not None:
        unit, per = run.macs_unit()
        speed = f" ({dense / macs:.2f}× fewer than dense)" if dense and macs and dense != macs else ""
        rows.append([f"model MACs per {unit} (final)", fmt_macs(macs / per) + speed])
    if params is not None:
        rows.append(["model parameters (final)", f"{int(params):,}"])
    doc.table(["", "value"], rows)


def _energy(doc: Document, run: Run) -> None:
    images = [
        ("energy_per_epoch.png", plots.energy_per_epoch, "Energy per epoch by component"),
        ("average_power.png", plots.average_power, "Average power over training"),
    ]
    made = _images(run, images)
    if made:
        doc.heading("Energy", level=2)
        for args in made:
            doc.image(*args)


def _images(run: Run, specs: list[tuple[str, Callable[[Run], bytes | None], str]]) -> list[Any]:
    out = []
    for name, fn, alt in specs:
        png = fn(run)
        if png is not None:
            out.append((name, png, alt))
    return out


def _totals(doc: Document, run: Run) -> None:
    stages = run.energy.get("stages", {})
    if not stages:
        return
    doc.heading("Totals by stage")
    rows = []
    with_tokens = any(s.get("tokens") for s in stages.values())  # J/token only for language-model runs
    for stage, s in stages.items():
        e, t, n = s["energy_j"], s.get("time_s", 0.0), s.get("samples", 0)
        tokens = s.get("tokens", 0)
        srcs = s.get("sources", {})
        rows.append(
            [
                stage,
                *("–" if srcs.get(c) == "none" else fmt_energy(e.get(c)) for c in COMPONENTS),
                fmt_energy(e["total"]),
                fmt_seconds(t),
                f"{e['total'] / t:.1f}" if t else "n/a",
                f"{e['total'] / n:.3g}" if n else "n/a",
                *([f"{e['total'] / tokens:.3g}" if tokens else "n/a"] if with_tokens else []),
                f"{s.get('gco2e', 0.0):.4g}",
                s.get("label", ""),
            ]
        )
    head = ["stage", *COMPONENTS, "total", "time", "avg W", "J/sample", *(["J/token"] if with_tokens else [])]
    doc.table([*head, "gCO2e", "label"], rows)
    validate = stages.get("validate")
    if "fit" in stages and validate and (validate.get("steps") or validate["energy_j"].get("total")):
        # energy_report.json does not say whose validation the row is: a stand-alone `trainer.validate()` after the
        # fit replaces the fit's validation there. The note holds either way.
        doc.paragraph(
            "The fit row includes any validation run during the fit. The `validate` row is validation on its own: "
            "the fit's, or, when `trainer.validate()` ran after the fit, that last stand-alone run (not part of fit).",
            note=True,
        )


def _measured_vs_estimated(doc: Document, run: Run) -> None:
    fit = run.stage("fit")
    if not fit:
        return
    doc.heading("Measured vs estimated")
    total = float(fit["energy_j"]["total"]) or 1.0
    sources = fit.get("sources", {})
    rows = []
    by_kind = {"measured": 0.0, "estimated": 0.0}
    for c in COMPONENTS:
        src = sources.get(c, "none")
        j = float(fit["energy_j"].get(c, 0.0))
        if src in by_kind:
            by_kind[src] += j
        rows.append(
            [c, src, fmt_energy(j) if src != "none" else "–", f"{100 * j / total:.1f} %" if src != "none" else "–"]
        )
    rows.append(
        [
            "measured (hardware counters)",
            "",
            fmt_energy(by_kind["measured"]),
            f"{100 * by_kind['measured'] / total:.1f} %",
        ]
    )
    rows.append(
        ["estimated (model)", "", fmt_energy(by_kind["estimated"]), f"{100 * by_kind['estimated'] / total:.1f} %"]
    )
    doc.table(["component", "source", "fit energy", "share"], rows)
    meter = run.energy.get("meter") or {}
    est = run.energy.get("estimate") or {}
    gpus = meter.get("gpu_indices") or []
    gpu_text = f"GPUs {gpus} via {meter.get('gpu_method')}" if gpus else "no GPU metered"
    doc.paragraph(
        f"Meter: {gpu_text}; CPU/DRAM: "
        f"{meter.get('cpu', 'n/a')}. Estimate model: {est.get('cpu_w_per_core', 'n/a')} W per busy core × process "
        f"CPU time, {est.get('dram_w_per_gb', 'n/a')} W/GB × resident memory (`lightning_green.energy.estimate`).",
        note=True,
    )


_NO_SCALARS = (
    f"No logged metrics could be read back ({NO_SCALARS_WHY}). Metric curves, energy-to-target and time-to-target "
    "are left out."
)


def _forecast_text(forecast: dict[str, Any], energy: dict[str, Any]) -> str:
    """The fit's forecast, with what it was made for and, once the fit ended short of that, that it did.

    Example:
        >>> fc = {"total_j": 600.0, "gco2e": 0.01, "after_epochs": 1, "max_epochs": 10, "max_steps": None}
        >>> _forecast_text(fc, {"status": "complete", "stages": {"fit": {"epochs_j": [60.0, 60.0], "steps": 8}}})
        '600.0 J → 0.01 gCO2e (after 1 epoch, for max_epochs=10; the fit ended after 2 epochs, before that bound)'
        >>> _forecast_text({**fc, "max_time_s": 3600.0}, {"status": "complete", "stages": {}})
        '600.0 J → 0.01 gCO2e (after 1 epoch, for max_epochs=10 / max_time=3600s)'
    """
    text = f"{fmt_energy(forecast.get('total_j'))} → {forecast.get('gco2e', 0.0):.4g} gCO2e"
    bounds = {k: forecast.get(k) for k in ("max_epochs", "max_steps") if isinstance(forecast.get(k), int)}
    timed = forecast.get("max_time_s")
    if isinstance(timed, (int, float)):
        bounds["max_time"] = f"{timed:g}s"  # type: ignore[assignment]
    if not bounds:
        return text  # an older report records no basis
    after = forecast.get("after_epochs")
    made = f"after {after} epoch{'s' if after != 1 else ''}, " if isinstance(after, int) else ""
    text += f" ({made}for {' / '.join(f'{k}={v}' for k, v in bounds.items())}"
    fit = (energy.get("stages") or {}).get("fit") or {}
    epochs, steps = len(fit.get("epochs_j") or []), fit.get("steps")
    short = (
        "max_time" not in bounds
        and epochs < bounds.get("max_epochs", epochs + 1)
        and (not isinstance(steps, (int, float)) or steps < bounds.get("max_steps", steps + 1))
    )
    if energy.get("status") == "complete" and short:
        text += f"; the fit ended after {epochs} epoch{'s' if epochs != 1 else ''}, before that bound"
    return text + ")"


def _carbon(doc: Document, run: Run) -> None:
    carbon = run.energy.get("carbon") or {}
    if not carbon:
        return
    doc.heading("CO₂")
    rows = [
        [
            "carbon intensity",
            f"{carbon.get('intensity_g_per_kwh', 0):g} gCO2e/kWh ({carbon.get('intensity_source', '?')})",
        ],
        ["PUE", f"{carbon.get('pue', 1.0):.2f}"],
    ]
    if carbon.get("extrapolated"):
        rows.append(["⚠ intensity trace", str(carbon["extrapolated"])])
    if carbon.get("source_note"):
        rows.append(["⚠ intensity source", str(carbon["source_note"])])
    for stage, s in run.energy.get("stages", {}).items():
        rows.append([f"{stage}: energy → CO₂", f"{s.get('kwh', 0.0):.4g} kWh → {s.get('gco2e', 0.0):.4g} gCO2e"])
    forecast = run.energy.get("forecast")
    if forecast:
        rows.append(["forecast (fit)", _forecast_text(forecast, run.energy)])
    schedule = run.extra("carbon_schedule") or {}
    if schedule:
        rows.append(
            ["carbon-aware pauses", f"{fmt_seconds(schedule.get('paused_s'))} (deadline {schedule.get('deadline')})"]
        )
    doc.table(["", "value"], rows)
    doc.paragraph(f"Formula: {carbon.get('formula', 'gCO2e = kWh × intensity × PUE')}.", note=True)
    for args in _images(
        run,
        [
            ("carbon_intensity.png", carbon_plots.intensity_and_co2_rate, "Grid intensity and CO2 rate over time"),
            ("carbon_plan.png", carbon_plots.carbon_plan, "Carbon-aware plan against the forecast intensity"),
        ],
    ):
        doc.image(*args)


def _metric(doc: Document, run: Run, metric: str, hit: TargetResult | None) -> None:
    curve = run.curve(metric)
    if not curve:
        return
    doc.heading(f"Validation: {metric}")
    png = plots.metric_vs_energy(run, metric, hit)
    if png is not None:
        doc.image("metric_vs_energy.png", png, f"{metric} vs cumulative energy")
    rows = [
        [
            str(cp.epoch) if cp.epoch is not None else "?",
            str(cp.step),
            fmt_num(cp.value),
            fmt_energy(cp.energy_j),
            fmt_seconds(cp.time_s),
        ]
        for cp in curve
    ]
    doc.table(["epoch", "step", metric, "cumulative energy", "elapsed"], rows)


def _pruning(doc: Document, run: Run) -> None:
    macs = run.scalars.series("pruning/macs")
    if not macs:
        return
    doc.heading("Pruning")
    png = plots.macs_per_prune(run)
    if png is not None:
        doc.image("macs_per_prune.png", png, "MACs per pruning step")
    params = run.scalars.series("pruning/params")
    speed = run.scalars.series("pruning/speedup")
    steps = run.scalars.series("pruning/step")
    dense = run.dense_macs()
    unit, per = run.macs_unit()
    rows = []
    if dense:
        dense_params = (run.extra("model") or {}).get("params_start")
        rows.append(["dense", "–", fmt_macs(dense / per), f"{int(dense_params):,}" if dense_params else "n/a", "1.00×"])
    for i, p in enumerate(macs):
        rows.append(
            [
                str(int(steps[i].value)) if i < len(steps) else str(i + 1),
                str(p.step),
                fmt_macs(p.value / per),
                f"{int(params[i].value):,}" if i < len(params) else "n/a",
                f"{speed[i].value:.2f}×" if i < len(speed) else "n/a",
            ]
        )
    doc.table(["prune", "global step", f"MACs/{unit}", "params", "speedup"], rows)


def _precision(doc: Document, run: Run) -> None:
    mode = run.scalars.series("precision/mode")
    if not mode:
        return
    doc.heading("Precision")
    png = plots.precision_mode(run)
    if png is not None:
        doc.image("precision_mode.png", png, "Precision mode over training")
    names = plots.PRECISION_NAMES
    switches = [
        [str(b.step), names.get(a.value, f"{a.value:g}"), names.get(b.value, f"{b.value:g}")]
        for a, b in zip(mode, mode[1:], strict=False)
        if a.value != b.value
    ]
    first = names.get(mode[0].value, f"{mode[0].value:g}")
    doc.paragraph(f"Started in {first}; {len(switches)} switch(es) seen at the logging points.")
    if switches:
        doc.table(["≈ step", "from", "to"], switches)
    doc.heading("Fallbacks", level=3)
    rows = [[str(p.step), f"{int(p.value)}"] for p in run.scalars.increases("precision/fallbacks")]
    skipped = run.scalars.last("precision/skipped_steps")
    if rows:
        doc.table(["≈ step", "fallbacks so far"], rows)
    else:
        doc.paragraph("No fallback to fp32.")
    if skipped is not None:
        doc.paragraph(f"Optimizer steps skipped for non-finite loss or gradients: {int(skipped.value)}.")
    overflows = run.scalars.last("precision/overflows")
    if overflows is not None and overflows.value:
        doc.paragraph(f"fp16 updates the grad scaler skipped (gradient overflow): {int(overflows.value)}.")


def _power(doc: Document, run: Run) -> None:
    section = run.extra("power_limit") or {}
    png = plots.power_limit(run)
    if png is None and not section:
        return
    doc.heading("GPU power limit")
    if png is not None:
        doc.image("power_limit.png", png, "GPU power limit over training")
    if section:
        chosen = section.get("chosen_limit_w")
        doc.paragraph(
            f"Objective {section.get('objective', '?')} (eta {section.get('eta', '?')}) on "
            f"{section.get('gpu_name', '?')}: chose {fmt_num(chosen)} W after {section.get('profiling_steps', '?')} "
            "profiling steps."
        )
        rows = [
            [
                f"{r['limit_w']:.0f}{' ✓' if chosen is not None and r['limit_w'] == chosen else ''}",
                fmt_num(r.get("energy_j")),
                fmt_num(r.get("time_s")),
                fmt_num(r.get("avg_power_w")),
                fmt_num(r.get("cost")),
            ]
            for r in section.get("table", [])
        ]
        if rows:
            doc.table(["limit (W)", "energy/step (J)", "time/step (s)", "avg power (W)", "cost/step"], rows)


def _inference(doc: Document, run: Run) -> None:
    """The ``inference_cost`` section ``lightning-green bench-inference`` stores (see ``lightning_green.export``)."""
    section = run.extra("inference_cost") or {}
    if not section.get("rows"):
        return
    from lightning_green.export.bench import format_ratio, input_basis

    unit = section.get("unit", "prediction")
    doc.heading("Inference cost")
    doc.paragraph(
        f"Per 1,000 {unit}s on {section.get('device', '?')} with {section.get('threads', '?')} thread(s) for PyTorch "
        f"and ONNX Runtime alike; each call is {input_basis(unit, section.get('input_shapes'))}; models run side by "
        f"side in alternating order; energy {section.get('label', '?')}."
    )
    doc.table(
        ["model", "format", "batch", "median latency", "p90 latency", f"{unit}s/s", f"energy / 1k {unit}s", "label"],
        [
            [
                str(r["model"]),
                str(r["format"]),
                str(r["batch_size"]),
                f"{r['latency_ms_median']:.3g} ms",
                f"{r['latency_ms_p90']:.3g} ms",
                fmt_num(r["throughput_per_s"]),
                fmt_energy_sig(r["energy_per_1k_j"]),
                str(r["label"]),
            ]
            for r in section["rows"]
        ],
    )
    ratios = section.get("ratios") or []
    if ratios:
        base = section.get("baseline", "baseline")
        doc.table(
            ["format", "batch", f"energy vs {base}", f"latency vs {base}", f"energy vs {base} eager"],
            [
                [
                    str(q["format"]),
                    str(q["batch_size"]),
                    format_ratio(q.get("energy_per_1k_ratio")),
                    format_ratio(q.get("latency_ratio")),
                    format_ratio(q.get("energy_per_1k_ratio_vs_baseline_eager")),
                ]
                for q in ratios
            ],
        )


def _data(doc: Document, run: Run) -> None:
    """DataPruning's section: samples processed against the full data (energy-to-target is in the summary)."""
    section = run.extra("data")
    if not isinstance(section, dict):
        return
    doc.heading("Data pruning")
    seen, full = section.get("samples_seen"), section.get("samples_full_data")
    ratio = section.get("samples_ratio")
    rows = [
        ["method", str(section.get("method", "n/a"))],
        ["prune ratio / annealed share of epochs", f"{section.get('prune_ratio')} / {section.get('anneal_fraction')}"],
        ["samples processed", f"{seen:,}" if isinstance(seen, int) else "n/a"],
        ["samples of the full data over the same epochs", f"{full:,}" if isinstance(full, int) else "n/a"],
        ["samples saved", f"{section.get('samples_saved', 0):,}" + (f" ({1 - ratio:.1%})" if ratio else "")],
    ]
    doc.table(["", "value"], rows)
    kept = [k for k in section.get("kept_per_epoch") or [] if isinstance(k, (int, float))]
    if not kept:
        return
    # `kept_per_epoch` counts the samples each epoch keeps of the whole training set (`training_samples`);
    # `samples_full_data` counts what the epochs load, under `limit_train_batches`: a share of one in the other is no
    # share. DataPruning logs the share of a full-data epoch's loads (`data/kept_fraction`) each epoch, which under
    # `limit_train_batches` is another figure than the share of the training set kept.
    n = section.get("training_samples")
    kept_shares = [k / n for k in kept] if isinstance(n, int) and n > 0 else []
    if kept_shares:
        doc.paragraph(
            f"Kept per epoch (of the training set's {n:,} samples): " + ", ".join(f"{f:.0%}" for f in kept_shares) + "."
        )
    else:
        doc.paragraph("Kept per epoch (samples of the training set): " + ", ".join(f"{int(k):,}" for k in kept) + ".")
    loaded = [f for f in run.scalars.values("data/kept_fraction") if math.isfinite(f)]
    if len(loaded) != len(kept):
        per_epoch = full / len(kept) if isinstance(full, (int, float)) and full > 0 else None
        loaded = [k / per_epoch for k in kept] if per_epoch and max(kept) <= per_epoch else []
    if loaded and (not kept_shares or any(abs(a - b) > 0.005 for a, b in zip(loaded, kept_shares, strict=True))):
        doc.paragraph(
            "Loaded per epoch (of what an epoch on all the data loads, under the Trainer's limits): "
            + ", ".join(f"{f:.0%}" for f in loaded)
            + "."
        )


def _other_sections(doc: Document, run: Run) -> None:
    extra = run.energy.get("extra") or {}
    others = {k: v for k, v in extra.items() if k not in _KNOWN_EXTRA}
    if not others:
        return
    doc.heading("Other report sections")
    rows = []
    for name, data in others.items():
        items = data.items() if isinstance(data, dict) else [("", data)]
        for key, value in items:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append([name, str(key), text if len(text) <= 200 else text[:197] + "..."])
    doc.table(["section", "key", "value"], rows)
