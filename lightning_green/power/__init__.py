"""Zeus power-limit tuning without the sharp edges: capability check, limit-restore guard, profiling machine.

* :mod:`~lightning_green.power.capability` — may this process set power limits (SYS_ADMIN, zeusd, simulated)?
* :mod:`~lightning_green.power.guard` — record the original limits and restore them on every exit path.
* :mod:`~lightning_green.power.search` — the profiling state machine (Zeus's, pausable and restartable).
* :mod:`~lightning_green.power.profile` — Zeus's optimum selectors, the cost table and the profile cache.

No Lightning import here: :class:`lightning_green.PowerLimitTuner` maps Lightning hooks onto these pieces.
"""

from lightning_green.power.capability import PowerControl, check_power_control
from lightning_green.power.guard import LimitGuard, machine_id
from lightning_green.power.profile import OBJECTIVES, ProfileCache, make_selector, profile_key, profile_table
from lightning_green.power.search import STATE_CODES, PowerLimitSearch, Window, ZeusWindows, limit_grid

__all__ = [
    "OBJECTIVES",
    "STATE_CODES",
    "LimitGuard",
    "PowerControl",
    "PowerLimitSearch",
    "ProfileCache",
    "Window",
    "ZeusWindows",
    "check_power_control",
    "limit_grid",
    "machine_id",
    "make_selector",
    "profile_key",
    "profile_table",
]
