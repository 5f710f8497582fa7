"""CarbonAwareScheduler: train in the cleanest hours (slots) of the grid that still finish before a deadline."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_green._internal.logging import log_metrics, log_step
from lightning_green._internal.packages import lightning_types
from lightning_green._internal.runs import PicklesWithoutTrainer, continue_run
from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_number,
    check_state_version,
    fail,
)
from lightning_green.carbon.plan import (
    FORECASTS,
    MAX_DEADLINE_S,
    MAX_PLAN_SLOTS,
    CarbonPlanner,
    Forecast,
    Plan,
    history_needed_s,
    is_date_time,
    parse_deadline,
    parse_duration,
    slots_needed,
)
from lightning_green.carbon.source import EXTEND_CHOICES, Extend, as_intensity_source, ensure_covers
from lightning_green.carbon.trace import _iso, check_timezone
from lightning_green.events import WorkloadChange, add_report_section

__all__ = ["CarbonAwareScheduler"]

log = logging.getLogger(__name__)

_SLEEP_CHUNK_S = 1.0  # longest sleep between two looks at Lightning's SIGTERM flag while pausing
Power = Literal["off", "clean-fast"]
_POWER = ("off", "clean-fast")


class CarbonAwareScheduler(PicklesWithoutTrainer, Callback):
    """Pause training between optimizer steps while the grid is dirty, and still finish before a deadline.

    From the expected compute time left and the intensity forecast it plans the remaining training into the
    cleanest slots before ``deadline``; between optimizer steps it pauses when the current slot is not in the plan,
    and re-plans at every decision, so a changed forecast of the remaining time (a prune or a precision switch:
    ``on_workload_changed``, after which it runs until the new step time is measured; or simply measured step times)
    moves the plan. Its own pauses never make the run miss
    the deadline: once ``remaining × (1 + safety_margin)`` no longer fits before it, it stops pausing.
    ``Trainer(max_time=...)`` (Lightning's ``Timer``, whose clock runs on through a pause) is a deadline too: when
    it ends the fit before ``deadline``, the plan is made to its end instead.

    The remaining time is ``expected_duration`` minus the compute done until step times are measured
    (``estimate_after_steps`` optimizer steps, again after each workload change), then the mean step time ×
    the steps left (``trainer.estimated_stepping_batches``). With neither, it runs until it has measured. Under
    manual optimization a step is a training batch, as in Lightning's estimate (``global_step`` counts every
    optimizer's step there, two a batch for a GAN; ``max_steps`` still bounds it).

    Slots follow the trace's own grid: they start where its intervals start and last one step, at most an hour
    (15 minutes for a 15-minute trace; hours from :30 UTC for an hourly trace in India's time), so a job can start
    at the trace's cleanest interval. A number, a callable or Electricity Maps is planned in UTC hours. ``slot``
    sets the length instead.

    A pause expected to last ``checkpoint_after`` or longer (until the next planned slot) is preceded by a checkpoint
    (``last-carbon-pause.ckpt`` in the ``ModelCheckpoint``'s folder, when the Trainer has one), so a job killed while
    it waits loses nothing: ``fit(ckpt_path="last")`` resumes from it while it is the newest "last" checkpoint. A
    SIGTERM (pre-emption, ``kill``) ends a pause within a second and Lightning's own shutdown goes on (the run stops
    with ``SIGTERMException``, as it does between steps).
    With ``power="clean-fast"`` and a :class:`~lightning_green.PowerLimitTuner` that has finished profiling, clean
    hours (intensity at or below the mean forecast of the hours left) run at the profile's fastest limit and dirty
    hours at its most energy-efficient one.

    All time comes from ``clock`` (POSIX seconds); a clock with an ``advance(seconds)`` method (such as
    :class:`lightning_green.testing.SimClock`) is advanced instead of slept on, so days of grid data replay in
    seconds. Under DDP rank 0 decides and broadcasts; every rank pauses and resumes at the same step.

    Logged to every logger at each decision: ``carbon/plan`` (1 run, 0 pause), ``carbon/paused_s`` (total so far)
    and ``carbon/intensity_g_per_kWh`` (now). One line is printed per pause and per resume. With an
    :class:`~lightning_green.EnergyMonitor` the energy report gets a ``carbon_schedule`` section: the plan and the
    forecast it was made from, every pause, and the deadline.

    Args:
        intensity: The grid's intensity: a CSV path (see :func:`lightning_green.carbon.read_trace`), a
            :class:`~lightning_green.carbon.CSVTrace` (a CSV whose columns or unit must be named; also from YAML), a
            number,
            ``"electricitymaps:<zone>"`` (Electricity Maps' history and forecast, token in ``ELECTRICITYMAPS_TOKEN``;
            use ``forecast="trace"`` with it), or (Python only) a callable ``datetime -> gCO2e/kWh``.
        deadline: ISO date-time (``"2026-12-01T08:00"``, naive = UTC) or a duration from the start (``"24h"``,
            seconds), at most 366 days after the start (:data:`lightning_green.carbon.plan.MAX_DEADLINE_S`).
        expected_duration: Compute time the job needs (``"8h"``, seconds); ``None`` measures it.
        forecast: ``"trace"`` (the intensity source is the forecast), ``"persistence"`` (the same hours of the
            previous day, corrected by the level and trend of today against yesterday; the trace must start 27 h
            before the run) or ``"persistence-week"`` (the mean of the same hours of the past 7 days, level-corrected;
            the trace must start a week before). The persistence forecasts read only past intensities and re-plan
            as the hours pass (see :class:`lightning_green.carbon.CarbonPlanner`).
        safety_margin: Share of the remaining time kept as slack before the deadline (>= 0).
        checkpoint_after: Pauses at least this long are preceded by a checkpoint (``"10m"``, seconds); ``None``
            never.
        power: ``"off"`` or ``"clean-fast"`` (see above).
        estimate_after_steps: Optimizer steps measured before the step time is trusted (>= 1).
        extend: ``"none"``: a trace that does not reach the deadline is refused; ``"repeat-last-week"``: its last
            week is repeated to cover it.
        slot: Planning slot (``"15m"``, ``"1h"``, seconds), aligned on a trace's start; ``None``: the trace's own
            step (at most an hour; UTC hours for a number, a callable or Electricity Maps).
        timezone: Zone of a CSV's timestamps without an offset.
        clock: POSIX-seconds clock; ``None`` is ``time.time``.
        verbose: Print the pause/resume lines.

    Raises:
        ValueError: An argument is out of range; at ``setup``: a deadline in the past, more than 366 days ahead or
            shorter than the expected duration, a trace that does not cover the time up to the deadline.
        TypeError: An argument has the wrong type.

    Example:
        >>> import datetime, tempfile
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lightning_green.testing import SimClock
        >>> clock = SimClock(datetime.datetime(2022, 6, 1, 0, tzinfo=datetime.timezone.utc).timestamp())
        >>> dirty_now = lambda when: 400.0 if when.hour < 3 else 100.0  # clean from 03:00
        >>> sched = CarbonAwareScheduler(intensity=dirty_now, deadline="12h", expected_duration="1h", clock=clock,
        ...                              verbose=False)
        >>> trainer = Trainer(default_root_dir=tempfile.mkdtemp(), max_steps=3, callbacks=[sched], logger=False,
        ...                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> sched.paused_s / 3600
        3.0
    """

    _trainer_refs = ("_fit_trainer",)

    def __init__(
        self,
        intensity: float | str | Callable[[_dt.datetime], float],
        deadline: str | float = "24h",
        expected_duration: str | float | None = None,
        forecast: Forecast = "trace",
        safety_margin: float = 0.05,
        checkpoint_after: str | float | None = "10m",
        power: Power = "off",
        estimate_after_steps: int = 5,
        extend: Extend = "none",
        slot: str | float | None = None,
        timezone: str = "UTC",
        clock: Callable[[], float] | None = None,
        verbose: bool = True,
    ) -> None:
        name = type(self).__name__
        check_timezone(name, "timezone", timezone)
        self.source = as_intensity_source(intensity, name, "intensity", timezone=timezone)
        # Validates the form, and bounds a duration; a date-time is resolved and bounded against the clock in setup.
        parse_deadline(deadline, 0.0, name, max_ahead_s=None if is_date_time(deadline) else MAX_DEADLINE_S)
        self.expected_duration_s = (
            None if expected_duration is None else parse_duration(expected_duration, name, "expected_duration")
        )
        check_choice(name, "forecast", forecast, FORECASTS)
        check_number(name, "safety_margin", safety_margin, ge=0.0)
        self.checkpoint_after_s = (
            None if checkpoint_after is None else parse_duration(checkpoint_after, name, "checkpoint_after")
        )
        check_choice(name, "power", power, _POWER)
        check_number(name, "estimate_after_steps", estimate_after_steps, integer=True, ge=1)
        check_choice(name, "extend", extend, EXTEND_CHOICES)
        self.slot = slot
        self.slot_s = None if slot is None else parse_duration(slot, name, "slot")
        if clock is not None and not callable(clock):
            fail(name, "clock", clock, "None or a callable returning POSIX seconds", TypeError)
        check_bool(name, "verbose", verbose)
        self.deadline = deadline
        self.forecast = forecast
        self.safety_margin = float(safety_margin)
        self.power = power
        self.estimate_after_steps = estimate_after_steps
        self.extend = extend
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        if callable(getattr(self.source, "use_clock", None)):
            self.source.use_clock(self.clock)  # an online source decides what is past by the same clock
        self.verbose = verbose

        self.planner: CarbonPlanner | None = None
        self.start_s: float | None = None
        self.deadline_s: float | None = None
        self.timer_end_s: float | None = None  # where Trainer(max_time=...) ends the fit, when before the deadline
        self._fit_trainer: Any = None  # weak reference to the last fit's Trainer (a new one starts a new run)
        self._new_run()

    def _new_run(self) -> None:
        """A new run (a new Trainer): no pauses, plans or measured step time yet."""
        self.paused_s = 0.0
        self.compute_s = 0.0
        self.pauses: list[dict[str, Any]] = []
        self._sigterm = False  # a SIGTERM caught while pausing (see _sleep)
        self.plans: list[dict[str, Any]] = []
        self.replans = 0
        self.last_plan: Plan | None = None
        self.first_plan: Plan | None = None
        self._step_s: float | None = None  # mean step time since the last workload change (rank 0)
        self._meas_steps = 0
        self._meas_s = 0.0
        self._t_last: float | None = None
        self._gs_last = -1
        self._next_check = 0
        self._total_steps: float = math.inf  # in _done's units
        self._manual = False  # manual optimization: _done counts batches
        self._limit_mode: str | None = None
        self.power_modes: list[str] = []  # "time"/"energy" each time clean-fast switched the limit
        self._remeasure = False  # after a workload change: run until the new step time is measured

    # ------------------------------------------------------------------------------------------------ public
    def remaining_s(self, trainer: pl.Trainer) -> float | None:
        """Compute time still needed, seconds (``None``: not known yet)."""
        steps_left = self._steps_left(trainer)
        if self._step_s is not None and math.isfinite(steps_left):
            return self._step_s * steps_left
        if self.expected_duration_s is not None:
            whole = self._done(trainer) + steps_left  # the run's steps from its first (expected_duration's)
            if math.isfinite(whole) and whole > 0:
                return self.expected_duration_s * steps_left / whole
            return max(self.expected_duration_s - self.compute_s, 0.0)
        return None

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        same_run, self._fit_trainer = continue_run(self._fit_trainer, trainer)
        if not same_run:  # a new Trainer is a new run (a checkpoint restored into it brings its own state)
            self._new_run()
        name = type(self).__name__
        # Rank 0's clock is the one that counts: every rank plans against the same start.
        now = float(trainer.strategy.broadcast(float(self.clock()), src=0))
        deadline_s = parse_deadline(self.deadline, now, name, max_ahead_s=MAX_DEADLINE_S)
        if deadline_s <= now:
            fail(name, "deadline", self.deadline, f"in the future (it is {_iso(now)} now)")
        if self.expected_duration_s is not None and self.expected_duration_s > deadline_s - now:
            fail(
                name,
                "deadline",
                self.deadline,
                f"at least expected_duration={self.expected_duration_s / 3600:g} h after the start ({_iso(now)}); "
                f"it leaves {(deadline_s - now) / 3600:g} h",
            )
        history_s = history_needed_s(self.forecast)
        self.source = ensure_covers(
            self.source, now - history_s, deadline_s, name, "intensity", self.extend, None, history_s, self.forecast
        )
        self.start_s, self.deadline_s = now, deadline_s
        self.planner = self._planner(deadline_s)
        slots = slots_needed(now, deadline_s, self.planner.slot_s, self.planner.origin_s)
        if slots > MAX_PLAN_SLOTS:  # a short slot: one's own, or the step of a trace of a few minutes
            # A plan holds at most MAX_PLAN_SLOTS slots: the time past them could never be chosen.
            shortest = f"{_round_up((deadline_s - now) / (MAX_PLAN_SLOTS - 1)):g} s"
            whose = "" if self.slot is not None else f" (None: the trace's own step, {self.planner.slot_s:g} s)"
            fail(
                name,
                "slot",
                self.slot,
                f"at least {shortest}{whose} with deadline={self.deadline!r} (a plan holds at most {MAX_PLAN_SLOTS} "
                f"slots; this one would need {slots}), or give a nearer deadline",
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._manual = not trainer.lightning_module.automatic_optimization
        total = trainer.estimated_stepping_batches  # (also sets up the train dataloader: num_training_batches)
        if self._manual:
            # In batches, as Lightning's estimate but without its min with max_steps: that one counts every optimizer's
            # step (global_step), and _steps_left applies it.
            batches, epochs = trainer.num_training_batches, trainer.max_epochs
            finite = epochs is not None and epochs != -1 and math.isfinite(batches)
            self._total_steps = float(batches * max(epochs, 1)) if finite else math.inf
        else:  # an iterable dataset without max_steps: Lightning says -1
            self._total_steps = float(total) if total is not None and total >= 0 else math.inf
        if not math.isfinite(self._steps_left(trainer)) and self.expected_duration_s is None:
            raise InvalidArgumentError(
                f"{type(self).__name__}(expected_duration=None): training has no step limit (max_steps/max_epochs), "
                "so the remaining time cannot be measured; give expected_duration (e.g. '8h')."
            )
        self._gs_last = self._done(trainer)
        self._next_check = self._gs_last
        self._sigterm = False
        self._plan_to_timer(trainer)
        self._decide(trainer, may_checkpoint=False)  # raises SIGTERMException on a SIGTERM during a pause
        self._t_last = self.clock()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = self._done(trainer)
        if done == self._gs_last:
            return  # inside gradient accumulation: decide only between optimizer steps
        now = self.clock()
        if self._t_last is not None:
            spent = max(now - self._t_last, 0.0)
            steps = done - self._gs_last
            self.compute_s += spent
            self._meas_steps += steps
            self._meas_s += spent
            if self._meas_steps >= self.estimate_after_steps:
                self._step_s = self._meas_s / self._meas_steps
                if self._remeasure:
                    self._remeasure = False
                    self._next_check = done  # re-plan now, with the new step time
        self._gs_last = done
        if self._next_check <= done and self._steps_left(trainer) > 0:
            self._decide(trainer, may_checkpoint=True)
        self._t_last = self.clock()

    def on_workload_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, change: WorkloadChange) -> None:
        """Step time changed (a prune, a precision switch): re-measure it and re-plan at the next step."""
        # Steps so far belong to the old workload: account them, and measure the new one from here.
        now = self.clock()
        done = self._done(trainer)
        if self._t_last is not None and done > self._gs_last:
            self.compute_s += max(now - self._t_last, 0.0)
        self._t_last, self._gs_last = now, done
        self._meas_steps, self._meas_s = 0, 0.0
        self._remeasure = True
        self.replans += 1

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        add_report_section(trainer, "carbon_schedule", self.report())

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # The interrupted run's report gets the schedule so far (for an EnergyMonitor listed after this callback;
        # one listed before it has the schedule as of the last pause, see _record_pause).
        if self.start_s is not None:
            add_report_section(trainer, "carbon_schedule", self.report())

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "paused_s": self.paused_s,
            "compute_s": self.compute_s,
            "pauses": list(self.pauses),
            "replans": self.replans,
            "step_s": self._step_s,
            "deadline_s": self.deadline_s,
            "deadline": self.deadline,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=1)
        self.paused_s = float(state_dict.get("paused_s", 0.0))
        self.compute_s = float(state_dict.get("compute_s", 0.0))
        self.pauses = list(state_dict.get("pauses", []))
        self.replans = int(state_dict.get("replans", 0))
        self._step_s = state_dict.get("step_s")
        # A resumed job keeps its original deadline (an absolute time) rather than one re-read from "24h", unless
        # the resume names another deadline.
        deadline_s = state_dict.get("deadline_s")
        saved_arg = state_dict.get("deadline", self.deadline)
        if deadline_s is not None and self.planner is not None and not self._same_deadline(saved_arg):
            rank_zero_info(  # said even with verbose=False: the resume changes the checkpoint's plan
                f"CarbonAwareScheduler: deadline={self.deadline!r} replaces the checkpoint's {saved_arg!r} "
                f"({_iso(float(deadline_s))}); planning to {_iso(self.deadline_s or 0.0)}."
            )
        elif deadline_s is not None and self.planner is not None:
            self.deadline_s = float(deadline_s)
            self.planner = self._planner(self.deadline_s)

    def report(self) -> dict[str, Any]:
        """The schedule as plain data: deadline, pauses, the last plan and the forecast it was made from."""
        plan, first = self.last_plan, self.first_plan
        return {
            "source": self.source.describe(),
            "forecast": self.forecast,
            "start": _iso(self.start_s) if self.start_s is not None else None,
            "deadline": _iso(self.deadline_s) if self.deadline_s is not None else None,
            "deadline_s": self.deadline_s,
            "max_time_end": _iso(self.timer_end_s) if self.timer_end_s is not None else None,
            "paused_s": self.paused_s,
            "compute_s": self.compute_s,
            "pauses": list(self.pauses),
            "replans": self.replans,
            "plans": list(self.plans),
            "last_plan": plan.as_dict() if plan is not None else None,
            "forecast_slots": [[a, b, v] for a, b, v in plan.slots] if plan is not None else [],
            "first_plan_slots": [[a, b, v] for a, b, v in first.slots] if first is not None else [],
            "first_plan_chosen_s": [[a, b] for a, b, _ in first.chosen] if first is not None else [],
        }

    # ------------------------------------------------------------------------------------------------ internals
    def _planner(self, deadline_s: float) -> CarbonPlanner:
        return CarbonPlanner(self.source, deadline_s, self.forecast, self.safety_margin, slot_s=self.slot_s)

    def _plan_to_timer(self, trainer: pl.Trainer) -> None:
        """Plan to the end of ``Trainer(max_time=...)`` (any Lightning ``Timer``) when it comes before the deadline.

        The Timer's clock runs on through a pause, so a pause planned past its end would have Lightning stop the fit
        unfinished right after it. After the Timer restored its elapsed time from a checkpoint (before this hook).
        """
        self.timer_end_s = None
        if self.deadline_s is None:
            return
        kinds = lightning_types("callbacks", "Timer")
        left = [cb.time_remaining() for cb in trainer.callbacks if isinstance(cb, kinds)]  # type: ignore[attr-defined]
        left = [float(s) for s in left if s is not None]
        end = math.inf
        if left and trainer.is_global_zero:
            end = self.clock() + max(min(left), 0.0)
        end = float(trainer.strategy.broadcast(end, src=0))
        if end >= self.deadline_s:
            return
        self.timer_end_s = end
        self.planner = self._planner(end)
        remaining = self.remaining_s(trainer)
        short = (
            f"; the {remaining / 3600:.3g} h of compute left do not fit in it, so there is nothing to pause for"
            if remaining is not None and remaining * (1 + self.safety_margin) > end - self.clock()
            else ""
        )
        rank_zero_info(  # said even with verbose=False: the deadline given is not the one planned to
            f"CarbonAwareScheduler: Trainer(max_time) ends the fit at {_iso(end)}, before deadline={self.deadline!r} "
            f"({_iso(self.deadline_s)}): planning to its end (a pause counts against max_time){short}."
        )

    def _rank0_decision(self, trainer: pl.Trainer) -> list[float]:
        """[pause seconds, next check step, run flag, intensity now, expected pause]; computed on rank 0 only."""
        assert self.planner is not None
        now = self.clock()
        remaining = None if self._remeasure else self.remaining_s(trainer)
        if remaining is None:
            return [0.0, float(self._done(trainer) + 1), 1.0, self._intensity_now(now), 0.0]
        if now >= self.planner.deadline_s:
            # Late (the work took longer than expected): nothing to plan, and a trace may end at the deadline.
            return self._run_row(trainer, now, self._intensity_now(now))
        decision = self.planner.decide(now, remaining)
        self.last_plan = decision.plan
        if self.first_plan is None:
            self.first_plan = decision.plan
        if not self.plans or self.plans[-1]["chosen"] != decision.plan.as_dict()["chosen"]:
            self.plans.append(decision.plan.as_dict())
        if not decision.run:
            return [
                decision.pause_s,
                float(self._done(trainer)),
                0.0,
                decision.intensity_now,
                decision.expected_pause_s,
            ]
        return self._run_row(trainer, now, decision.intensity_now)

    def _run_row(self, trainer: pl.Trainer, now: float, intensity: float) -> list[float]:
        """A "run" decision, checked again about halfway to the next slot boundary."""
        assert self.planner is not None
        boundary = self.planner.next_boundary(now)
        steps = 1
        if self._step_s:
            steps = max(1, int(0.5 * (boundary - now) / self._step_s))
        return [0.0, float(self._done(trainer) + steps), 1.0, intensity, 0.0]

    def _done(self, trainer: pl.Trainer) -> int:
        """Steps done, in ``trainer.estimated_stepping_batches``' units.

        Those are optimizer steps, or under manual optimization training batches (a batch counts once its step ran,
        so from its ``on_train_batch_end``).
        """
        if not self._manual:
            return trainer.global_step
        return trainer.fit_loop.epoch_loop.batch_progress.total.processed

    def _steps_left(self, trainer: pl.Trainer) -> float:
        """Steps still to run, in :meth:`_done`'s units (``inf``: not bounded)."""
        done = self._done(trainer)
        left = self._total_steps - done
        if self._manual and trainer.max_steps != -1:
            # max_steps counts global_step (every optimizer's step): batches left at the optimizer steps per batch
            # seen so far (one until a batch has run).
            per_batch = trainer.global_step / done if done > 0 and trainer.global_step > 0 else 1.0
            left = min(left, (trainer.max_steps - trainer.global_step) / per_batch)
        return max(left, 0.0)

    def _intensity_now(self, now: float) -> float:
        """The source's intensity now; NaN past the end of a trace (not logged)."""
        return self.source.mean(now, now) if self.source.covers(now, now) else math.nan

    def _decide(self, trainer: pl.Trainer, may_checkpoint: bool) -> None:
        pausing_since: float | None = None
        intensity = 0.0
        sigterm = False
        slept_here = 0.0  # of the pause in progress, already in paused_s
        try:
            while True:
                row = self._rank0_decision(trainer) if trainer.is_global_zero else [0.0, 0.0, 1.0, 0.0, 0.0]
                pause_s, next_check, run, intensity, expected_s = (
                    float(x) for x in trainer.strategy.broadcast(row, src=0)
                )
                if run or pause_s <= 0:
                    break
                if pausing_since is None:
                    pausing_since = self.clock()
                    self._log(trainer, 0.0, intensity)
                    # The pause is taken slot by slot (re-planning at each boundary): judge it by its expected length.
                    long_pause = max(pause_s, expected_s)
                    if may_checkpoint and self.checkpoint_after_s is not None and long_pause >= self.checkpoint_after_s:
                        self._checkpoint(trainer)
                    _close_energy_windows(trainer)
                    nxt = self.last_plan.next_start(pausing_since) if self.last_plan is not None else None
                    self._say(
                        f"CarbonAwareScheduler: pausing at step {trainer.global_step} ({_iso(pausing_since)}, "
                        f"{intensity:.0f} gCO2e/kWh); next planned slot {_iso(nxt) if nxt else 'unknown'}."
                    )
                slept = self._sleep(trainer, pause_s)
                self.paused_s += slept
                slept_here += slept
                # End the pause on any rank's signal, together; the run then stops as Lightning stops it on a SIGTERM.
                if self._stop_requested(trainer):
                    sigterm = True
                    break
        except BaseException as exc:
            # Ctrl-C (KeyboardInterrupt) or an error inside the pause: the time waited and the pause go into the
            # report the EnergyMonitor writes for the interrupted run (no collective here: the other ranks may not
            # be at this point).
            if pausing_since is not None:
                now = self.clock()
                self.paused_s += max(now - pausing_since - slept_here, 0.0)
                self._record_pause(trainer, pausing_since, now, interrupted=type(exc).__name__)
            raise
        self._next_check = int(next_check)
        if pausing_since is not None:
            _close_energy_windows(trainer, idle=True)  # the pause's idle energy gets the pause's own intensity
            now = self.clock()
            if sigterm:
                self._record_pause(trainer, pausing_since, now, interrupted="SIGTERM")
                self._say(
                    f"CarbonAwareScheduler: SIGTERM received at step {trainer.global_step} ({_iso(now)}) after "
                    f"{now - pausing_since:.0f} s of pause: the pause ends and Lightning stops the run."
                )
                raise SIGTERMException  # on every rank, as Lightning raises it after a batch
            self._record_pause(trainer, pausing_since, now)
            self._say(
                f"CarbonAwareScheduler: resuming at step {trainer.global_step} ({_iso(now)}, {intensity:.0f} "
                f"gCO2e/kWh) after {(now - pausing_since) / 3600:.2f} h."
            )
        self._log(trainer, 1.0, intensity)
        self._apply_power(trainer, intensity)

    def _record_pause(self, trainer: pl.Trainer, start: float, end: float, interrupted: str | None = None) -> None:
        """Add a pause to :attr:`pauses` and the schedule to the energy report (also for a run it ends)."""
        pause = {
            "step": trainer.global_step,
            "start": _iso(start),
            "end": _iso(end),
            "start_s": start,
            "seconds": end - start,
        }
        if interrupted == "SIGTERM":
            pause["sigterm"] = True
        elif interrupted is not None:
            pause["interrupted"] = interrupted
        self.pauses.append(pause)
        # Now, not only at on_train_end: an EnergyMonitor listed before this callback writes a run's report in its
        # on_exception, before this callback's would run.
        add_report_section(trainer, "carbon_schedule", self.report())

    def _sleep(self, trainer: pl.Trainer, seconds: float) -> float:
        """Wait ``seconds`` (or until a SIGTERM on any rank); return the seconds waited."""
        advance = getattr(self.clock, "advance", None)
        if callable(advance):
            advance(seconds)
            return seconds
        # Short chunks: a SIGTERM (a cluster's pre-emption, `kill`) must not wait for the end of an hour-long slot.
        # While sleeping, a SIGTERM only sets our flag: Lightning's own handler broadcasts from rank 0 inside the
        # handler, so a signal that reaches only another rank would block it there until rank 0 (asleep) met it.
        # The ranks agree once per chunk instead, and every rank runs the same chunks (the pause is rank 0's).
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._note_sigterm)
        try:
            chunks = max(1, math.ceil(seconds / _SLEEP_CHUNK_S))
            for i in range(chunks):
                if self._stop_requested(trainer):
                    return seconds * i / chunks
                time.sleep(seconds / chunks)
            return seconds
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _note_sigterm(self, signum: int, frame: Any) -> None:
        self._sigterm = True

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        """Whether a SIGTERM reached any rank (a collective: every rank asks at the same point)."""
        local = self._sigterm or bool(trainer.received_sigterm)
        return bool(trainer.strategy.reduce_boolean_decision(local, all=False))

    def _checkpoint(self, trainer: pl.Trainer) -> None:
        kinds = lightning_types("callbacks", "ModelCheckpoint")  # also pytorch_lightning's, under its Trainer
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, kinds)), None)  # type: ignore[attr-defined]
        if ckpt is None or ckpt.dirpath is None:
            return
        # Named as Lightning's "last" checkpoints (`ModelCheckpoint._find_last_checkpoints` matches the prefix), so
        # `fit(ckpt_path="last")` after a kill during the pause takes it when it is the newest.
        path = os.path.join(ckpt.dirpath, f"{ckpt.CHECKPOINT_NAME_LAST}-carbon-pause{ckpt.FILE_EXTENSION}")
        trainer.save_checkpoint(path, weights_only=False)  # collective: every rank is here at the same step
        self._say(f"CarbonAwareScheduler: checkpoint before a long pause: {path}")

    def _apply_power(self, trainer: pl.Trainer, intensity: float) -> None:
        if self.power != "clean-fast":
            return
        from lightning_green.callbacks.power_limit_tuner import PowerLimitTuner

        tuner = next((cb for cb in trainer.callbacks if isinstance(cb, PowerLimitTuner)), None)  # type: ignore[attr-defined]
        if tuner is None or tuner.state != "done" or math.isnan(intensity):
            return
        clean = 0.0
        if trainer.is_global_zero and self.last_plan is not None and self.last_plan.slots:
            # Clean: at or below the mean forecast of the hours left before the deadline.
            clean = float(intensity <= statistics.fmean(v for _, _, v in self.last_plan.slots))
        clean = float(trainer.strategy.broadcast(clean, src=0))
        mode = "time" if clean else "energy"
        if mode != self._limit_mode and tuner.use_profile_optimum(mode):
            self._limit_mode = mode
            self.power_modes.append(mode)
            self._say(f"CarbonAwareScheduler: {'clean' if clean else 'dirty'} hour: {mode}-optimal power limit.")

    def _log(self, trainer: pl.Trainer, run: float, intensity: float) -> None:
        metrics = {"carbon/plan": run, "carbon/paused_s": self.paused_s}
        if not math.isnan(intensity):
            metrics["carbon/intensity_g_per_kWh"] = intensity
        # Lightning's step for this batch (as EnergyMonitor's), not global_step: that counts every optimizer's step.
        log_metrics(trainer, metrics, step=log_step(trainer))

    def _same_deadline(self, other: Any) -> bool:
        """Whether ``other`` (a checkpoint's ``deadline``) names this one: ``"24h"``, ``86400``, ``86400.0`` alike."""
        try:
            name = type(self).__name__
            return parse_deadline(other, 0.0, name) == parse_deadline(self.deadline, 0.0, name)
        except InvalidArgumentError:  # a checkpoint's value this version cannot read: not the same
            return False

    def _say(self, text: str) -> None:
        if self.verbose:
            rank_zero_info(text)
        log.debug(text)


def _close_energy_windows(trainer: pl.Trainer, idle: bool = False) -> None:
    """Let an EnergyMonitor (duck-typed: ``close_window``) end its counter window here; every rank calls this.

    ``idle``: the window ends a pause (its energy is left out of the monitor's forecast per epoch).
    """
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        close = getattr(cb, "close_window", None)
        if callable(close):
            close(trainer, idle=idle)


def _round_up(x: float, digits: int = 4) -> float:
    """``x`` rounded up to ``digits`` significant digits (a minimum that, as printed, is still enough).

    Example:
        >>> _round_up(408.5013), _round_up(2.16005), _round_up(432.0)
        (408.6, 2.161, 432.0)
    """
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.ceil(x / scale - 1e-9) * scale:.{digits}g}")
