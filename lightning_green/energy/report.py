"""The energy report: raw joules per stage, component and rank, written atomically as JSON, and a summary table."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_green.energy.carbon import format_energy
from lightning_green.energy.meter import COMPONENTS

__all__ = [
    "REPORT_VERSION",
    "format_summary",
    "is_energy_report",
    "read_report",
    "write_bytes_atomic",
    "write_json_atomic",
]

REPORT_VERSION = 1


def _file_mode() -> int:
    # mkstemp creates 0600 files; a report (or a shared profile cache) should get the usual umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a torn file.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, then renamed over ``path``
    (``os.replace`` is atomic on POSIX and Windows). The file gets the mode a plain ``open`` would give it.

    Example:
        >>> import tempfile, pathlib
        >>> write_bytes_atomic(pathlib.Path(tempfile.mkdtemp()) / "x.txt", b"hi").read_bytes()
        b'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # e.g. a file system without POSIX modes
            os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _remove_stale_temporaries(path)
    return path


# A writer's temporary file lives for the few milliseconds of one write; one this old was left by a killed process.
_STALE_AFTER_S = 600.0


def _remove_stale_temporaries(path: Path) -> None:
    """The temporary files of ``path`` that a killed writer left (``kill -9`` between creating and renaming one)."""
    now = time.time()
    for name in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if now - os.stat(name).st_mtime > _STALE_AFTER_S:
                os.unlink(name)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as JSON atomically (see :func:`write_bytes_atomic`); nothing is written if it cannot serialise.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> json.loads(write_json_atomic(d / "r.json", {"a": 1}).read_text())
        {'a': 1}
    """
    return write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_STAGE_NUMBERS = ("time_s", "samples", "steps", "tokens", "kwh", "gco2e")
_TOP_SECTIONS = ("carbon", "meter", "estimate", "forecast", "extra")
_EXTRA_SECTIONS = ("power_limit", "model", "inference_cost", "carbon_schedule")  # sections the report reads as dicts


def _stage_problem(name: str, stage: Any) -> str | None:
    """What is wrong with one stage of a report (``None`` if nothing)."""
    if not isinstance(stage, dict) or not isinstance(stage.get("energy_j"), dict) or "total" not in stage["energy_j"]:
        return f"stage {name!r} has no 'energy_j' total"
    for key, value in stage["energy_j"].items():
        if not _is_number(value):
            return f"stage {name!r}: energy_j[{key!r}] is {value!r}, not a finite number"
    for key in _STAGE_NUMBERS:
        if key in stage and not _is_number(stage[key]):
            return f"stage {name!r}: {key!r} is {stage[key]!r}, not a finite number"
    epochs = stage.get("epochs_j", [])
    if not isinstance(epochs, list) or not all(_is_number(e) for e in epochs):
        return f"stage {name!r}: 'epochs_j' is not a list of finite numbers"
    for key in ("sources", "per_rank"):
        kind = dict if key == "sources" else list
        if key in stage and not isinstance(stage[key], kind):
            return f"stage {name!r}: {key!r} is {stage[key]!r}, not a {kind.__name__}"
    if "label" in stage and not isinstance(stage["label"], str):
        return f"stage {name!r}: 'label' is {stage['label']!r}, not a string"
    return None


def _report_problem(data: dict[str, Any]) -> str | None:
    """What makes ``data`` (a JSON object with 'stages' and 'version') unreadable as an energy report, if anything."""
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"'version' is {version!r}, not a report version (1 to {REPORT_VERSION})"
    if version > REPORT_VERSION:
        return (
            f"it is report version {version}, written by a newer lightning-green (this one reads up to "
            f"{REPORT_VERSION}); upgrade lightning-green to read it"
        )
    stages = data["stages"]
    if not isinstance(stages, dict):
        return "'stages' is not a mapping"
    for name, stage in stages.items():
        problem = _stage_problem(name, stage)
        if problem:
            return problem
    for key in _TOP_SECTIONS:
        nullable = key in ("meter", "forecast")  # null when there was no meter / no forecast yet
        if key in data and not isinstance(data[key], dict) and not (nullable and data[key] is None):
            return f"{key!r} is {data[key]!r}, not a mapping"
    for key in _EXTRA_SECTIONS:
        section = data.get("extra", {}).get(key)
        if section is not None and not isinstance(section, dict):
            return f"extra[{key!r}] is {section!r}, not a mapping"
    for key in ("status", "created", "started"):
        if key in data and not isinstance(data[key], str):
            return f"{key!r} is {data[key]!r}, not a string"
    return None


