"""Scalars of a finished run, read back from the logger's files: TensorBoard event files or CSVLogger's metrics.csv.

Every logged value keeps its step, its order of appearance and (from CSV) its row, so a value can be looked up *as
logged together with* another (the validation time logged with a validation metric, say), not only by step.
"""

from __future__ import annotations

import bisect
import csv
import glob
import itertools
import logging
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Point", "Scalars", "find_scalar_files", "read_csv", "read_scalars", "read_tensorboard"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One logged value.

    Attributes:
        step: The logger's step.
        value: The value.
        order: Position among all values read from the run (file order).
        wall_time: Seconds since the epoch when TensorBoard wrote it (``None`` from CSV).
        row: The CSV row it was logged in (``None`` from TensorBoard).
    """

    step: int
    value: float
    order: int
    wall_time: float | None = None
    row: int | None = None


class Scalars:
    """Logged scalars by tag, each a list of :class:`Point` in the order they were written.

    Example:
        >>> s = Scalars.from_rows([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5, "acc": 0.7}])
        >>> s.values("loss"), s.last("acc").step
        ([2.0, 1.5], 1)
    """

    def __init__(self, source: str = "none") -> None:
        self.source = source
        #: What could not be read (a corrupt or truncated event file): the scalars are incomplete when not empty.
        self.problems: list[str] = []
        self._tags: dict[str, list[Point]] = {}
        self._by_step: dict[str, dict[int, list[Point]]] = {}  # at_step's index, per tag, built on first use
        self._max_up_to: dict[str, tuple[list[int], list[float]]] = {}  # max_up_to's: steps, running maxima
        self._order = 0

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, float]], source: str = "rows") -> Scalars:
        """Build from dicts of ``{"step": s, tag: value, ...}`` (one dict per log call, like CSV rows)."""
        out = cls(source)
        for i, row in enumerate(rows):
            step = int(row["step"])
            for tag, value in row.items():
                if tag != "step":
                    out.add(tag, step, float(value), row=i)
        return out

    def add(self, tag: str, step: int, value: float, wall_time: float | None = None, row: int | None = None) -> None:
        """Append one value (NaN/inf are kept: a run that diverged should show it)."""
        self._tags.setdefault(tag, []).append(Point(int(step), float(value), self._order, wall_time, row))
        self._by_step.pop(tag, None)
        self._max_up_to.pop(tag, None)
        self._order += 1

    def __contains__(self, tag: object) -> bool:
        return tag in self._tags and bool(self._tags[tag])

    def __len__(self) -> int:
        return sum(len(v) for v in self._tags.values())

    def tags(self) -> list[str]:
        """Tags with at least one value."""
        return [t for t, v in self._tags.items() if v]

    def series(self, tag: str) -> list[Point]:
        """All values of ``tag`` in written order (empty if never logged)."""
        return list(self._tags.get(tag, []))

    def values(self, tag: str) -> list[float]:
        """Just the values of ``tag``."""
        return [p.value for p in self._tags.get(tag, [])]

    def last(self, tag: str) -> Point | None:
        """The last value written for ``tag``."""
        points = self._tags.get(tag)
        return points[-1] if points else None

    def increases(self, tag: str) -> list[Point]:
        """The points where a running count ``tag`` went up (from 0 before the first point)."""
        out, prev = [], 0.0
        for p in self._tags.get(tag, []):
            if p.value > prev:
                out.append(p)
            prev = p.value
        return out

    def with_(self, tag: str, anchor: Point) -> Point | None:
        """The value of ``tag`` logged with ``anchor``.

        That is the value at ``anchor``'s step in its CSV row if there is one, else the nearest in written order
        (the earlier one on a tie).

        Lightning writes a hook's ``self.log`` values as one batch and a callback's direct ``log_metrics`` call as
        another, so values logged together sit next to each other in the files.
        """
        same_step, same_row = self.in_step_and_row(tag, anchor)
        if same_row is not None or not same_step:
            return same_row
        return min(same_step, key=lambda p: (abs(p.order - anchor.order), p.order))

    def in_step_and_row(self, tag: str, anchor: Point) -> tuple[list[Point], Point | None]:
        """The values of ``tag`` at ``anchor``'s step, and the one in ``anchor``'s CSV row (``None``: no such row)."""
        same_step = self.at_step(tag, anchor.step)
        same_row = next((p for p in same_step if p.row == anchor.row), None) if anchor.row is not None else None
        return same_step, same_row

    def at_step(self, tag: str, step: int) -> list[Point]:
        """The values of ``tag`` logged at ``step``, in written order."""
        index = self._by_step.get(tag)
        if index is None:  # a report asks for every validation's step: one pass per tag, not one per question
            index = self._by_step[tag] = {}
            for p in self._tags.get(tag, []):
                index.setdefault(p.step, []).append(p)
        return list(index.get(step, []))

    def max_up_to(self, tag: str, step: int) -> float | None:
        """Largest value of ``tag`` at steps ``<= step`` (the running total there, for a cumulative series)."""
        index = self._max_up_to.get(tag)
        if index is None:  # asked at every validation's step: sorted once, then a binary search per question
            finite = sorted((p.step, p.value) for p in self._tags.get(tag, []) if math.isfinite(p.value))
            steps, maxima = [s for s, _ in finite], list(itertools.accumulate((v for _, v in finite), max))
            index = self._max_up_to[tag] = (steps, maxima)
        i = bisect.bisect_right(index[0], step)
        return index[1][i - 1] if i else None

    @property
    def start_wall_time(self) -> float | None:
        """The earliest TensorBoard wall time (``None`` for CSV)."""
        times = [p.wall_time for pts in self._tags.values() for p in pts if p.wall_time is not None]
        return min(times) if times else None


#: Why a run has no scalars a report can read (the green report's note and the comparison's error say it).
NO_SCALARS_WHY = (
    "the report reads TensorBoard event files or CSVLogger's `metrics.csv` (in the run directory, or in the "
    "TensorBoard/CSV log dirs the energy report lists under `logs`); a W&B or MLflow logger alone keeps its metrics "
    "elsewhere: add a CSVLogger beside it"
)


def _written_order(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a TensorBoard event file in the order the files were created.

    Names are ``events.out.tfevents.<seconds>.<host>.<pid>.<n>`` with ``n`` a per-process counter: compared as
    numbers, so the 10th writer of a process (``.10``) comes after its 9th, not before its 2nd.

    Example:
        >>> names = ["events.out.tfevents.1700000000.h.7.10", "events.out.tfevents.1700000000.h.7.9"]
        >>> [p.name[-4:] for p in sorted(map(Path, names), key=_written_order)]
        ['.7.9', '7.10']
    """
    parts = path.name.removeprefix("events.out.tfevents.").split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def find_scalar_files(run_dir: str | os.PathLike[str]) -> tuple[list[Path], Path | None]:
    """TensorBoard event files (in the order they were written) and ``metrics.csv`` directly in ``run_dir``."""
    run_dir = Path(run_dir)
    found = glob.glob(os.path.join(glob.escape(str(run_dir)), "events.out.tfevents.*"))
    events = sorted((Path(p) for p in found), key=_written_order)
    csv_path = run_dir / "metrics.csv"
    return events, csv_path if csv_path.is_file() else None


