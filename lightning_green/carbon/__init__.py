"""Time-varying grid carbon intensity: traces, sources, per-window CO₂ and carbon-aware plans. No Lightning import."""

from lightning_green.carbon.online import ElectricityMapsError, ElectricityMapsSource
from lightning_green.carbon.plan import (
    FORECASTS,
    CarbonPlanner,
    Decision,
    Forecast,
    Plan,
    make_plan,
    parse_deadline,
    parse_duration,
)
from lightning_green.carbon.source import (
    EXTEND_CHOICES,
    CallableIntensity,
    CarbonAccount,
    ConstantIntensity,
    Extend,
    IntensityLike,
    IntensitySource,
    as_intensity_source,
    ensure_covers,
)
from lightning_green.carbon.trace import UNITS, CSVTrace, IntensityTrace, header_unit, read_trace, to_seconds
from lightning_green.carbon.tracker import CarbonTracker

__all__ = [
    "EXTEND_CHOICES",
    "FORECASTS",
    "UNITS",
    "CSVTrace",
    "CallableIntensity",
    "CarbonAccount",
    "CarbonPlanner",
    "CarbonTracker",
    "ConstantIntensity",
    "Decision",
    "ElectricityMapsError",
    "ElectricityMapsSource",
    "Extend",
    "Forecast",
    "IntensityLike",
    "IntensitySource",
    "IntensityTrace",
    "Plan",
    "as_intensity_source",
    "ensure_covers",
    "header_unit",
    "make_plan",
    "parse_deadline",
    "parse_duration",
    "read_trace",
    "to_seconds",
]