_REPORT_MAX_BYTES = 64 * 2**20


def is_energy_report(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an existing lightning-green energy report (JSON with ``stages`` and ``version``).

    A quick test of what a file is (e.g. before writing over it), not of its contents: see :func:`read_report`.
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > _REPORT_MAX_BYTES:
            return False
        with open(path, "rb") as f:
            if f.read(64).lstrip()[:1] != b"{":
                return False
            f.seek(0)
            data = json.load(f)
    except (OSError, ValueError):  # unreadable or not JSON (UnicodeDecodeError is a ValueError): not a report
        return False
    return isinstance(data, Mapping) and "stages" in data and "version" in data


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an energy report, checking that it is one, of a version this lightning-green reads, with sound values.

    Raises:
        ValueError: The file is not JSON, not an energy report, a newer version's, or holds a value of the wrong type
            (the message says which).
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "stages" not in data or "version" not in data:
        raise ValueError(f"{os.fspath(path)!r} is not a lightning-green energy report (no 'stages'/'version').")
    bad = _report_problem(data)
    if bad:
        raise ValueError(f"{os.fspath(path)!r} is not a well-formed lightning-green energy report: {bad}.")
    return data


def format_summary(report: Mapping[str, Any]) -> str:
    """A plain-text table of a report: one row per stage, energy per component, power, J/sample, CO₂ and the labels.

    A ``J/token`` column is added when a stage counted tokens (batches with ``input_ids``/``attention_mask``).

    Example:
        >>> from lightning_green.energy.carbon import CarbonModel
        >>> r = {"carbon": CarbonModel(100.0).as_dict(), "stages": {"fit": {
        ...     "energy_j": {"gpu": 0.0, "cpu": 300.0, "dram": 60.0, "total": 360.0},
        ...     "sources": {"gpu": "none", "cpu": "estimated", "dram": "estimated"}, "label": "estimated",
        ...     "time_s": 12.0, "samples": 1200, "gco2e": 0.01}}}
        >>> print(format_summary(r))  # doctest: +NORMALIZE_WHITESPACE
        lightning-green energy summary (carbon intensity 100 g/kWh (user), PUE 1.00)
        stage      gpu        cpu        dram       total      avg W     J/sample   gCO2e      label
        fit        -          300.0 J    60.0 J     360.0 J    30.0      0.3        0.01       estimated
        >>> r["carbon"] = {"intensity_g_per_kwh": 135.5991, "intensity_source": "trace: grid.csv", "pue": 1.1}
        >>> format_summary(r).splitlines()[0][31:]
        "(carbon intensity 135.6 g/kWh, the fit's energy-weighted mean of the trace: grid.csv, PUE 1.10)"
    """
    carbon = report.get("carbon", {})
    src = str(carbon.get("intensity_source", ""))
    value = float(carbon.get("intensity_g_per_kwh", 0) or 0)
    if src.startswith("default"):
        intensity = f"{value:g} g/kWh (default)"
    elif src in ("user", ""):
        intensity = f"{value:g} g/kWh (user)"
    else:  # a trace, a function or an online source: the fit's energy-weighted mean of it
        intensity = f"{value:.1f} g/kWh, the fit's energy-weighted mean of the {src}"
    head = f"lightning-green energy summary (carbon intensity {intensity}, PUE {carbon.get('pue', 1.0):.2f})"
    stages = report.get("stages", {})
    with_tokens = any(s.get("tokens") for s in stages.values())  # J/token only for language-model runs
    cols = ["stage", *COMPONENTS, "total", "avg W", "J/sample", *(["J/token"] if with_tokens else []), "gCO2e", "label"]
    rows = [cols]
    for stage, s in stages.items():
        e = s["energy_j"]
        sources = s.get("sources", {})
        t = s.get("time_s", 0.0)
        samples = s.get("samples", 0)
        tokens = s.get("tokens", 0)
        per_token = [f"{e['total'] / tokens:.3g}" if tokens else "-"] if with_tokens else []
        rows.append(
            [
                stage,
                *("-" if sources.get(c) == "none" else format_energy(e.get(c, 0.0)) for c in COMPONENTS),
                format_energy(e["total"]),
                f"{e['total'] / t:.1f}" if t > 0 else "-",
                f"{e['total'] / samples:.3g}" if samples else "-",
                *per_token,
                f"{s.get('gco2e', 0.0):.3g}",
                s.get("label", ""),
            ]
        )
    lines = [head] + ["".join(f"{c:<11}" for c in r).rstrip() for r in rows]
    return "\n".join(lines)
