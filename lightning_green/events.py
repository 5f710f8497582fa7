"""The one signal between lightning-green callbacks: "the workload changed".

A callback that changes what a training step costs — a prune, a precision switch — calls
:func:`workload_changed`. Every callback in ``trainer.callbacks`` that defines
``on_workload_changed(trainer, pl_module, change)`` hears it: the power-limit tuner re-profiles, the energy
forecast re-fits. Callbacks never import each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl

__all__ = ["WorkloadChange", "add_report_section", "workload_changed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkloadChange:
    """What changed.

    Attributes:
        reason: Short kind of change, e.g. ``"pruning"`` or ``"precision"``.
        source: Name of the callback class that made it.
        details: Plain values describing it (new MACs, new precision, ...).
    """

    reason: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)


def workload_changed(trainer: pl.Trainer, reason: str, source: object, **details: Any) -> WorkloadChange:
    """Tell every listening callback in ``trainer.callbacks`` that the workload changed.

    Call it on every rank (listeners may take collective decisions).

    Example:
        >>> from lightning.pytorch import Callback, Trainer
        >>> class Listener(Callback):
        ...     heard = []
        ...     def on_workload_changed(self, trainer, pl_module, change):
        ...         self.heard.append(change.reason)
        >>> trainer = Trainer(callbacks=[Listener()], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> workload_changed(trainer, "pruning", source="StructuredPruning", macs=1000).details
        {'macs': 1000}
        >>> Listener.heard
        ['pruning']
    """
    change = WorkloadChange(reason, source if isinstance(source, str) else type(source).__name__, dict(details))
    log.debug("workload changed: %s", change)
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        hook = getattr(cb, "on_workload_changed", None)
        if callable(hook) and cb is not source:
            hook(trainer, trainer.lightning_module, change)
    return change


def add_report_section(trainer: pl.Trainer, name: str, data: dict[str, Any]) -> None:
    """Hand ``data`` to every callback with ``add_report_section`` (the EnergyMonitor), as section ``name``."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        add = getattr(cb, "add_report_section", None)
        if callable(add):
            add(name, data)
