"""Energy measurement without Lightning: the Zeus-backed meter, the no-counter estimate, carbon, forecast, report."""

from lightning_green.energy.carbon import WORLD_AVERAGE_G_PER_KWH, CarbonModel, joules_to
from lightning_green.energy.estimate import EstimateModel
from lightning_green.energy.forecast import EnergyForecast
from lightning_green.energy.meter import COMPONENTS, EnergyMeter, Reading, combine_label
from lightning_green.energy.report import format_summary, read_report, write_json_atomic

__all__ = [
    "COMPONENTS",
    "WORLD_AVERAGE_G_PER_KWH",
    "CarbonModel",
    "EnergyForecast",
    "EnergyMeter",
    "EstimateModel",
    "Reading",
    "combine_label",
    "format_summary",
    "joules_to",
    "read_report",
    "write_json_atomic",
]
