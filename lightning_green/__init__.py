"""lightning-green: PyTorch Lightning callbacks that make any LightningModule train greener."""

from lightning_green.callbacks import (
    AMPScheduler,
    CarbonAwareScheduler,
    EnergyBudget,
    EnergyMonitor,
    GreenReport,
    PowerLimitTuner,
    StructuredPruning,
)
from lightning_green.events import WorkloadChange, workload_changed

__version__ = "0.1.0.dev0"

__all__ = [
    "AMPScheduler",
    "CarbonAwareScheduler",
    "EnergyBudget",
    "EnergyMonitor",
    "GreenReport",
    "PowerLimitTuner",
    "StructuredPruning",
    "WorkloadChange",
    "__version__",
    "workload_changed",
]
