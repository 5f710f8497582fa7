"""The profiling state machine: try each power limit for a few training steps, then keep the best one.

Zeus's ``GlobalPowerLimitOptimizer`` runs the same machine (wait → per limit: warm-up, profile → done) but ties
it to hardware side effects at construction, an ``atexit`` that resets to the maximum, a CUDA-only all-reduce
and a single profiling pass. :class:`PowerLimitSearch` keeps the machine and drops the ties:

* the caller aggregates each finished window across ranks (through the Lightning strategy) and hands the
  totals to :meth:`~PowerLimitSearch.record`, so the machine runs unchanged on one process or many;
* an interruption (validation, the end of an epoch) *pauses* the open window instead of discarding the limit,
  so profiling never loops on short epochs and costs exactly ``wait + n_limits × (warmup + profile)`` steps;
* :meth:`~PowerLimitSearch.restart` re-profiles after the workload changes (a prune, a precision switch);
* limits are applied through a callable (the :class:`~lightning_green.power.guard.LimitGuard`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # zeus.optimizer.power_limit imports zeus.monitor (pandas, scikit-learn): only when used
    from zeus.optimizer.power_limit import OptimumSelector, PowerLimitMeasurement

__all__ = ["STATES", "STATE_CODES", "PowerLimitSearch", "Window", "WindowSource", "ZeusWindows", "limit_grid"]

log = logging.getLogger(__name__)

STATES = ("off", "waiting", "warmup", "profiling", "measured", "selecting", "done")
STATE_CODES = {s: i for i, s in enumerate(STATES)}
"""Numeric code of each state, as logged to ``power/tuner_state``."""

_ids = itertools.count()


def limit_grid(min_mw: int, max_mw: int, step_w: int) -> list[int]:
    """Zeus's grid: from the maximum down by ``step_w`` while at or above the minimum (mW, highest first).

    Example:
        >>> limit_grid(100_000, 250_000, 25)
        [250000, 225000, 200000, 175000, 150000, 125000, 100000]
    """
    return list(range(int(max_mw), int(min_mw) - 1, -int(step_w) * 1000))


@dataclass(frozen=True)
class Window:
    """One finished profiling window of this process: ``steps`` optimizer steps at ``limit_w``."""

    limit_w: int
    time_s: float
    energy_j: float
    steps: int


class WindowSource(Protocol):
    """Where windows are measured: time (s) and GPU energy (J) between :meth:`begin` and :meth:`end`."""

    def begin(self) -> None:
        """Open the window."""

    def end(self) -> tuple[float, float]:
        """Close the window: ``(time_s, energy_j)``."""

    def cancel(self) -> None:
        """Close the window, discarding it (no-op when none is open)."""


class _Released:
    """The window source of a released :class:`PowerLimitSearch`: it measures nothing any more."""

    def begin(self) -> None:
        raise RuntimeError("PowerLimitSearch was released: it cannot measure again")

    def end(self) -> tuple[float, float]:
        raise RuntimeError("PowerLimitSearch was released: it cannot measure again")

    def cancel(self) -> None:
        pass


class ZeusWindows:
    """Measurement windows on a ``ZeusMonitor`` (shareable: Zeus supports concurrent windows).

    Args:
        monitor: The Zeus monitor; it must measure ``gpu_index``.
        gpu_index: The GPU whose energy counts.
        sync: Let Zeus synchronise CUDA at window edges (only for CUDA runs).
        clock: Take time from this clock instead of Zeus's wall time (a simulated clock in benchmarks).
    """

    def __init__(self, monitor: object, gpu_index: int, sync: bool = False, clock: Callable[[], float] | None = None):
        self.monitor = monitor
        self.gpu_index = gpu_index
        self.sync = sync
        self.clock = clock
        self.key = f"__lightning_green_power_{next(_ids)}"
        self._t0 = 0.0
        self._open = False

    def begin(self) -> None:  # noqa: D102
        self.monitor.begin_window(self.key, sync_execution=self.sync, restart=True)  # type: ignore[attr-defined]
        self._t0 = self.clock() if self.clock else 0.0
        self._open = True

    def end(self) -> tuple[float, float]:  # noqa: D102
        m = self.monitor.end_window(self.key, sync_execution=self.sync)  # type: ignore[attr-defined]
        self._open = False
        t = self.clock() - self._t0 if self.clock else float(m.time)
        return float(t), float(m.gpu_energy.get(self.gpu_index, 0.0))

    def cancel(self) -> None:  # noqa: D102
        if self._open:
            self._open = False
            self.monitor.end_window(self.key, sync_execution=False, cancel=True)  # type: ignore[attr-defined]


class PowerLimitSearch:
    """Profile every limit of ``limits_mw`` over training steps, then select one.

    Call :meth:`step_begin` at every optimizer-step boundary. When it returns a :class:`Window`, aggregate it over
    ranks (energy summed, time the maximum) and call :meth:`record`; once that returns ``True``, call
    :meth:`select` (same answer on every rank, since the aggregates are the same) and :meth:`finish`.

    Args:
        limits_mw: Limits to profile (mW); profiled from the highest down, as Zeus does.
        set_limit: Applies a limit (mW); its errors propagate to the caller.
        windows: Where windows are measured.
        selector: Zeus's optimum selector.
        warmup_steps: Steps at each limit before its window opens (>= 1: the step that changes the limit).
        profile_steps: Steps measured at each limit.
        wait_steps: Steps before the first limit is tried (and after a restart).

    Example:
        >>> from zeus.optimizer.power_limit import Energy
        >>> class Fake:  # energy falls with the limit; time does not change
        ...     limit = 300_000
        ...     def begin(self): pass
        ...     def end(self): return 1.0, self.limit / 1000
        ...     def cancel(self): pass
        >>> src = Fake()
        >>> search = PowerLimitSearch([300_000, 200_000], lambda mw: setattr(src, "limit", mw), src, Energy(),
        ...                           warmup_steps=1, profile_steps=2, wait_steps=0)
        >>> while search.state != "selecting":
        ...     w = search.step_begin()
        ...     if w is not None:
        ...         _ = search.record(w.energy_j, w.time_s)
        >>> search.finish(search.select())
        >>> search.state, search.chosen_mw, [m.power_limit for m in search.measurements]
        ('done', 200000, [300, 200])
    """

    def __init__(
        self,
        limits_mw: Sequence[int],
        set_limit: Callable[[int], object],
        windows: WindowSource,
        selector: OptimumSelector,
        warmup_steps: int,
        profile_steps: int,
        wait_steps: int = 1,
    ) -> None:
        self.limits_mw = sorted({int(x) for x in limits_mw}, reverse=True)
        if not self.limits_mw:
            raise ValueError("PowerLimitSearch needs at least one power limit.")
        self.set_limit = set_limit
        self.windows = windows
        self.selector = selector
        self.warmup_steps = int(warmup_steps)
        self.profile_steps = int(profile_steps)
        self.wait_steps = int(wait_steps)
        self.measurements: list[PowerLimitMeasurement] = []
        self.measurement_steps = self.profile_steps
        """Training steps each of :attr:`measurements` covers (a loaded profile's own count)."""
        self.chosen_mw: int | None = None
        self.current_mw: int | None = None
        self.profiling_steps = 0
        """Steps spent warming up or profiling (not at the chosen limit), over all passes."""
        self.passes = 0
        """Profiling passes started (1 + re-profiles)."""
        self._reset()

    # -- state --------------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.state = "waiting"
        self.measurements = []
        self.measurement_steps = self.profile_steps
        self.chosen_mw = None
        self._index = 0
        self._remaining = self.wait_steps + 1
        self._counted = 0
        self._acc_t = self._acc_e = 0.0
        self._open = False
        self._paused = False
        self._mid_step = False  # paused inside a step (validation within gradient accumulation)
        self.passes += 1

    @property
    def profiling_limit_mw(self) -> int | None:
        """The limit being warmed up or profiled, if any."""
        if self.state in ("warmup", "profiling", "measured"):
            return self.limits_mw[self._index]
        return None

    def transitions_next(self) -> bool:
        """Whether the next :meth:`step_begin` changes the limit or closes a window (a sync point under DDP).

        A pure function of the step counters, so every rank answers the same at the same step.
        """
        if self.state in ("waiting", "warmup"):
            return self._remaining <= 1
        if self.state == "profiling":
            return self._counted + (0 if self._paused else 1) >= self.profile_steps
        return False

    def _apply(self, limit_mw: int) -> None:
        self.set_limit(limit_mw)
        self.current_mw = limit_mw

    def _start_limit(self) -> None:
        self._apply(self.limits_mw[self._index])
        self.state = "warmup"
        self._remaining = self.warmup_steps
        self._counted = 0
        self._acc_t = self._acc_e = 0.0

    def _close(self) -> None:
        if self._open:
            t, e = self.windows.end()
            self._acc_t += t
            self._acc_e += e
            self._open = False

    def _finish_window(self) -> Window:
        self._close()
        self.state = "measured"
        return Window(self.limits_mw[self._index] // 1000, self._acc_t, self._acc_e, self._counted)

    # -- events -------------------------------------------------------------------------------------------------
    def step_begin(self) -> Window | None:
        """An optimizer step begins. Returns this process's window when one just finished."""
        window = self._step_begin()
        if self.state in ("warmup", "profiling"):  # the step now starting runs at a profiled limit
            self.profiling_steps += 1
        return window

    def _step_begin(self) -> Window | None:
        if self.state == "waiting":
            self._remaining -= 1
            if self._remaining <= 0:
                self._start_limit()
        elif self.state == "warmup":
            self._remaining -= 1
            if self._remaining <= 0:
                self.state = "profiling"
                self._paused = False
                self.windows.begin()
                self._open = True
        elif self.state == "profiling":
            if self._paused:
                if self._counted >= self.profile_steps:
                    return self._finish_window()
                self._paused = False
                self.windows.begin()
                self._open = True
                return None
            self._counted += 1
            if self._counted >= self.profile_steps:
                return self._finish_window()
        return None

    def pause(self, step_completed: bool) -> None:
        """Training pauses (validation, the end of an epoch): close the open window, keeping what it measured.

        Args:
            step_completed: The step begun last has finished (its optimizer stepped), so it counts.
        """
        if self.state == "profiling" and self._open:
            self._close()
            self._counted += int(step_completed)
            self._paused = True
            self._mid_step = not step_completed

    def continue_step(self) -> None:
        """Training goes on inside the step a pause interrupted: measure the rest of it (it counts when it ends).

        Validation at a ``val_check_interval`` inside gradient accumulation pauses mid-step; without this the rest
        of that step went unmeasured and the step uncounted, while its first part stayed in the window (the energy
        and time per step came out up to 65 % high).
        """
        if self.state == "profiling" and self._paused and self._mid_step and not self._open:
            self._paused = self._mid_step = False
            self.windows.begin()
            self._open = True

    def record(self, energy_j: float, time_s: float) -> bool:
        """Store the aggregated window of the limit just profiled; ``True`` when every limit is measured.

        Raises:
            ValueError: Nothing was measured (no energy or no time): the counter does not work.
        """
        if self.state != "measured":
            raise RuntimeError(f"PowerLimitSearch.record() in state {self.state!r}")
        if not (energy_j > 0 and time_s > 0):
            raise ValueError(
                f"no GPU energy/time measured at {self.limits_mw[self._index] // 1000} W "
                f"(energy {energy_j:.3g} J, time {time_s:.3g} s)"
            )
        self.measurements.append(
            _measurement(power_limit=self.limits_mw[self._index] // 1000, energy=energy_j, time=time_s)
        )
        self._index += 1
        if self._index < len(self.limits_mw):
            self._start_limit()
            self.profiling_steps += 1  # the step begun with this window's end warms up the next limit
            return False
        self.state = "selecting"
        return True

    def load(self, measurements: Sequence[PowerLimitMeasurement], steps: int | None = None) -> None:
        """Use a stored profile instead of profiling: the machine waits in ``selecting``.

        Args:
            measurements: The stored profile.
            steps: Training steps each measurement covers (``None``: ``profile_steps``).
        """
        self.cancel()
        self.measurements = list(measurements)
        self.measurement_steps = int(steps) if steps is not None else self.profile_steps
        self.state = "selecting"

    def resume(self, measurements: Sequence[PowerLimitMeasurement], steps: int | None = None) -> None:
        """Continue a profile begun earlier (a checkpoint saved mid-profiling): keep its measured limits.

        The machine waits ``wait_steps`` again, then profiles the first limit not measured yet (a limit that was
        being measured when the checkpoint was saved is measured again). With every limit measured it waits in
        ``selecting``, as after :meth:`load`.

        Args:
            measurements: The limits measured so far.
            steps: Training steps each measurement covers (``None``: ``profile_steps``).

        Raises:
            ValueError: The measurements cannot be continued here: they are not this machine's highest limits in
                order (another limit grid: another ``pl_step_w`` or GPU), or cover another number of steps.
        """
        measured = [int(m.power_limit) for m in measurements]
        expected = [mw // 1000 for mw in self.limits_mw[: len(measured)]]
        if measured != expected:
            raise ValueError(f"its limits {measured} W are not the first of this grid {expected} W")
        steps = self.profile_steps if steps is None else int(steps)
        if steps != self.profile_steps:
            raise ValueError(f"its limits were measured over {steps} steps, not profile_steps={self.profile_steps}")
        if len(measured) == len(self.limits_mw):
            self.load(measurements, steps)
            return
        self.cancel()
        passes = self.passes
        self._reset()
        self.passes = passes  # the same pass, continued
        self.measurements = list(measurements)
        self._index = len(measured)

    def select(self) -> int:
        """The selected limit, mW (one of the profiled limits)."""
        watts = int(self.selector.select(self.measurements))
        by_watt = {mw // 1000: mw for mw in self.limits_mw}
        return by_watt.get(watts, watts * 1000)

    def finish(self, chosen_mw: int) -> None:
        """Apply ``chosen_mw`` and stop profiling."""
        self._apply(int(chosen_mw))
        self.chosen_mw = int(chosen_mw)
        self.state = "done"

    def restart(self) -> None:
        """Forget the profile and start again (the workload changed)."""
        self.cancel()
        self._reset()

    def cancel(self) -> None:
        """Discard any open window."""
        if self._open:
            self.windows.cancel()
            self._open = False

    def release(self) -> None:
        """Discard any open window and let go of the window source (a Zeus monitor may hold sampling processes).

        The profile and the choice stay readable; the machine cannot measure again.
        """
        self.cancel()
        self.windows = _Released()

    def stop(self) -> None:
        """Turn the machine off (the tuner is disabled)."""
        self.cancel()
        self.state = "off"


def _measurement(**fields: float) -> PowerLimitMeasurement:
    from zeus.optimizer.power_limit import PowerLimitMeasurement

    return PowerLimitMeasurement(**fields)
