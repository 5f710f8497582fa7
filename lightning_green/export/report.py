"""The "inference cost" section of a run's green report: where the benchmark result goes and how it reads back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_green._internal.validation import InvalidArgumentError

__all__ = ["SECTION", "attach_to_run", "check_run_dir", "find_run_dir", "headline"]

#: Name of the section in the energy report's ``extra`` (and in the green report).
SECTION = "inference_cost"
ENERGY_REPORT = "energy_report.json"


def find_run_dir(ckpt_path: str | os.PathLike, energy_report: str = ENERGY_REPORT) -> Path | None:
    """The run directory a checkpoint belongs to: the nearest folder above it holding ``energy_report.json``.

    Lightning writes checkpoints to ``<run folder>/checkpoints/`` (``ModelCheckpoint``'s default, also with W&B or
    MLflow loggers, whose run folder the EnergyMonitor uses), so this is usually the checkpoint's grandparent.
    """
    p = Path(ckpt_path).resolve().parent
    for _ in range(3):
        if (p / energy_report).is_file():
            return p
        p = p.parent
    return None


def check_run_dir(run_dir: str | os.PathLike, energy_report: str = ENERGY_REPORT) -> Path:
    """The energy report of ``run_dir`` that :func:`attach_to_run` rewrites, checked before any benchmark is run.

    Raises:
        ValueError: ``run_dir`` holds no energy report, or no new file can be created in it (the report is rewritten
            atomically: a new file, then a rename).
    """
    from lightning_green.export.load import cannot_create_in

    path = Path(run_dir) / energy_report
    if not path.is_file():
        raise InvalidArgumentError(
            f"bench-inference(run_dir={os.fspath(run_dir)!r}): `run_dir` must be a fit run's log dir holding "
            f"{energy_report}."
        )
    err = cannot_create_in(run_dir)
    if err is not None:
        raise InvalidArgumentError(
            f"bench-inference(run_dir={os.fspath(run_dir)!r}): `run_dir` must be writable to add the inference cost "
            f"to its report; creating a file there failed ({err})."
        )
    return path


def attach_to_run(
    run_dir: str | os.PathLike, result: dict[str, Any], regenerate: bool = True, energy_report: str = ENERGY_REPORT
) -> Path:
    """Store ``result`` (a benchmark's ``as_dict()``) as the ``inference_cost`` section of the run's energy report.

    The energy report is rewritten atomically; with ``regenerate`` the run's green report is written again so it
    shows the section, with the settings its GreenReport recorded (file name, metric, target, HTML page; see
    :func:`~lightning_green.report.green.report_settings`). Returns the energy report's path.

    Raises:
        ValueError: ``run_dir`` is not a run directory.
    """
    from lightning_green.energy.report import read_report, write_json_atomic

    path = check_run_dir(run_dir, energy_report)
    if callable(getattr(result, "as_dict", None)):  # a BenchResult itself
        result = result.as_dict()
    report = read_report(path)
    report.setdefault("extra", {})[SECTION] = result
    try:
        write_json_atomic(path, report)
    except OSError as err:  # e.g. an immutable report in a writable folder: the rename is refused
        raise InvalidArgumentError(
            f"bench-inference(run_dir={os.fspath(run_dir)!r}): `run_dir` must let its {energy_report} be replaced to "
            f"add the inference cost; that failed ({err.strerror or err}). The report is unchanged."
        ) from None
    if regenerate:
        from lightning_green.report import load_run, write_report
        from lightning_green.report.green import report_settings

        run = load_run(Path(run_dir), energy_report=energy_report)
        write_report(run, **report_settings(run))
    return path


def headline(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figure a comparison shows for a run: the benchmarked model's lowest energy per 1k, with its format/batch.

    Example:
        >>> headline({"subject": "pruned", "unit": "prediction", "rows": [
        ...     {"model": "pruned", "format": "eager", "batch_size": 64, "energy_per_1k_j": 2.0, "label": "estimated"},
        ...     {"model": "pruned", "format": "onnx", "batch_size": 64, "energy_per_1k_j": 1.5, "label": "estimated"},
        ...     {"model": "dense", "format": "onnx", "batch_size": 64, "energy_per_1k_j": 0.5, "label": "estimated"}]})
        {'energy_per_1k_j': 1.5, 'format': 'onnx', 'batch_size': 64, 'unit': 'prediction', 'label': 'estimated'}
    """
    if not section or not section.get("rows"):
        return None
    rows = section["rows"]
    subject = section.get("subject") or rows[0]["model"]
    mine = [r for r in rows if r.get("model") == subject] or rows
    best = min(mine, key=lambda r: r["energy_per_1k_j"])
    return {
        "energy_per_1k_j": best["energy_per_1k_j"],
        "format": best["format"],
        "batch_size": best["batch_size"],
        "unit": section.get("unit", "prediction"),
        "label": best.get("label", "?"),
    }
