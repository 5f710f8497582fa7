"""Precision schedules, plugin construction and device capability for :class:`~lightning_green.AMPScheduler`.

No Lightning callback lives here: :mod:`.schedule` maps epochs/steps to modes, :mod:`.capability` decides what
``policy="auto"`` means on a device, :mod:`.plugins` builds and checks Lightning precision plugins, and
:mod:`.guard` holds the non-finite checks and the fallback counters.
"""

from lightning_green.precision.capability import PolicyChoice, cpu_bf16_supported, resolve_policy
from lightning_green.precision.guard import BufferSnapshot, FallbackTracker, grads_nonfinite
from lightning_green.precision.modes import FP32, LOW_MODES, MODE_CODES, MODES, autocast_dtype, mode_code
from lightning_green.precision.plugins import PluginSet, check_swappable, plugin_mode
from lightning_green.precision.schedule import PrecisionSchedule, validate_schedule

__all__ = [
    "FP32",
    "LOW_MODES",
    "MODES",
    "MODE_CODES",
    "BufferSnapshot",
    "FallbackTracker",
    "PluginSet",
    "PolicyChoice",
    "PrecisionSchedule",
    "autocast_dtype",
    "check_swappable",
    "cpu_bf16_supported",
    "grads_nonfinite",
    "mode_code",
    "plugin_mode",
    "resolve_policy",
    "validate_schedule",
]
