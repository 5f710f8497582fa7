"""Several runs side by side: energy-to-target, time-to-target, final metric, MACs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_green.export.report import headline
from lightning_green.report import plots
from lightning_green.report.document import Document, ReportFiles
from lightning_green.report.green import (
    fmt_bound_seconds,
    fmt_energy,
    fmt_energy_sig,
    fmt_macs,
    fmt_num,
    fmt_seconds,
    report_settings,
    resolve_mode,
)
from lightning_green.report.run import METRIC_CANDIDATES, Run, RunDirError, TargetResult, target_sign
from lightning_green.report.scalars import NO_SCALARS_WHY

__all__ = ["Comparison", "ComparisonRow", "compare_runs", "comparison_table", "format_comparison", "write_comparison"]


@dataclass(frozen=True)
class ComparisonRow:
    """One run's figures in a comparison."""

    name: str
    path: str
    final: float | None
    best: float | None
    target: TargetResult
    energy_j: float | None
    time_s: float | None
    macs: float | None
    dense_macs: float | None
    label: str
    macs_unit: str = "sample"  # MACs (and dense MACs) per "sample", or per "token" for a language model
    inference: dict[str, Any] | None = None
    samples: int | None = None  # samples processed in training, from DataPruning's report section
    status: str = "complete"  # the energy report's: "interrupted: <exception>" for a run that did not finish


@dataclass(frozen=True)
class Comparison:
    """Runs compared on one metric and target; ratios are against the first run."""

    metric: str
    mode: str
    target: float
    target_source: str
    rows: tuple[ComparisonRow, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "target": self.target,
            "target_source": self.target_source,
            "runs": [{**asdict(r), "target": asdict(r.target)} for r in self.rows],
        }


def _common_metric(runs: Sequence[Run], metric: str | None) -> str:
    no_fit = [r.name for r in runs if not r.stage("fit")]
    if no_fit:  # a stand-alone validate/test run: nothing trained, no energy-to-target to compare
        raise RunDirError(
            f"no fit in: {', '.join(no_fit)} (a stand-alone validate/test/predict run); compare the runs of fits."
        )
    unreadable = [r.name for r in runs if not len(r.scalars)]
    if unreadable:
        raise RunDirError(f"no logged metrics could be read back in: {', '.join(unreadable)} ({NO_SCALARS_WHY}).")
    if metric is not None:
        missing = [r.name for r in runs if metric not in r.scalars]
        if missing:
            per_loader = [r.name for r in runs if r.logged_as(metric) not in (None, metric)]
            hint = (
                f" ({', '.join(per_loader)} logged it per validation dataloader: name one, e.g. --metric "
                f"{metric}/dataloader_idx_0)"
                if per_loader
                else ""
            )
            raise RunDirError(f"metric {metric!r} was not logged in: {', '.join(missing)}{hint}.")
        return metric
    for m in METRIC_CANDIDATES:
        keys = {r.logged_as(m) for r in runs}
        if len(keys) == 1 and None not in keys:  # the same key in every run (the first dataloader's, if per loader)
            return keys.pop()  # type: ignore[return-value]
    raise RunDirError(f"no validation metric common to all runs among {METRIC_CANDIDATES}; name one with --metric.")


