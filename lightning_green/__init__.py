"""lightning-green: PyTorch Lightning callbacks that make any LightningModule train greener.

The public names are imported on first use (PEP 562 ``__getattr__``): ``import lightning_green`` stays light
and ``from lightning_green import EnergyMonitor`` loads only what that callback needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# Public name -> module that defines it. Add a new public name here and in `__all__`.
_LAZY = {
    "AMPScheduler": "lightning_green.callbacks.amp_scheduler",
    "CarbonAwareScheduler": "lightning_green.callbacks.carbon_aware_scheduler",
    "DataPruning": "lightning_green.callbacks.data_pruning",
    "EnergyBudget": "lightning_green.callbacks.energy_budget",
    "EnergyMonitor": "lightning_green.callbacks.energy_monitor",
    "GreenReport": "lightning_green.callbacks.green_report",
    "GreenRichProgressBar": "lightning_green.callbacks.progress_bar",
    "GreenRuntimeError": "lightning_green._internal.validation",
    "GreenTQDMProgressBar": "lightning_green.callbacks.progress_bar",
    "PowerLimitTuner": "lightning_green.callbacks.power_limit_tuner",
    "StructuredPruning": "lightning_green.callbacks.structured_pruning",
    "WorkloadChange": "lightning_green.events",
    "reduce_sample_losses": "lightning_green.data.losses",
    "sequence_losses": "lightning_green.data.losses",
    "workload_changed": "lightning_green.events",
}

__all__ = [
    "AMPScheduler",
    "CarbonAwareScheduler",
    "DataPruning",
    "EnergyBudget",
    "EnergyMonitor",
    "GreenReport",
    "GreenRichProgressBar",
    "GreenRuntimeError",
    "GreenTQDMProgressBar",
    "PowerLimitTuner",
    "StructuredPruning",
    "WorkloadChange",
    "__version__",
    "reduce_sample_losses",
    "sequence_losses",
    "workload_changed",
]

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from lightning_green._internal.validation import GreenRuntimeError
    from lightning_green.callbacks import (
        AMPScheduler,
        CarbonAwareScheduler,
        DataPruning,
        EnergyBudget,
        EnergyMonitor,
        GreenReport,
        GreenRichProgressBar,
        GreenTQDMProgressBar,
        PowerLimitTuner,
        StructuredPruning,
    )
    from lightning_green.data.losses import reduce_sample_losses, sequence_losses
    from lightning_green.events import WorkloadChange, workload_changed


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_green' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
