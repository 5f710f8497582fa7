"""The public Lightning callbacks, one per file."""

from lightning_green.callbacks.energy_budget import EnergyBudget
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.structured_pruning import StructuredPruning

__all__ = ["EnergyBudget", "EnergyMonitor", "StructuredPruning"]