def compare_runs(
    runs: Sequence[Run], metric: str | None = None, target: float | None = None, mode: str = "auto"
) -> Comparison:
    """Compare ``runs`` on ``metric`` (auto-detected if ``None``) against ``target``.

    Without a ``target`` the least good of the runs' best values is used, so that every run reaches it.

    Raises:
        RunDirError: No metric common to all runs, or the named one is missing from a run.
    """
    name = _common_metric(runs, metric)
    mode = resolve_mode(name, mode)
    source = "given"
    if target is None:
        bests = [r.best_metric(name, mode) for r in runs]
        finite = [b for b in bests if b is not None]
        if not finite:
            raise RunDirError(f"no finite value of {name!r} in the runs; cannot pick a target.")
        target = min(finite) if mode == "max" else max(finite)
        source = "the least good best value among the runs"
    inference = _like_for_like([r.extra("inference_cost") for r in runs])
    rows = []
    for r, inf in zip(runs, inference, strict=True):
        macs, _ = r.macs()
        unit, per = r.macs_unit()
        rows.append(
            ComparisonRow(
                name=r.name,
                path=str(r.path),
                final=r.final_metric(name),
                best=r.best_metric(name, mode),
                target=r.to_target(name, target, mode),
                energy_j=r.total_energy_j,
                time_s=r.time_s,
                macs=macs / per if macs is not None else None,
                dense_macs=dense / per if (dense := r.dense_macs()) is not None else None,
                macs_unit=unit,
                label=r.label,
                inference=inf,
                samples=(r.extra("data") or {}).get("samples_seen") if isinstance(r.extra("data"), dict) else None,
                status=r.status,
            )
        )
    return Comparison(name, mode, float(target), source, tuple(rows))


def _ratio(x: float | None, base: float | None) -> str:
    if x is None or base is None or base == 0:
        return "n/a"
    return f"{x / base:.2f}×"


def _target_cells(t: TargetResult, base: TargetResult) -> list[str]:
    """Energy-to-target, its ratio, time-to-target, its ratio; bounds (no ratio) for a log that starts mid-fit."""
    if t.logged_from_epoch is not None:  # a resumed run's new log dir: the epochs before it are not in it
        if not t.reached:
            return [f"not reached from epoch {t.logged_from_epoch}", "–", "not known", "–"]
        return [f"≤ {fmt_energy(t.energy_j)} (epoch ≤ {t.epoch})", "n/a", fmt_bound_seconds(t.time_s), "n/a"]
    if not t.reached:
        return ["not reached", "–", "not reached", "–"]
    exact = base.logged_from_epoch is None
    return [
        f"{fmt_energy(t.energy_j)} (epoch {t.epoch})",
        _ratio(t.energy_j, base.energy_j) if exact else "n/a",
        fmt_seconds(t.time_s),
        _ratio(t.time_s, base.time_s) if exact else "n/a",
    ]


def comparison_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (ratios against the first run)."""
    base = cmp.rows[0]
    header = [
        "run",
        f"final {cmp.metric}",
        f"best {cmp.metric}",
        "energy-to-target",
        "vs first",
        "time-to-target",
        "vs first",
        "total energy",
        "MACs/sample (LM: /token)" if any(r.macs_unit == "token" for r in cmp.rows) else "MACs/sample",
        "label",
    ]
    inference = any(r.inference for r in cmp.rows)
    if inference:  # only runs benchmarked with `lightning-green bench-inference` have it
        header += ["inference J/1k", "vs first"]
    rows = []
    for r in cmp.rows:
        t = r.target
        rows.append(
            [
                r.name if r.status == "complete" else f"{r.name} ({r.status})",
                fmt_num(r.final),
                fmt_num(r.best),
                *_target_cells(t, base.target),
                fmt_energy(r.energy_j),
                fmt_macs(r.macs) + ("/token" if r.macs_unit == "token" and r.macs is not None else ""),
                r.label,
            ]
        )
        if inference:
            rows[-1] += _inference_cells(r.inference, base.inference)
    if any(r.samples is not None for r in cmp.rows):  # a DataPruning run: samples processed
        at = header.index("label")
        header.insert(at, "samples")
        for row, r in zip(rows, cmp.rows, strict=True):
            row.insert(at, f"{r.samples:,}" if r.samples is not None else "all")
    return header, rows


def _subject_rows(section: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The benchmarked model's rows by (format, batch size)."""
    rows = section.get("rows") or []
    subject = section.get("subject") or (rows[0]["model"] if rows else None)
    mine = [r for r in rows if r.get("model") == subject] or rows
    return {(str(r["format"]), int(r["batch_size"])): r for r in mine}


