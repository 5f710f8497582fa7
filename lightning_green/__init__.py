"""lightning-green: PyTorch Lightning callbacks that make any LightningModule train greener."""

from lightning_green.callbacks import (
    AMPScheduler,
    DataPruning,
    EnergyBudget,
    EnergyMonitor,
    GreenReport,
    PowerLimitTuner,
    StructuredPruning,
)
from lightning_green.data import reduce_sample_losses
from lightning_green.events import WorkloadChange, workload_changed

__version__ = "0.1.0.dev0"

__all__ = [
    "AMPScheduler",
    "DataPruning",
    "EnergyBudget",
    "EnergyMonitor",
    "GreenReport",
    "PowerLimitTuner",
    "StructuredPruning",
    "WorkloadChange",
    "__version__",
    "reduce_sample_losses",
    "workload_changed",
]