def read_tensorboard(paths: Iterable[str | os.PathLike[str]], since_s: float | None = None) -> Scalars:
    """Scalars of TensorBoard event files, read with TensorBoard's own ``EventFileLoader``.

    ``since_s``: keep only events written at or after this wall time (the run's start), so that an earlier run
    logged into the same directory is left out.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    paths = [Path(p) for p in paths]
    out = Scalars("tensorboard: " + ", ".join(p.name for p in paths))
    for path in paths:
        records, whole = _framed_records(path)
        read = 0
        for event in EventFileLoader(str(path)).Load():
            read += 1
            if not event.HasField("summary") or (since_s is not None and event.wall_time < since_s):
                continue
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    out.add(value.tag, event.step, value.simple_value, wall_time=event.wall_time)
                elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("scalars", ""):
                    array = tensor_util.make_ndarray(value.tensor)
                    if array.size == 1 and array.dtype.kind in "fiu":
                        out.add(value.tag, event.step, float(array.reshape(())), wall_time=event.wall_time)
        if read < records or not whole:
            # TensorBoard's loader stops silently at a corrupt or truncated record: say that the rest is missing.
            out.problems.append(
                f"{path.name} is corrupt or truncated: read {read} of its "
                f"{records if whole else f'{records}+'} records; what was logged after is missing"
            )
    return out


def _framed_records(path: Path) -> tuple[int, bool]:
    """Records in a TFRecord (event) file by its framing, and whether the framing ends exactly at the file's end.

    Each record is an 8-byte length, a 4-byte CRC, the data and a 4-byte CRC; only the lengths are read (cheap).
    """
    try:
        size = path.stat().st_size
        n = pos = 0
        with open(path, "rb") as f:
            while pos + 12 <= size:
                f.seek(pos)
                (length,) = struct.unpack("<Q", f.read(8))
                if pos + 16 + length > size:
                    return n, False
                pos += 16 + length
                n += 1
        return n, pos == size
    except OSError:
        return 0, True  # unreadable here: EventFileLoader says so


def read_csv(path: str | os.PathLike[str]) -> Scalars:
    """Scalars of a CSVLogger ``metrics.csv`` (one row per log call; empty cells are values not logged)."""
    out = Scalars(f"csv: {Path(path).name}")
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            raw_step = row.get("step")
            if raw_step in (None, ""):
                continue
            step = int(float(raw_step))
            for tag, cell in row.items():
                if tag == "step" or tag is None or cell in (None, ""):
                    continue
                try:
                    out.add(tag, step, float(cell), row=i)
                except ValueError:
                    log.debug("skipping non-numeric %s=%r in %s", tag, cell, path)
    return out


def read_scalars(run_dir: str | os.PathLike[str], since_s: float | None = None) -> Scalars:
    """The run's scalars: TensorBoard event files if it has any with scalars, else ``metrics.csv``, else none.

    ``since_s``: the run's start (wall time, ``energy_report.json``'s ``started_s``). TensorBoard events written
    before it belong to an earlier run logged into the same directory (``TensorBoardLogger(version=...)`` twice)
    and are left out; CSVLogger rewrites ``metrics.csv`` for each run.
    """
    events, csv_path = find_scalar_files(run_dir)
    if events:
        scalars = read_tensorboard(events, since_s)
        if len(scalars):
            return scalars
    if csv_path is not None:
        return read_csv(csv_path)
    return Scalars("none")
