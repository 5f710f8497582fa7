"""Lightning's two packages: ``lightning.pytorch`` and the standalone ``pytorch_lightning``.

They have the same API, but each holds its own copy of every class: ``isinstance`` against one never matches the
other.

lightning-green is built on ``lightning.pytorch``. The callbacks that only *read* a run (EnergyMonitor, EnergyBudget,
DataPruning, CarbonAwareScheduler, PowerLimitTuner, GreenReport) also work under a ``pytorch_lightning.Trainer``: they
recognise Lightning's loggers and checkpoint callback from either package through :func:`lightning_types`. Those
that replace Lightning's own parts (AMPScheduler's precision plugins, StructuredPruning's strategy handling, the
progress bars) refuse a ``pytorch_lightning`` Trainer at ``setup`` through :func:`require_lightning_package`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from lightning_green._internal.validation import fail

__all__ = ["is_standalone_package", "lightning_types", "require_lightning_package", "tensorboard_loggers"]

_STANDALONE = "pytorch_lightning"


def lightning_types(module: str, name: str) -> tuple[type, ...]:
    """``lightning.pytorch.<module>.<name>``, and the same class of ``pytorch_lightning`` once the user imported it.

    The standalone package is never imported here: a run that does not use it pays nothing.

    Example:
        >>> [c.__module__.split(".")[0] for c in lightning_types("loggers", "TensorBoardLogger")][0]
        'lightning'
    """
    found = [getattr(importlib.import_module(f"lightning.pytorch.{module}"), name)]
    if _STANDALONE in sys.modules:
        found.append(getattr(importlib.import_module(f"{_STANDALONE}.{module}"), name))
    return tuple(found)


def tensorboard_loggers(trainer: Any) -> list[Any]:
    """The Trainer's TensorBoard loggers, of either package (for what only TensorBoard shows: layouts, text)."""
    kinds = lightning_types("loggers", "TensorBoardLogger")
    return [lg for lg in trainer.loggers if isinstance(lg, kinds)]


def is_standalone_package(obj: Any) -> bool:
    """Whether ``obj``'s class comes from (or derives from a class of) the standalone ``pytorch_lightning`` package.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> is_standalone_package(Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False))
        False
    """
    return any(c.__module__.split(".")[0] == _STANDALONE for c in type(obj).__mro__)


def require_lightning_package(owner: str, trainer: Any, why: str) -> None:
    """Refuse a ``pytorch_lightning.Trainer`` with what to change (``why``: what ``owner`` replaces in Lightning)."""
    if is_standalone_package(trainer):
        module = type(trainer).__module__
        module = _STANDALONE if module.startswith(f"{_STANDALONE}.") else module  # where users import it from
        fail(
            owner,
            "trainer",
            f"{module}.{type(trainer).__name__}",
            f"a `lightning.pytorch` Trainer: {owner} {why}, and the standalone `pytorch_lightning` package keeps "
            "separate copies of those classes. Import from `lightning.pytorch` instead (`import lightning.pytorch as "
            "pl`: the same API, for the Trainer, the LightningModule, the callbacks and the loggers)",
            TypeError,
        )
