"""The public Lightning callbacks, one per file."""

from lightning_green.callbacks.amp_scheduler import AMPScheduler
from lightning_green.callbacks.carbon_aware_scheduler import CarbonAwareScheduler
from lightning_green.callbacks.data_pruning import DataPruning
from lightning_green.callbacks.energy_budget import EnergyBudget
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.green_report import GreenReport
from lightning_green.callbacks.power_limit_tuner import PowerLimitTuner
from lightning_green.callbacks.progress_bar import GreenRichProgressBar, GreenTQDMProgressBar
from lightning_green.callbacks.structured_pruning import StructuredPruning

__all__ = [
    "AMPScheduler",
    "CarbonAwareScheduler",
    "DataPruning",
    "EnergyBudget",
    "EnergyMonitor",
    "GreenReport",
    "GreenRichProgressBar",
    "GreenTQDMProgressBar",
    "PowerLimitTuner",
    "StructuredPruning",
]
