"""A simulated GPU for Zeus: dry-run energy measurement and power-limit tuning on any machine.

Zeus looks its GPUs up through a process-wide singleton (``zeus.device.gpu._gpus``, filled by ``get_gpus()``).
:func:`simulated_gpus` installs a :class:`SimulatedGPUs` there, so every Zeus API — ``ZeusMonitor``, the power
limit optimizer — and so every lightning-green callback sees simulated devices instead of NVML ones. Nothing
on a real GPU is ever touched.

Power model. A busy GPU draws ``draw(limit)``, an idle one ``idle_w``; the total-energy counter integrates that
draw over the clock (wall time by default; tests and benchmarks may pass a :class:`SimClock`), like NVML's
``nvmlDeviceGetTotalEnergyConsumption``, in millijoules. Work runs at ``throughput(limit)`` of its speed at the
maximum limit, so :meth:`SimulatedGPU.run` takes longer under a lower limit and the time/energy trade-off a
power-limit tuner navigates is real:

* ``curve=None`` (the default, uncalibrated): ``draw = min(limit, demand_w)``; throughput saturates at the knee
  ``limit = demand_w`` and falls as ``sqrt(limit / demand_w)`` below it.
* ``curve=V100_RESNET50`` (or ``"v100-resnet50"``): calibrated on published measurements (below), interpolated
  linearly between the measured limits.

Calibration source (``V100_RESNET50``): the power trace of the Zeus paper — J. You, J.-W. Chung,
M. Chowdhury, *Zeus: Understanding and Optimizing GPU Energy Consumption of DNN Training*, USENIX NSDI 2023 —
published with its artifact as ``summary_power_v100.csv`` (github.com/ml-energy/zeus,
``examples/research_reproducibility/zeus_nsdi23/trace/``): ResNet-50 on ImageNet, batch size 256, Adadelta,
NVIDIA V100 (power limits 100–250 W). Time per epoch (s) and average power (W) per limit:

====  ========  ======
 W     s/epoch    W avg
====  ========  ======
100    6781.17   98.38
125    5064.97  121.97
150    4148.66  144.59
175    3852.18  166.37
200    3700.97  184.94
225    3584.30  205.44
250    3514.99  220.25
====  ========  ======

Energy per epoch is lowest at 150 W; Zeus's cost with ``eta=0.5`` is lowest at 175 W.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override
from zeus.device.gpu.common import GPU, GPUs, ZeusGPUInvalidArgError, ZeusGPUNoPermissionError

__all__ = [
    "CURVES",
    "V100_RESNET50",
    "PowerCurve",
    "SimClock",
    "SimulatedGPU",
    "SimulatedGPUWorkload",
    "SimulatedGPUs",
    "installed_simulated_gpus",
    "simulated_gpus",
]


@dataclass(frozen=True)
class PowerCurve:
    """Measured points of one workload on one GPU: power limit → relative throughput and average draw.

    Values between points are interpolated linearly; outside them the nearest point is used.

    Attributes:
        name: Short name.
        limits_w: Power limits (W), increasing.
        throughput: Throughput at each limit relative to the highest limit (1.0 there).
        draw_w: Average board draw (W) at each limit while busy.
        source: Where the numbers come from.
    """

    name: str
    limits_w: tuple[float, ...]
    throughput: tuple[float, ...]
    draw_w: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.limits_w)
        if n < 2 or len(self.throughput) != n or len(self.draw_w) != n:
            raise ValueError(f"PowerCurve({self.name!r}): need >= 2 points and equally long columns.")
        if any(b <= a for a, b in zip(self.limits_w, self.limits_w[1:], strict=False)):
            raise ValueError(f"PowerCurve({self.name!r}): `limits_w` must be strictly increasing.")

    def _interp(self, ys: tuple[float, ...], x: float) -> float:
        xs = self.limits_w
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, x)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def throughput_at(self, limit_w: float) -> float:
        """Relative throughput at ``limit_w``."""
        return self._interp(self.throughput, limit_w)

    def draw_at(self, limit_w: float) -> float:
        """Average busy draw (W) at ``limit_w``."""
        return self._interp(self.draw_w, limit_w)


def _from_epochs(name: str, rows: Sequence[tuple[float, float, float]], source: str) -> PowerCurve:
    """Build a curve from (limit W, seconds per epoch, average W) rows."""
    fastest = min(r[1] for r in rows)
    return PowerCurve(
        name=name,
        limits_w=tuple(r[0] for r in rows),
        throughput=tuple(fastest / r[1] for r in rows),
        draw_w=tuple(r[2] for r in rows),
        source=source,
    )


V100_RESNET50 = _from_epochs(
    "v100-resnet50",
    [
        (100, 6781.173333333332, 98.38240555274153),
        (125, 5064.97, 121.9660191434676),
        (150, 4148.66, 144.59474877795884),
        (175, 3852.1800000000003, 166.37217540170334),
        (200, 3700.973333333334, 184.94427296655326),
        (225, 3584.3033333333333, 205.43829852803177),
        (250, 3514.986666666666, 220.25029530245453),
    ],
    source="Zeus (NSDI'23) power trace summary_power_v100.csv: imagenet/resnet50, batch 256, adadelta",
)
"""ResNet-50/ImageNet on an NVIDIA V100, measured by the Zeus authors (see the module docstring)."""

CURVES: dict[str, PowerCurve] = {V100_RESNET50.name: V100_RESNET50}
"""Calibrated curves by name (``SimulatedGPU(curve="v100-resnet50")``)."""


class SimClock:
    """A manual clock for :class:`SimulatedGPU`: time moves only when work runs or :meth:`advance` is called.

    Example:
        >>> clock = SimClock()
        >>> clock.advance(1.5)
        >>> clock()
        1.5
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self.t = float(start_s)

    def __call__(self) -> float:
        """Current time, seconds."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        if seconds < 0:
            raise ValueError(f"SimClock.advance({seconds}): time only moves forward.")
        self.t += seconds


class SimulatedGPU(GPU):
    """One simulated GPU behind Zeus's ``GPU`` interface.

    Args:
        gpu_index: Index Zeus reports for it.
        name: Model name (``get_name()``); with a ``curve`` and no name, the curve names it.
        min_limit_w: Lowest settable power limit, W (``None``: the curve's lowest point, else 100).
        max_limit_w: Highest settable power limit, W, also the default limit (``None``: the curve's highest, else
            300).
        idle_w: Draw when not busy, W.
        demand_w: Draw the workload would take with no cap, W (uncalibrated model only).
        has_energy_counter: ``False`` mimics pre-Volta GPUs, where Zeus samples power instead.
        can_set_limits: ``False`` mimics a process without ``SYS_ADMIN``: setters raise
            ``ZeusGPUNoPermissionError``, as NVML's do. May be flipped at any time.
        clock: Seconds, monotonic; ``time.monotonic`` by default. A :class:`SimClock` makes :meth:`run` advance
            it instead of sleeping.
        curve: A calibrated :class:`PowerCurve` (or its name in :data:`CURVES`); ``None`` uses the knee model.
        initial_limit_w: The limit the GPU has when the simulation starts (e.g. one an administrator set);
            ``None``: the maximum.
        state_path: A JSON file that keeps the limit (and its history) across processes, as a real GPU keeps its
            limit after the process that set it dies. Read at construction if it exists, written at every change.

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

        A calibrated V100: a step that takes 1 s at 250 W takes ~1.05 s at 200 W and draws less.

        >>> clock = SimClock()
        >>> v100 = SimulatedGPU(curve="v100-resnet50", clock=clock)
        >>> round(v100.run(1.0), 3), round(v100.power_w(), 1)
        (1.0, 220.3)
        >>> v100.set_power_management_limit(200_000)
        >>> round(v100.run(1.0), 3), round(v100.power_w(), 1)
        (1.053, 184.9)
    """

    def __init__(
        self,
        gpu_index: int = 0,
        name: str | None = None,
        min_limit_w: int | None = None,
        max_limit_w: int | None = None,
        idle_w: float = 50.0,
        demand_w: float = 250.0,
        has_energy_counter: bool = True,
        can_set_limits: bool = True,
        clock: Callable[[], float] = time.monotonic,
        curve: PowerCurve | str | None = None,
        initial_limit_w: int | None = None,
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(gpu_index)
        if isinstance(curve, str):
            if curve not in CURVES:
                raise ValueError(f"SimulatedGPU(curve={curve!r}): `curve` must be one of {tuple(CURVES)!r}.")
            curve = CURVES[curve]
        self.curve = curve
        if min_limit_w is None:
            min_limit_w = int(curve.limits_w[0]) if curve else 100
        if max_limit_w is None:
            max_limit_w = int(curve.limits_w[-1]) if curve else 300
        if not 0 < min_limit_w <= max_limit_w:
            raise ValueError(
                f"SimulatedGPU(min_limit_w={min_limit_w}, max_limit_w={max_limit_w}): need 0 < min <= max."
            )
        self.name = name if name is not None else (f"Simulated {curve.name}" if curve else "Simulated GPU")
        self.min_limit_w = int(min_limit_w)
        self.max_limit_w = int(max_limit_w)
        self.idle_w = float(idle_w)
        self.demand_w = float(demand_w)
        self.has_energy_counter = has_energy_counter
        self.can_set_limits = can_set_limits
        self.clock = clock
        self.busy = True
        self.persistence_mode = False
        start_w = self.max_limit_w if initial_limit_w is None else int(initial_limit_w)
        if not self.min_limit_w <= start_w <= self.max_limit_w:
            raise ValueError(
                f"SimulatedGPU(initial_limit_w={initial_limit_w}): must lie in "
                f"[{self.min_limit_w}, {self.max_limit_w}]."
            )
        self._limit_mw = start_w * 1000
        self.limit_history: list[int] = [self._limit_mw]
        """Every power limit the GPU had, in mW, oldest first (tests assert on it)."""
        self.state_path = os.fspath(state_path) if state_path is not None else None
        if self.state_path and os.path.exists(self.state_path):
            with open(self.state_path, encoding="utf-8") as f:
                saved = json.load(f)
            self._limit_mw = int(saved["limit_mw"])
            self.limit_history = [int(x) for x in saved.get("limit_history", [self._limit_mw])]
        self._energy_mj = 0.0
        self._t_last = clock()
        self._lock = threading.Lock()
        self._save()

    # -- power model ------------------------------------------------------------------------------------------
    @property
    def limit_w(self) -> float:
        """Current power limit, W."""
        return self._limit_mw / 1000.0

    def throughput(self, limit_w: float | None = None) -> float:
        """Speed of work at ``limit_w`` (default: the current limit) relative to the maximum limit."""
        limit = self.limit_w if limit_w is None else limit_w
        if self.curve is not None:
            return self.curve.throughput_at(limit) / self.curve.throughput_at(self.max_limit_w)
        return math.sqrt(min(limit, self.demand_w) / self.demand_w)

    def busy_draw_w(self, limit_w: float | None = None) -> float:
        """Draw while busy at ``limit_w`` (default: the current limit), W."""
        limit = self.limit_w if limit_w is None else limit_w
        if self.curve is not None:
            return min(limit, self.curve.draw_at(limit))
        return min(limit, self.demand_w)

    def power_w(self) -> float:
        """Current draw in W."""
        return self.busy_draw_w() if self.busy else self.idle_w

    def _advance(self) -> None:
        with self._lock:
            now = self.clock()
            self._energy_mj += self.power_w() * (now - self._t_last) * 1000.0
            self._t_last = now

    def set_busy(self, busy: bool) -> None:
        """Switch between the busy and the idle draw."""
        self._advance()
        self.busy = busy

    def run(self, work_s: float) -> float:
        """Run ``work_s`` seconds of work (its duration at the maximum limit); return how long it took here.

        The GPU is busy for that long — a :class:`SimClock` is advanced, any other clock is slept on — then returns
        to its previous busy/idle state.
        """
        duration = float(work_s) / self.throughput()
        was_busy = self.busy
        self.set_busy(True)
        advance = getattr(self.clock, "advance", None)
        if callable(advance):
            advance(duration)
        else:
            time.sleep(duration)
        self.set_busy(was_busy)
        return duration

    def _check_permission(self) -> None:
        if not self.can_set_limits:
            raise ZeusGPUNoPermissionError("Insufficient Permissions (simulated GPU without SYS_ADMIN)")

    def _save(self) -> None:
        if not self.state_path:
            return
        tmp = f"{self.state_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"name": self.name, "limit_mw": self._limit_mw, "limit_history": self.limit_history}, f)
        os.replace(tmp, self.state_path)

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
        self._save()

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

    simulated = True
    """Marks the collection as simulated: lightning-green then gives a CPU run the rank's simulated GPU."""

    def __init__(self, gpus: Sequence[SimulatedGPU] = (), ensure_homogeneous: bool = False) -> None:
        self._gpus = list(gpus)
        if ensure_homogeneous:
            self._ensure_homogeneous()

    def __del__(self) -> None:  # noqa: D105 - nothing to shut down
        pass

    @property
    def gpus(self) -> Sequence[SimulatedGPU]:  # noqa: D102
        return self._gpus


def _build(count: int, state_dir: str | os.PathLike[str] | None, gpu_kwargs: Mapping[str, Any]) -> SimulatedGPUs:
    gpus = []
    for i in range(count):
        kwargs = dict(gpu_kwargs)
        if state_dir is not None:
            os.makedirs(state_dir, exist_ok=True)
            kwargs["state_path"] = os.path.join(os.fspath(state_dir), f"gpu{i}.json")
        gpus.append(SimulatedGPU(gpu_index=i, **kwargs))
    return SimulatedGPUs(gpus)


def installed_simulated_gpus() -> SimulatedGPUs | None:
    """The :class:`SimulatedGPUs` installed at Zeus's seam in this process, if any (never initialises NVML)."""
    import zeus.device.gpu as zeus_gpu

    gpus = zeus_gpu._gpus  # read only: Zeus's process-wide GPU singleton
    return gpus if isinstance(gpus, SimulatedGPUs) else None


@contextlib.contextmanager
def simulated_gpus(
    count: int = 1, state_dir: str | os.PathLike[str] | None = None, **gpu_kwargs: Any
) -> Iterator[SimulatedGPUs]:
    """Install ``count`` simulated GPUs where Zeus looks GPUs up, restoring what was there on exit.

    Keyword arguments are passed to every :class:`SimulatedGPU`; with ``state_dir``, GPU ``i`` keeps its limit in
    ``state_dir/gpu{i}.json`` (see ``state_path``).

    Example:
        >>> from zeus.device import get_gpus
        >>> with simulated_gpus(2, name="Sim H100") as gpus:
        ...     get_gpus() is gpus, get_gpus().get_name(1)
        (True, 'Sim H100')
    """
    import zeus.device.gpu as zeus_gpu

    previous = zeus_gpu._gpus
    sims = _build(count, state_dir, gpu_kwargs)
    zeus_gpu._gpus = sims
    try:
        yield sims
    finally:
        zeus_gpu._gpus = previous


_GPU_LOOKERS = {"EnergyMonitor", "PowerLimitTuner"}  # callbacks that look for GPUs in their setup


class SimulatedGPUWorkload(Callback):
    """Make a CPU training run behave as if each rank trained on its own simulated GPU.

    In ``setup`` it installs ``count`` simulated GPUs in this process unless some are installed already (so it
    works in every ``ddp_spawn`` worker, which starts with a fresh interpreter); all GPUs then idle, and each
    training batch runs ``step_work_s × work_scale`` seconds of simulated kernels on the rank's GPU (index
    ``local_rank``), sleeping (or advancing a :class:`SimClock`) for as long as the current power limit makes them
    take. Put it first in ``Trainer(callbacks=[...])`` so the GPUs exist before other callbacks look for them.
    GPUs it installed are removed again in ``teardown`` and, since Lightning skips ``teardown`` after a crash, in
    ``on_exception``.

    Args:
        count: GPUs to install when none are.
        step_work_s: Simulated kernel time of one training batch at the maximum limit, seconds.
        state_dir: Folder where each GPU keeps its limit across processes (``gpu{i}.json``).
        gpu_kwargs: Keyword arguments for every :class:`SimulatedGPU` it installs (e.g. ``{"curve": "v100-resnet50"}``).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> work = SimulatedGPUWorkload(step_work_s=0.001, gpu_kwargs={"curve": "v100-resnet50"})
        >>> trainer = Trainer(max_steps=3, callbacks=[work], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> work.batches, round(work.busy_s, 4)
        (3, 0.003)
    """

    def __init__(
        self,
        count: int = 1,
        step_work_s: float = 0.002,
        state_dir: str | None = None,
        gpu_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"SimulatedGPUWorkload(count={count!r}): `count` must be an int >= 1.")
        if not isinstance(step_work_s, (int, float)) or step_work_s < 0:
            raise ValueError(f"SimulatedGPUWorkload(step_work_s={step_work_s!r}): `step_work_s` must be >= 0.")
        self.count = count
        self.step_work_s = float(step_work_s)
        self.state_dir = state_dir
        self.gpu_kwargs = dict(gpu_kwargs or {})
        self.work_scale = 1.0
        self.batches = 0
        self.busy_s = 0.0
        self._installed: tuple[object, SimulatedGPUs] | None = None
        self._gpu: SimulatedGPU | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_installed"] = None  # a spawned worker installs its own
        state["_gpu"] = None
        return state

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        import zeus.device.gpu as zeus_gpu

        sims = installed_simulated_gpus()
        if sims is None:
            sims = _build(self.count, self.state_dir, self.gpu_kwargs)
            self._installed = (zeus_gpu._gpus, sims)
            zeus_gpu._gpus = sims
            self._warn_if_late(trainer)
        for gpu in sims.gpus:
            gpu.set_busy(False)
        self._gpu = sims.gpus[trainer.local_rank] if trainer.local_rank < len(sims.gpus) else None

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._gpu is not None and self.step_work_s > 0:
            self.busy_s += self._gpu.run(self.step_work_s * self.work_scale)
        self.batches += 1

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._uninstall()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning does not call teardown after an exception: without this, the simulated GPUs would stay in
        # Zeus's process-wide singleton and later CPU runs in this process would "measure" them.
        self._uninstall()

    def _warn_if_late(self, trainer: Any) -> None:
        """Say so when callbacks that look for GPUs in their ``setup`` ran before this one installed them."""
        callbacks = list(getattr(trainer, "callbacks", []))
        mine = next((i for i, cb in enumerate(callbacks) if cb is self), 0)
        # By class name (subclasses too): the public test helper stays free of the callbacks' imports.
        before = [type(cb).__name__ for cb in callbacks[:mine] if _GPU_LOOKERS & {c.__name__ for c in type(cb).__mro__}]
        if before:
            rank_zero_warn(
                f"SimulatedGPUWorkload: installed after {', '.join(before)}, which looked for GPUs in their setup "
                "before these existed (no GPU is measured, the tuner stays off). Put SimulatedGPUWorkload first in "
                "the callbacks (in a YAML: the first entry of trainer.callbacks; --trainer.callbacks+= appends it "
                "last)."
            )

    def _uninstall(self) -> None:
        """Put back what Zeus's GPU singleton held before :meth:`setup` installed the simulated GPUs."""
        if self._installed is not None:
            import zeus.device.gpu as zeus_gpu

            if zeus_gpu._gpus is self._installed[1]:
                zeus_gpu._gpus = self._installed[0]
            self._installed = None
        self._gpu = None
