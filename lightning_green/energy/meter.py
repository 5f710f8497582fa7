"""A cumulative energy meter built on :class:`zeus.monitor.ZeusMonitor`.

GPU energy comes from Zeus (NVML's total-energy counter; Zeus samples power on GPUs without one), CPU and
DRAM from RAPL through Zeus where readable. Any component without a counter falls back to the documented
estimate in :mod:`lightning_green.energy.estimate`. Every :class:`Reading` says, per component, whether its
figure is ``measured`` or ``estimated`` (or ``none``: nothing of that kind is metered here).

The meter is cumulative: :meth:`EnergyMeter.read` returns everything since :meth:`EnergyMeter.start`, and
the energy of any window is the difference of two readings. Readings are cheap but not free, so callers read at
logging intervals, never on every step: on GPUs with NVML's energy counter each read takes that counter once per
GPU (a Zeus window's end and restart would take it twice; one NVML read took 2.8 ms on a virtualised H200);
GPUs without it keep Zeus's windows and their power sampling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from lightning_green.energy.estimate import EstimateModel, process_cpu_seconds, resident_gb

__all__ = ["COMPONENTS", "EnergyMeter", "Reading", "combine_label"]

log = logging.getLogger(__name__)

COMPONENTS = ("gpu", "cpu", "dram")
SOURCES = ("none", "estimated", "measured")
_WINDOW = "__lightning_green_meter"


def combine_label(sources: Mapping[str, str]) -> str:
    """Label for a total over components: ``measured``, ``estimated``, ``mixed`` or ``none``.

    Example:
        >>> combine_label({"gpu": "measured", "cpu": "estimated", "dram": "estimated"})
        'mixed'
        >>> combine_label({"gpu": "none", "cpu": "estimated", "dram": "estimated"})
        'estimated'
    """
    kinds = {s for s in sources.values() if s != "none"}
    if not kinds:
        return "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


@dataclass(frozen=True)
class Reading:
    """Energy (J) per component and elapsed wall time (s), cumulative or as a window difference."""

    time_s: float
    energy_j: Mapping[str, float]
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def total_j(self) -> float:
        """Sum over components."""
        return float(sum(self.energy_j.values()))

    @property
    def label(self) -> str:
        """``measured``, ``estimated``, ``mixed`` or ``none`` for :attr:`total_j`."""
        return combine_label(self.sources)

    def __sub__(self, other: Reading) -> Reading:
        return Reading(
            self.time_s - other.time_s,
            {c: self.energy_j.get(c, 0.0) - other.energy_j.get(c, 0.0) for c in COMPONENTS},
            dict(self.sources),
        )

    @classmethod
    def zero(cls, sources: Mapping[str, str] | None = None) -> Reading:
        """An all-zero reading."""
        return cls(0.0, dict.fromkeys(COMPONENTS, 0.0), dict(sources or {}))


RAPL_FIX = (
    "grant this user read access to the RAPL counters, e.g. `sudo chmod -R a+r /sys/class/powercap/intel-rapl` "
    "(root-only since Linux 5.10, CVE-2020-8694; redo after a reboot or use a udev rule), or run Zeus's zeusd daemon "
    "(https://ml.energy/zeus/getting_started/#system-privileges)"
)


def _rapl_zones() -> tuple[int, int, str | None]:
    """Readable RAPL package zones, how many have a DRAM sub-zone, and why RAPL is present but unusable (or None).

    No RAPL directory at all (a VM, a non-Intel/AMD CPU, macOS, Windows) is no problem: there is no counter to read.
    RAPL that exists but cannot be read (permission, a broken zone) is: the caller says why once, with the fix.
    """
    try:
        from zeus.device import get_cpus
        from zeus.device.cpu.rapl import rapl_is_available
    except ImportError as err:  # pragma: no cover - Zeus is a dependency
        return 0, 0, f"Zeus's CPU support does not import ({err})"
    try:
        cpus = get_cpus()
        n = len(cpus)
        return n, sum(bool(cpus.supports_get_dram_energy_consumption(i)) for i in range(n)), None
    except Exception as err:  # Zeus wraps the PermissionError in its own error types; any failure means "no counter"
        if not rapl_is_available():
            return 0, 0, None
        chain, e = [], err
        while e is not None and len(chain) < 5:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if any(isinstance(e, PermissionError) or "ermission" in type(e).__name__ for e in chain):
            return 0, 0, f"RAPL (/sys/class/powercap) is not readable by this process (permission denied): {RAPL_FIX}"
        return 0, 0, f"RAPL (/sys/class/powercap) could not be read ({type(err).__name__}: {err})"


class EnergyMeter:
    """Meter one process's share of the machine's energy.

    Args:
        gpu_indices: GPUs this process measures (Zeus indices, ``CUDA_VISIBLE_DEVICES`` applied). Under DDP each
            rank measures only its own GPU.
        node_counters: Whether this process reads the node-wide CPU/DRAM counters (RAPL). Exactly one process
            per node should (local rank 0); the others contribute no CPU/DRAM *measurement*, so node energy is
            never counted twice. Estimates are per process (CPU time, RSS) and so never overlap.
        estimate: The model used where a component has no counter.
        sync_cuda: Synchronise CUDA at each read so the window holds exactly the work issued in it.
            Only takes effect when CUDA is available (a simulated GPU on CPU torch must not sync).

    Example:
        >>> meter = EnergyMeter(gpu_indices=[])
        >>> meter.start()
        >>> _ = sum(i * i for i in range(100_000))
        >>> r = meter.read()
        >>> r.sources["cpu"], r.energy_j["cpu"] > 0
        ('estimated', True)
        >>> meter.stop().time_s >= r.time_s
        True
    """

    def __init__(
        self,
        gpu_indices: list[int] | None = None,
        node_counters: bool = True,
        estimate: EstimateModel | None = None,
        sync_cuda: bool = True,
    ) -> None:
        from zeus.monitor import ZeusMonitor

        self.estimate = estimate or EstimateModel()
        zones, dram_zones, rapl_problem = _rapl_zones()
        #: Why a component that has hardware here is estimated or unmeasured (component -> reason); said once by the
        #: caller and kept in :meth:`describe` (EnergyMonitor adds ``"gpu"`` when Zeus cannot open the GPUs).
        self.problems: dict[str, str] = {"cpu": rapl_problem} if rapl_problem and node_counters else {}
        # "counter": this process reads RAPL; "elsewhere": RAPL exists but local rank 0 reads it for the node,
        # so this process adds nothing (no double counting); "estimate": no counter on this machine.
        self.cpu_mode = ("counter" if node_counters else "elsewhere") if zones else "estimate"
        self.dram_mode = self.cpu_mode if (zones and dram_zones == zones) else "estimate"
        self.monitor = ZeusMonitor(
            gpu_indices=list(gpu_indices or []),
            cpu_indices=None if self.cpu_mode == "counter" else [],
            approx_instant_energy=True,
        )
        self.gpu_indices = list(self.monitor.gpu_indices)
        self._sync = sync_cuda and self._cuda_available()
        self.gpu_method = self._gpu_method()
        # GPUs with the energy counter are read here, once per read (Zeus's public GPU API); a window of `monitor`
        # would read each twice (its end, then the next one's start). Zeus's windows remain for RAPL (a CPU-only
        # monitor, so they read no GPU) and for GPUs that need Zeus's power sampling. `monitor` itself stays the
        # GPUs' monitor (PowerLimitTuner shares it).
        self._gpu_counters = self.gpu_method == "energy counter"
        if not self._gpu_counters:
            self._windows: ZeusMonitor | None = self.monitor
        elif self.cpu_mode == "counter":
            self._windows = ZeusMonitor(gpu_indices=[], cpu_indices=None, approx_instant_energy=True)
        else:
            self._windows = None
        self._gpu_last: dict[int, float] = {}
        self._gpu_t = 0.0
        # Per GPU: joules already counted for windows in which its counter had not moved yet (see _gpu_window_j).
        self._gpu_credit: dict[int, float] = {}
        self._started = False
        self._t0 = self._t_last = 0.0
        self._cpu_last = self._rss_last = 0.0
        self._acc = dict.fromkeys(COMPONENTS, 0.0)

    @staticmethod
    def _cuda_available() -> bool:
        try:
            import torch

            return torch.cuda.is_available()
        except ImportError:  # pragma: no cover - torch is a dependency
            return False

    def _gpu_method(self) -> str | None:
        if not self.gpu_indices:
            return None
        if all(self.monitor.gpus.supports_get_total_energy_consumption(i) for i in self.gpu_indices):
            return "energy counter"
        return "power sampling"

    @property
    def sources(self) -> dict[str, str]:
        """Where each component's figure comes from."""
        return {
            "gpu": "measured" if self.gpu_indices else "none",
            "cpu": "estimated" if self.cpu_mode == "estimate" else "measured",
            "dram": "estimated" if self.dram_mode == "estimate" else "measured",
        }

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` not yet."""
        return self._started

    def elapsed_s(self) -> float:
        """Wall seconds since :meth:`start`, without reading any counter."""
        return time.perf_counter() - self._t0 if self._started else 0.0

    def start(self) -> None:
        """Start metering; readings count from here."""
        if self._started:
            return
        if self._gpu_counters:
            self._gpu_last = self._read_gpu_counters()
            self._gpu_t = time.perf_counter()
            self._gpu_credit = dict.fromkeys(self.gpu_indices, 0.0)
        if self._windows is not None:
            self._windows.begin_window(_WINDOW, sync_execution=self._sync, restart=True)
        self._t0 = self._t_last = time.perf_counter()
        self._cpu_last = process_cpu_seconds()
        self._rss_last = resident_gb()
        self._acc = dict.fromkeys(COMPONENTS, 0.0)
        self._started = True

    def read(self) -> Reading:
        """Everything since :meth:`start`, per component."""
        if not self._started:
            raise RuntimeError("EnergyMeter.read() called before start().")
        if self._gpu_counters:
            self._acc["gpu"] += self._gpu_window_j()
        m = None
        if self._windows is not None:
            m = self._windows.end_window(_WINDOW, sync_execution=self._sync and not self._gpu_counters)
            self._windows.begin_window(_WINDOW, sync_execution=False)
        now, cpu_s, rss = time.perf_counter(), process_cpu_seconds(), resident_gb()
        dt = now - self._t_last

        if not self._gpu_counters and m is not None:
            self._acc["gpu"] += float(sum(m.gpu_energy.values()))
        if self.cpu_mode == "counter" and m is not None:
            self._acc["cpu"] += float(sum((m.cpu_energy or {}).values()))
        elif self.cpu_mode == "estimate":
            self._acc["cpu"] += self.estimate.cpu_energy_j(cpu_s - self._cpu_last)
        if self.dram_mode == "counter" and m is not None:
            self._acc["dram"] += float(sum((m.dram_energy or {}).values()))
        elif self.dram_mode == "estimate":
            self._acc["dram"] += self.estimate.dram_energy_j((rss + self._rss_last) / 2.0, dt)

        self._t_last, self._cpu_last, self._rss_last = now, cpu_s, rss
        log.debug("meter read: %.3f s, %s", now - self._t0, self._acc)
        return Reading(now - self._t0, dict(self._acc), self.sources)

    def stop(self) -> Reading:
        """Final reading; the meter can be started again afterwards."""
        reading = self.read()
        if self._windows is not None:
            self._windows.end_window(_WINDOW, sync_execution=False, cancel=True)
        self._started = False
        return reading

    def _gpu_window_j(self) -> float:
        """The metered GPUs' joules since the last read, from their energy counters.

        A window shorter than a counter's update period (a few ms to tens of ms) sees it unmoved: as Zeus does
        (``approx_instant_energy``), such a window counts the GPU's power now × its length. Unlike Zeus, that
        estimate is then taken off the counter's next rise, so the total stays the counters' own.
        """
        now_j = self._read_gpu_counters()
        t = time.perf_counter()
        dt, self._gpu_t = t - self._gpu_t, t
        total = 0.0
        for i in self.gpu_indices:
            delta = now_j[i] - self._gpu_last[i]
            if delta <= 0:
                approx = self.monitor.gpus.get_instant_power_usage(i) / 1000.0 * dt
                self._gpu_credit[i] += approx
                total += approx
            else:
                credit = self._gpu_credit[i]
                total += max(delta - credit, 0.0)
                self._gpu_credit[i] = max(credit - delta, 0.0)
        self._gpu_last = now_j
        return total

    def _read_gpu_counters(self) -> dict[int, float]:
        """Each metered GPU's energy counter in joules (after the queued CUDA work, when syncing)."""
        if self._sync:
            from zeus.utils.framework import sync_execution

            sync_execution(self.gpu_indices, sync_with="torch")
        gpus = self.monitor.gpus
        return {i: gpus.get_total_energy_consumption(i) / 1000.0 for i in self.gpu_indices}

    def describe(self) -> dict[str, object]:
        """What is metered and how, for the energy report."""
        return {
            "gpu_indices": self.gpu_indices,
            "gpu_method": self.gpu_method or ("unmeasured (GPUs not openable)" if "gpu" in self.problems else None),
            "cpu": {"counter": "RAPL (this process)", "elsewhere": "RAPL (read by local rank 0)"}.get(
                self.cpu_mode, "estimate (RAPL unreadable)" if "cpu" in self.problems else "estimate"
            ),
            "problems": dict(self.problems),
            "sources": self.sources,
            "estimate": self.estimate.as_dict(),
        }
