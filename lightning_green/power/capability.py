"""May this process set a GPU's power limit? Checked up front, so a tuner never fails half-way for lack of rights.

Setting a power limit needs ``SYS_ADMIN`` (NVML), or the Zeus daemon (``zeusd``) doing it on the process's
behalf through its socket (``ZEUSD_SOCK_PATH``; Zeus then hands out ``ZeusdNVIDIAGPU`` objects). Either way the
check ends with a harmless probe: the current limit is written back unchanged, which fails exactly when a real
change would.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from zeus.device.common import has_sys_admin
from zeus.device.gpu.common import GPUs, ZeusBaseGPUError, ZeusGPUNoPermissionError

__all__ = ["PowerControl", "check_power_control"]

log = logging.getLogger(__name__)

_PRIVILEGES_URL = "https://ml.energy/zeus/getting_started/#system-privileges"


@dataclass(frozen=True)
class PowerControl:
    """The answer of :func:`check_power_control`.

    Attributes:
        ok: Limits may be set.
        method: How: ``"simulated"``, ``"zeusd"`` or ``"SYS_ADMIN"``.
        reason: Why not, with the fix (empty when ``ok``).
        min_mw: Lowest settable limit, mW (0 when unknown).
        max_mw: Highest settable limit, mW (0 when unknown).
        current_mw: The limit when checked, mW (0 when unknown).
    """

    ok: bool
    method: str
    reason: str = ""
    min_mw: int = 0
    max_mw: int = 0
    current_mw: int = 0


def _method(gpu: object) -> tuple[str, bool, str]:
    """(method, allowed by the method's own rule, reason if not)."""
    explicit = getattr(gpu, "can_set_limits", None)
    if isinstance(explicit, bool):  # a simulated GPU carries its own permission switch
        return "simulated", explicit, "" if explicit else "the simulated GPU has can_set_limits=False"
    if type(gpu).__name__ == "ZeusdNVIDIAGPU":
        sock = os.environ.get("ZEUSD_SOCK_PATH")
        if sock is not None and not os.path.exists(sock):
            return "zeusd", False, f"the zeusd socket ZEUSD_SOCK_PATH={sock!r} does not exist (is zeusd running?)"
        return "zeusd", True, ""
    if has_sys_admin():
        return "SYS_ADMIN", True, ""
    return (
        "SYS_ADMIN",
        False,
        "this process lacks the SYS_ADMIN capability and no Zeus daemon is configured; run with "
        f"`--cap-add SYS_ADMIN` (containers), as root, or start zeusd and set ZEUSD_SOCK_PATH (see {_PRIVILEGES_URL})",
    )


def check_power_control(gpus: GPUs, index: int) -> PowerControl:
    """Whether this process may set GPU ``index``'s power limit; never changes it.

    Example:
        >>> from lightning_green.testing import simulated_gpus
        >>> with simulated_gpus(1, can_set_limits=False) as gpus:
        ...     check_power_control(gpus, 0).reason
        'the simulated GPU has can_set_limits=False'
        >>> with simulated_gpus(1, min_limit_w=100, max_limit_w=300) as gpus:
        ...     c = check_power_control(gpus, 0)
        >>> c.ok, c.method, c.min_mw, c.max_mw
        (True, 'simulated', 100000, 300000)
    """
    try:
        gpu = gpus.gpus[index]
    except IndexError:
        return PowerControl(False, "none", f"GPU {index} not found; Zeus sees {len(gpus)} GPU(s)")
    method, allowed, reason = _method(gpu)
    if not allowed:
        return PowerControl(False, method, reason)
    try:
        min_mw, max_mw = gpus.get_power_management_limit_constraints(index)
        current = gpus.get_power_management_limit(index)
    except ZeusBaseGPUError as err:
        return PowerControl(False, method, f"GPU {index} does not report its power-limit range ({err})")
    if not 0 < min_mw < max_mw:
        return PowerControl(False, method, f"GPU {index} has no adjustable power limit ({min_mw}-{max_mw} mW)")
    try:
        gpus.set_power_management_limit(index, current)  # the probe: an unchanged write
    except ZeusGPUNoPermissionError as err:
        return PowerControl(False, method, f"setting GPU {index}'s power limit was refused ({err}); {_PRIVILEGES_URL}")
    except ZeusBaseGPUError as err:
        return PowerControl(False, method, f"setting GPU {index}'s power limit failed ({err})")
    log.debug("power control on GPU %d via %s: %d-%d mW, now %d mW", index, method, min_mw, max_mw, current)
    return PowerControl(True, method, "", int(min_mw), int(max_mw), int(current))