def _like_for_like(sections: Sequence[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
    """Each run's inference figure, measured the same way as the first benchmarked run's where possible.

    Energy per 1,000 predictions depends on the format and even more on the batch size, so runs are compared at one
    (format, batch size) that every benchmarked run has — the one where the first run spends least. A run without it
    shows its own lowest figure, marked as not comparable.
    """
    by_key = [_subject_rows(s) if s and s.get("rows") else None for s in sections]
    first = next((s for s in sections if s and s.get("rows")), None)
    # Each run against the first benchmarked one: another device, thread count, unit or input is not like for like.
    differ = [_setup_difference([first, s]) if first is not None and rows is not None else None
              for s, rows in zip(sections, by_key, strict=True)]  # fmt: skip
    alike = [rows for rows, why in zip(by_key, differ, strict=True) if rows is not None and why is None]
    common = set.intersection(*(set(k) for k in alike)) if alike else set()
    key = min(common, key=lambda k: alike[0][k]["energy_per_1k_j"]) if common else None
    out: list[dict[str, Any] | None] = []
    for section, rows, why in zip(sections, by_key, differ, strict=True):
        if rows is None:
            out.append(None)
            continue
        top = dict(headline(section) or {})
        if key is not None and why is None:
            row = rows[key]
            top = {**top, "energy_per_1k_j": row["energy_per_1k_j"], "format": key[0], "batch_size": key[1]}
            top["label"] = row.get("label", "?")
        top["comparable"] = key is not None and why is None
        top["why_not"] = why or "no format and batch size benchmarked in every run measured alike"
        out.append(top)
    return out


# What a benchmark's figures depend on besides the format and batch size (the section's keys, and how to say them).
_SETUP = (
    ("unit", lambda s: f"per {s.get('unit', 'prediction')}"),
    ("device", lambda s: f"on {s.get('device', '?')}"),
    ("threads", lambda s: f"with {s.get('threads', '?')} thread(s)"),
    ("input_shapes", lambda s: f"input {s.get('input_shapes')}"),
)


def _setup_difference(sections: Sequence[dict[str, Any]]) -> str | None:
    """Why these benchmarks' figures are not like for like (unit, device, threads, input), or ``None`` if they are.

    A section from before ``input_shapes`` was recorded does not say its input: not compared on it.

    Example:
        >>> _setup_difference([{"device": "cpu", "threads": 2}, {"device": "cpu", "threads": 1}])
        'measured with 2 thread(s) vs with 1 thread(s)'
        >>> _setup_difference([{"device": "cpu", "threads": 1}, {"device": "cpu", "threads": 1}]) is None
        True
    """
    for key, say in _SETUP:
        have = [s for s in sections if s.get(key) is not None] if key == "input_shapes" else list(sections)
        values = [repr(s.get(key, "prediction" if key == "unit" else None)) for s in have]
        if len(set(values)) > 1:
            other = next(s for s, v in zip(have, values, strict=True) if v != values[0])
            return f"measured {say(have[0])} vs {say(other)}"
    return None


def _inference_cells(inf: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    """Energy per 1,000 predictions/tokens (its format and batch) and its ratio to the first run's, like for like."""
    if not inf:
        return ["n/a", "–"]
    unit = "tok" if inf["unit"] == "token" else "pred"
    text = f"{fmt_energy_sig(inf['energy_per_1k_j'])}/1k {unit} ({inf['format']}, b{inf['batch_size']}, {inf['label']})"
    if base is None:
        return [text, "–"]
    if not inf.get("comparable", True) or not base.get("comparable", True):
        why = inf.get("why_not") or "no format and batch size benchmarked in every run"
        return [text, "–" if inf is base else f"n/a ({why})"]
    same = (base.get("unit"), base.get("format"), base.get("batch_size")) == (
        inf["unit"],
        inf["format"],
        inf["batch_size"],
    )
    return [text, _ratio(inf["energy_per_1k_j"], base["energy_per_1k_j"]) if same else "–"]


def _unfinished(cmp: Comparison) -> list[str]:
    """One note per run whose figures are not like for like: unfinished (or no status), or a log that starts mid-fit."""
    notes = [
        f"run {r.name!r} records no status: whether it finished normally is not known."
        if r.status == "unknown"
        else f"run {r.name!r} did not finish normally ({r.status}): its figures cover only what ran, so it is not a "
        "like for like comparison."
        for r in cmp.rows
        if r.status != "complete"
    ]
    notes += [
        f"run {r.name!r} logged its validations from epoch {r.target.logged_from_epoch} on only (resumed into a new "
        "log dir): its energy- and time-to-target are upper bounds."
        if not r.target.reached or r.target.time_s is not None
        else f"run {r.name!r} logged its validations from epoch {r.target.logged_from_epoch} on only (resumed into a "
        "new log dir): its energy-to-target is an upper bound; its time-to-target is not known (no `time/elapsed_s` "
        "from GreenReport in its log, and the log's clock starts at the resume)."
        for r in cmp.rows
        if r.target.logged_from_epoch is not None
    ]
    return notes


def format_comparison(cmp: Comparison) -> str:
    """The comparison as a plain-text table."""
    header, rows = comparison_table(cmp)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    sign = target_sign(cmp.mode)
    lines = [f"target: {cmp.metric} {sign} {cmp.target:g} ({cmp.target_source})"]
    lines += [f"note: {note}" for note in _unfinished(cmp)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def write_comparison(
    runs: Sequence[Run],
    out_dir: str | os.PathLike[str],
    metric: str | None = None,
    target: float | None = None,
    mode: str = "auto",
    filename: str = "green_comparison",
    html: bool = True,
    reports: Sequence[str | os.PathLike[str] | ReportFiles | None] | None = None,
) -> tuple[Comparison, ReportFiles]:
    """Compare ``runs`` and write ``{filename}.md`` / ``.html`` with a metric-vs-energy plot into ``out_dir``.

    ``reports``: each run's green report as written (its Markdown path, or the :class:`ReportFiles` of
    :func:`~lightning_green.report.write_report`), listed in the "Runs" table; ``None`` (for all, or for one run): the
    Markdown file its GreenReport's recorded file name gives (``green_report.md`` without GreenReport).

    Raises:
        ValueError: ``reports`` does not have one entry per run.
    """
    if reports is not None and len(reports) != len(runs):
        raise ValueError(f"write_comparison: `reports` has {len(reports)} entries for {len(runs)} runs.")
    cmp = compare_runs(runs, metric=metric, target=target, mode=mode)
    doc = Document(f"Green comparison — {cmp.metric}")
    sign = target_sign(cmp.mode)
    doc.paragraph(
        f"Target: {cmp.metric} {sign} {cmp.target:g} ({cmp.target_source}). *energy-to-target* is the cumulative fit "
        "energy when the validation metric first reached the target; ratios are against the first run."
    )
    for note in _unfinished(cmp):
        doc.paragraph(note, note=True)
    header, rows = comparison_table(cmp)
    doc.table(header, rows)
    png = plots.compare_metric_vs_energy(runs, cmp.metric, [r.target for r in cmp.rows])
    if png is not None:
        doc.image("metric_vs_energy.png", png, f"{cmp.metric} vs cumulative energy, all runs")
    doc.heading("Runs")
    doc.table(
        ["run", "directory", "green report"],
        [
            [r.name, r.path, _report_path(run, reports[i] if reports is not None else None)]
            for i, (r, run) in enumerate(zip(cmp.rows, runs, strict=True))
        ],
    )
    return cmp, doc.write(out_dir, filename, html_page=html)


def _report_path(run: Run, written: str | os.PathLike[str] | ReportFiles | None) -> str:
    """The run's green report (Markdown): the file written for it, else the one its recorded settings name."""
    if isinstance(written, ReportFiles):
        return str(written.markdown)
    if written is not None:
        return os.fspath(written)
    return str(Path(run.path) / f"{report_settings(run)['filename']}.md")
