"""The documented estimate used where no hardware energy counter exists.

Model (after Green Algorithms, Lannelongue et al., *Adv. Sci.* 2021, and CodeCarbon's fallback):

* **CPU**: ``process CPU seconds × per-core power``. CPU seconds are ``time.process_time()`` (all threads of
  this process, user + system); per-core power is ``cpu_tdp_w / cpu_tdp_cores``. Without a TDP the per-core
  power is 12 W, Green Algorithms' default for an unknown CPU. Work done in DataLoader worker processes is not
  counted (their CPU time is only visible to this process after they exit).
* **DRAM**: ``resident memory (GB) × dram_w_per_gb × wall seconds``, with 0.3725 W/GB by default (Green
  Algorithms). Resident memory is this process's RSS, averaged over the window's two ends.

Every figure from this module is labelled ``estimated``; figures from NVML/RAPL are ``measured``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

__all__ = ["DEFAULT_CPU_W_PER_CORE", "DEFAULT_DRAM_W_PER_GB", "EstimateModel", "process_cpu_seconds", "resident_gb"]

DEFAULT_CPU_W_PER_CORE = 12.0
"""Per-core power (W) when no TDP is given: Green Algorithms' default for an unknown CPU."""

DEFAULT_DRAM_W_PER_GB = 0.3725
"""Memory power (W per GB resident): Green Algorithms' figure, also used by CodeCarbon."""

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    return time.process_time()


def resident_gb() -> float:
    """This process's resident memory in GB (10^9 bytes), read from ``/proc`` where it exists."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * _PAGE_SIZE / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource  # POSIX only: importing it at module level would break `import lightning_green` on Windows
    except ImportError:  # Windows: psutil where installed, else no DRAM estimate rather than a crash
        try:
            import psutil

            return psutil.Process().memory_info().rss / 1e9
        except ImportError:
            return 0.0
    # Peak RSS is the best portable fallback: kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


@dataclass(frozen=True)
class EstimateModel:
    """Parameters of the no-counter estimate.

    Args:
        cpu_w_per_core: Power drawn per fully busy core, in W.
        dram_w_per_gb: Power drawn per GB of resident memory, in W.

    Example:
        >>> m = EstimateModel.from_tdp(cpu_tdp_w=64.0, cpu_tdp_cores=16)
        >>> m.cpu_w_per_core
        4.0
        >>> round(m.cpu_energy_j(cpu_seconds=10.0), 6)
        40.0
        >>> round(m.dram_energy_j(resident_gb=2.0, seconds=10.0), 6)
        7.45
    """

    cpu_w_per_core: float = DEFAULT_CPU_W_PER_CORE
    dram_w_per_gb: float = DEFAULT_DRAM_W_PER_GB

    @classmethod
    def from_tdp(
        cls,
        cpu_tdp_w: float | None = None,
        cpu_tdp_cores: int | None = None,
        dram_w_per_gb: float = DEFAULT_DRAM_W_PER_GB,
    ) -> EstimateModel:
        """Build the model from a package TDP spread over ``cpu_tdp_cores`` (default: ``os.cpu_count()``)."""
        if cpu_tdp_w is None:
            return cls(DEFAULT_CPU_W_PER_CORE, dram_w_per_gb)
        cores = cpu_tdp_cores or os.cpu_count() or 1
        return cls(cpu_tdp_w / cores, dram_w_per_gb)

    def cpu_energy_j(self, cpu_seconds: float) -> float:
        """Estimated CPU energy for ``cpu_seconds`` of busy core time."""
        return max(cpu_seconds, 0.0) * self.cpu_w_per_core

    def dram_energy_j(self, resident_gb: float, seconds: float) -> float:
        """Estimated DRAM energy for holding ``resident_gb`` for ``seconds``."""
        return max(resident_gb, 0.0) * self.dram_w_per_gb * max(seconds, 0.0)

    def as_dict(self) -> dict[str, float]:
        """Plain-dict form for the energy report."""
        return {"cpu_w_per_core": self.cpu_w_per_core, "dram_w_per_gb": self.dram_w_per_gb}
