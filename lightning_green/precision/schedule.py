"""Precision schedules: which mode applies at an epoch or optimizer step."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

from lightning_green._internal.validation import fail
from lightning_green.precision.modes import FP32, SCHEDULE_VALUES

__all__ = ["PrecisionSchedule", "validate_schedule"]


def validate_schedule(owner: str, schedule: Any) -> dict[int, str] | None:
    """Check a user schedule ``{epoch_or_step: precision}``; returns it as a sorted plain dict (``None`` passes)."""
    if schedule is None:
        return None
    if not isinstance(schedule, Mapping) or not schedule:
        fail(owner, "schedule", schedule, "None or a non-empty dict {epoch_or_step: precision}", TypeError)
    out: dict[int, str] = {}
    for key, value in schedule.items():
        if isinstance(key, bool) or not isinstance(key, int):
            fail(owner, "schedule", schedule, f"keyed by int epochs or steps (found key {key!r})", TypeError)
        if key < 0:
            fail(owner, "schedule", schedule, f"keyed by epochs or steps >= 0 (found key {key})")
        if not isinstance(value, str) or value not in SCHEDULE_VALUES:
            fail(owner, "schedule", schedule, f"mapping to one of {SCHEDULE_VALUES!r} (found {value!r} at {key})")
        out[key] = value
    return dict(sorted(out.items()))


class PrecisionSchedule:
    """A step function from epoch (or optimizer step) to precision mode.

    Positions before the first key train in fp32; each key holds until the next one.

    Args:
        entries: ``{position: mode}`` with modes from :data:`~lightning_green.precision.modes.SCHEDULE_VALUES`.
        interval: ``"epoch"`` or ``"step"``: what the positions count.

    Example:
        >>> s = PrecisionSchedule.from_shortcuts(low="bf16-mixed", warmup_epochs=1, final_fp32_epochs=1, max_epochs=5)
        >>> [s.at(e) for e in range(5)]
        ['32-true', 'bf16-mixed', 'bf16-mixed', 'bf16-mixed', '32-true']
        >>> s.describe()
        'epoch 0: 32-true, epoch 1: bf16-mixed, epoch 4: 32-true'
    """

    def __init__(self, entries: Mapping[int, str], interval: str = "epoch") -> None:
        self.entries = dict(sorted(entries.items()))
        self.interval = interval
        self._keys = list(self.entries)

    @classmethod
    def from_shortcuts(
        cls, low: str, warmup_epochs: int = 0, final_fp32_epochs: int = 0, max_epochs: int | None = None
    ) -> PrecisionSchedule:
        """fp32 for ``warmup_epochs``, ``low`` in between, fp32 for the last ``final_fp32_epochs`` of ``max_epochs``."""
        entries = {0: FP32} if warmup_epochs > 0 else {}
        entries[warmup_epochs] = low
        if final_fp32_epochs > 0:
            assert max_epochs is not None, "final_fp32_epochs needs a bounded max_epochs"
            entries[max_epochs - final_fp32_epochs] = FP32
        return cls(entries, "epoch")

    def resolve(self, low: str) -> PrecisionSchedule:
        """This schedule with ``"auto"`` replaced by ``low``."""
        return PrecisionSchedule({k: low if v == "auto" else v for k, v in self.entries.items()}, self.interval)

    def at(self, position: int) -> str:
        """The mode at ``position`` (an epoch or a global step)."""
        i = bisect.bisect_right(self._keys, position) - 1
        return self.entries[self._keys[i]] if i >= 0 else FP32

    def segment_start(self, position: int) -> int:
        """The key in force at ``position`` (``0`` before the first key): the schedule position for the state."""
        i = bisect.bisect_right(self._keys, position) - 1
        return self._keys[i] if i >= 0 else 0

    @property
    def last_key(self) -> int:
        """The largest position named."""
        return self._keys[-1]

    def modes(self) -> set[str]:
        """Every mode the schedule can ask for."""
        return set(self.entries.values()) | ({FP32} if self._keys[0] > 0 else set())

    def describe(self) -> str:
        """One line, e.g. ``epoch 0: 32-true, epoch 1: bf16-mixed``."""
        return ", ".join(f"{self.interval} {k}: {v}" for k, v in self.entries.items())

    def __repr__(self) -> str:
        return f"PrecisionSchedule({self.entries!r}, interval={self.interval!r})"
