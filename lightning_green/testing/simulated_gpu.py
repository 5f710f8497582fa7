"""A simulated GPU for Zeus: dry-run energy measurement (and later power-limit tuning) on any machine.

Zeus looks its GPUs up through a process-wide singleton (``zeus.device.gpu._gpus``, filled by ``get_gpus()``).
:func:`simulated_gpus` installs a :class:`SimulatedGPUs` there, so every Zeus API — ``ZeusMonitor``, the power
limit optimizer — and so every lightning-green callback sees simulated devices instead of NVML ones. Nothing
on a real GPU is ever touched.

Power model: a busy GPU draws ``min(power limit, demand_w)``, an idle one ``idle_w``. The total-energy counter
integrates that draw over the clock (wall time by default; tests may pass their own clock), like NVML's
``nvmlDeviceGetTotalEnergyConsumption``, in millijoules.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from zeus.device.gpu.common import GPU, GPUs, ZeusGPUInvalidArgError, ZeusGPUNoPermissionError

__all__ = ["SimulatedGPU", "SimulatedGPUs", "simulated_gpus"]


class SimulatedGPU(GPU):
    """One simulated GPU behind Zeus's ``GPU`` interface.

    Args:
        gpu_index: Index Zeus reports for it.
        name: Model name (``get_name()``).
        min_limit_w: Lowest settable power limit, W.
        max_limit_w: Highest settable power limit, W (also the default limit).
        idle_w: Draw when not busy, W.
        demand_w: Draw the workload would take with no cap, W.
        has_energy_counter: ``False`` mimics pre-Volta GPUs, where Zeus samples power instead.
        can_set_limits: ``False`` mimics a process without ``SYS_ADMIN``: setters raise
            ``ZeusGPUNoPermissionError``, as NVML's do.
        clock: Seconds, monotonic; ``time.monotonic`` by default.

    Example:
        >>> t = [0.0]
        >>> gpu = SimulatedGPU(max_limit_w=300, demand_w=250, clock=lambda: t[0])
        >>> t[0] = 2.0
        >>> gpu.get_total_energy_consumption()  # 250 W for 2 s, in mJ
        500000
        >>> gpu.set_power_management_limit(200_000)
        >>> t[0] = 3.0
        >>> gpu.get_total_energy_consumption()  # capped at 200 W for the last second
        700000
    """

    def __init__(
        self,
        gpu_index: int = 0,
        name: str = "Simulated GPU",
        min_limit_w: int = 100,
        max_limit_w: int = 300,
        idle_w: float = 50.0,
        demand_w: float = 250.0,
        has_energy_counter: bool = True,
        can_set_limits: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(gpu_index)
        if not 0 < min_limit_w <= max_limit_w:
            raise ValueError(
                f"SimulatedGPU(min_limit_w={min_limit_w}, max_limit_w={max_limit_w}): need 0 < min <= max."
            )
        self.name = name
        self.min_limit_w = int(min_limit_w)
        self.max_limit_w = int(max_limit_w)
        self.idle_w = float(idle_w)
        self.demand_w = float(demand_w)
        self.has_energy_counter = has_energy_counter
        self.can_set_limits = can_set_limits
        self.clock = clock
        self.busy = True
        self.persistence_mode = False
        self._limit_mw = self.max_limit_w * 1000
        self._energy_mj = 0.0
        self._t_last = clock()
        self._lock = threading.Lock()
        self.limit_history: list[int] = [self._limit_mw]
        """Every power limit the GPU had, in mW, oldest first (tests assert on it)."""

    # -- power model ------------------------------------------------------------------------------------------
    def power_w(self) -> float:
        """Current draw in W."""
        if not self.busy:
            return self.idle_w
        return min(self._limit_mw / 1000.0, self.demand_w)

    def _advance(self) -> None:
        with self._lock:
            now = self.clock()
            self._energy_mj += self.power_w() * (now - self._t_last) * 1000.0
            self._t_last = now

    def set_busy(self, busy: bool) -> None:
        """Switch between the busy and the idle draw."""
        self._advance()
        self.busy = busy

    def _check_permission(self) -> None:
        if not self.can_set_limits:
            raise ZeusGPUNoPermissionError("Insufficient Permissions (simulated GPU without SYS_ADMIN)")

    # -- Zeus GPU interface -----------------------------------------------------------------------------------
    @property
    def supports_nonblocking_setters(self) -> bool:  # noqa: D102
        return False

    def get_name(self) -> str:  # noqa: D102
        return self.name

    def get_power_management_limit_constraints(self) -> tuple[int, int]:  # noqa: D102
        return self.min_limit_w * 1000, self.max_limit_w * 1000

    def get_power_management_limit(self) -> int:  # noqa: D102
        return self._limit_mw

    def set_power_management_limit(self, power_limit_mw: int, block: bool = True) -> None:  # noqa: D102
        self._check_permission()
        if not self.min_limit_w * 1000 <= power_limit_mw <= self.max_limit_w * 1000:
            raise ZeusGPUInvalidArgError(
                f"power limit {power_limit_mw} mW outside [{self.min_limit_w * 1000}, {self.max_limit_w * 1000}]"
            )
        self._advance()
        self._limit_mw = int(power_limit_mw)
        self.limit_history.append(self._limit_mw)

    def reset_power_management_limit(self, block: bool = True) -> None:  # noqa: D102
        self.set_power_management_limit(self.max_limit_w * 1000, block)

    def set_persistence_mode(self, enabled: bool, block: bool = True) -> None:  # noqa: D102
        self._check_permission()
        self.persistence_mode = enabled

    def get_persistence_mode(self) -> bool:  # noqa: D102
        return self.persistence_mode

    def get_supported_memory_clocks(self) -> list[int]:  # noqa: D102
        return [1593]

    def set_memory_locked_clocks(self, min_clock_mhz: int, max_clock_mhz: int, block: bool = True) -> None:  # noqa: D102
        self._check_permission()

    def reset_memory_locked_clocks(self, block: bool = True) -> None:  # noqa: D102
        self._check_permission()

    def get_supported_graphics_clocks(self, memory_clock_mhz: int | None = None) -> list[int]:  # noqa: D102
        return [1410, 1200, 1000]

    def set_gpu_locked_clocks(self, min_clock_mhz: int, max_clock_mhz: int, block: bool = True) -> None:  # noqa: D102
        self._check_permission()

    def reset_gpu_locked_clocks(self, block: bool = True) -> None:  # noqa: D102
        self._check_permission()

    def get_average_power_usage(self) -> int:  # noqa: D102
        return int(self.power_w() * 1000)

    def get_instant_power_usage(self) -> int:  # noqa: D102
        return int(self.power_w() * 1000)

    def get_average_memory_power_usage(self) -> int:  # noqa: D102
        return 0

    def supports_get_total_energy_consumption(self) -> bool:  # noqa: D102
        return self.has_energy_counter

    def get_total_energy_consumption(self) -> int:  # noqa: D102
        self._advance()
        return int(self._energy_mj)

    def get_gpu_temperature(self) -> int:  # noqa: D102
        return 40 + int(self.power_w() / 10)


class SimulatedGPUs(GPUs):
    """A collection of :class:`SimulatedGPU`, shaped like Zeus's ``NVIDIAGPUs``.

    Args:
        gpus: The simulated devices, index ``i`` at position ``i``.
    """

    def __init__(self, gpus: Sequence[SimulatedGPU] = (), ensure_homogeneous: bool = False) -> None:
        self._gpus = list(gpus)
        if ensure_homogeneous:
            self._ensure_homogeneous()

    def __del__(self) -> None:  # noqa: D105 - nothing to shut down
        pass

    @property
    def gpus(self) -> Sequence[SimulatedGPU]:  # noqa: D102
        return self._gpus


@contextlib.contextmanager
def simulated_gpus(count: int = 1, **gpu_kwargs: object) -> Iterator[SimulatedGPUs]:
    """Install ``count`` simulated GPUs where Zeus looks GPUs up, restoring what was there on exit.

    Keyword arguments are passed to every :class:`SimulatedGPU`.

    Example:
        >>> from zeus.device import get_gpus
        >>> with simulated_gpus(2, name="Sim H100") as gpus:
        ...     get_gpus() is gpus, get_gpus().get_name(1)
        (True, 'Sim H100')
    """
    import zeus.device.gpu as zeus_gpu

    previous = zeus_gpu._gpus
    sims = SimulatedGPUs([SimulatedGPU(gpu_index=i, **gpu_kwargs) for i in range(count)])  # type: ignore[arg-type]
    zeus_gpu._gpus = sims
    try:
        yield sims
    finally:
        zeus_gpu._gpus = previous
