"""PowerLimitTuner: Zeus's GPU power-limit tuning for any Lightning Trainer — safe, DDP-correct, closed-loop."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override
from zeus.device.gpu.common import ZeusBaseGPUError

from lightning_green._internal.devices import rank_gpu_index
from lightning_green._internal.distributed import agree, gather_rows
from lightning_green._internal.logging import epoch_log_step, log_metrics, log_step, should_log_batch
from lightning_green._internal.packages import tensorboard_loggers
from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_number,
    check_optional_number,
    check_state_version,
    fail,
)
from lightning_green.events import WorkloadChange, add_report_section
from lightning_green.power import guard as limit_guard
from lightning_green.power.capability import check_power_control
from lightning_green.power.guard import LimitGuard
from lightning_green.power.profile import OBJECTIVES, ProfileCache, make_selector, profile_key, profile_table
from lightning_green.power.search import STATE_CODES, PowerLimitSearch, ZeusWindows, limit_grid

__all__ = ["PowerLimitTuner"]

log = logging.getLogger(__name__)

_STATE_VERSION = 2
"""2: the profile's key, partly measured profiles, the limits the run set and, by global rank, each rank's GPU index,
original limit and machine id (hash of host name and boot id), so that a resume adopts an original only for the GPU a
killed run left capped."""

Objective = Literal["zeus-cost", "energy", "time", "max-slowdown"]


class PowerLimitTuner(Callback):
    """Find the GPU power limit that minimises energy (or Zeus's time–energy cost) while training, and use it.

    Zeus's just-in-time profiling, mapped onto Lightning: at optimizer-step boundaries (gradient accumulation
    respected) the tuner waits ``wait_steps``, then for each power limit from the maximum down by ``pl_step_w``
    sets it, warms up ``warmup_steps`` and measures GPU time and energy over ``profile_steps``; it then keeps the
    limit Zeus's selector picks for ``objective`` for the rest of training. Validation and epoch ends pause a
    measurement instead of discarding it. Zeus's selectors are used as they are; the state machine, the
    collectives and the safety rails are lightning-green's (see :mod:`lightning_green.power`).

    Safety:

    * In ``setup`` it checks that this process may set limits (Zeus's ``SYS_ADMIN`` check or the zeusd socket,
      then an unchanged write). If not, it warns once and stays off; training continues untouched. A permission
      error later in the run is caught the same way.
    * Each GPU's limit is recorded before tuning and *that* value (not the maximum) is restored at train end, in
      ``on_exception``, on SIGTERM/SIGINT and at interpreter exit.
    * A run killed with no chance to restore (SIGKILL, a lost node) leaves its GPU capped. Checkpoints keep, per
      rank, the GPU, its original limit and the machine and boot it ran on, and the limits the run sets: a resumed
      rank on the same machine, boot and GPU that finds it still at one of those limits (below its maximum) takes
      the checkpoint's original as the original (restored right away and at the end). A GPU on another machine,
      after a reboot, at its maximum or at any other limit (an administrator changed it) keeps the limit it has as
      its original.
    * No GPU (a CPU-only run) → a one-line notice, then nothing. With simulated GPUs installed
      (:mod:`lightning_green.testing`) a CPU run tunes the rank's simulated GPU.

    DDP: each rank tunes its own GPU, every rank takes the same steps, energy is summed over ranks and time is the
    slowest rank's, and Zeus's cost uses the true world size; collectives go through the Lightning strategy (gloo
    works), so all ranks end on one limit.

    Checkpoints keep the profile, also one still being measured (a resumed run profiles only the limits not yet
    measured), with its workload key: resumed on another GPU model, precision, batch size or world size, or with
    another ``pl_step_w`` (grid), the tuner says so once and profiles afresh (unless the cache holds this workload's
    profile). With ``reprofile_on_change=False`` a profile is kept across a change of the model or the precision only
    (a prune, a precision switch), after a resume as in the run that saved it.

    Closed loop: ``on_workload_changed`` (a ``StructuredPruning`` step, an ``AMPScheduler`` precision switch)
    starts a new profile, because the optimum moves when the model shrinks.

    Logged to every logger: ``power/limit_W`` and ``power/tuner_state`` (0 off, 1 waiting, 2 warm-up,
    3 profiling, 4 measured, 5 selecting, 6 done), then ``power/chosen_limit_W`` and the profile table
    ``power/profile/{W}W/{energy_J,time_s,cost}`` (per step); TensorBoard also gets the table as text. With an
    :class:`~lightning_green.EnergyMonitor`, the tuner shares its Zeus monitor and, once profiling is done, adds its
    profile and choice to the energy report as ``extra.power_limit``.

    Args:
        objective: What to minimise: ``"zeus-cost"`` (``eta·energy + (1−eta)·max_power·time``), ``"energy"``,
            ``"time"``, or ``"max-slowdown"`` (the lowest limit at most ``max_slowdown`` × slower than the maximum).
        eta: Zeus's energy–time knob in [0, 1] (``zeus-cost``; also used for the logged cost column).
        max_slowdown: Slowdown factor (>= 1) for ``"max-slowdown"``; must be ``None`` for other objectives.
        warmup_steps: Optimizer steps at each limit before measuring (>= 1).
        profile_steps: Optimizer steps measured at each limit (>= 1).
        pl_step_w: Stride between profiled limits, W (>= 1, and at most the width of the GPU's power-limit range, so
            that at least two limits are profiled: checked in ``setup``).
        profile_path: JSON profile cache: a stored profile for the same workload (GPU model, world size, precision,
            the model's parameters and MACs, batch size) is reused (no profiling); a new one is added. Its folder
            must exist and be writable. A file written by Zeus's ``GlobalPowerLimitOptimizer(profile_path=...)``
            is read as the profile of the workload the fit starts with, its totals divided by ``profile_steps``
            (give the value Zeus used).
        job: An extra label in the cache key, to keep apart jobs whose workloads would otherwise share one.
        wait_steps: Optimizer steps before profiling starts, and after a workload change (>= 0).
        reprofile_on_change: Re-profile when the workload changes.

    Raises:
        ValueError: An argument is out of range (message names it and what is allowed); ``pl_step_w`` wider than the
            GPU's power-limit range, from ``setup``.
        TypeError: An argument has the wrong type.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lightning_green.testing import SimulatedGPUWorkload
        >>> gpu = SimulatedGPUWorkload(step_work_s=0.001, gpu_kwargs={"curve": "v100-resnet50"})
        >>> tuner = PowerLimitTuner(objective="energy", warmup_steps=1, profile_steps=2, pl_step_w=50)
        >>> trainer = Trainer(max_steps=16, callbacks=[gpu, tuner], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> tuner.state, [row["limit_w"] for row in tuner.table()]
        ('done', [250.0, 200.0, 150.0, 100.0])
    """

    def __init__(
        self,
        objective: Objective = "zeus-cost",
        eta: float = 0.5,
        max_slowdown: float | None = None,
        warmup_steps: int = 10,
        profile_steps: int = 40,
        pl_step_w: int = 25,
        profile_path: str | None = None,
        job: str | None = None,
        wait_steps: int = 1,
        reprofile_on_change: bool = True,
    ) -> None:
        name = type(self).__name__
        check_choice(name, "objective", objective, OBJECTIVES)
        check_number(name, "eta", eta, ge=0.0, le=1.0)
        check_optional_number(name, "max_slowdown", max_slowdown, ge=1.0)
        if objective == "max-slowdown" and max_slowdown is None:
            fail(name, "max_slowdown", max_slowdown, "a number >= 1 when objective='max-slowdown'")
        if objective != "max-slowdown" and max_slowdown is not None:
            fail(name, "max_slowdown", max_slowdown, f"None unless objective='max-slowdown' (got {objective!r})")
        check_number(name, "warmup_steps", warmup_steps, integer=True, ge=1)
        check_number(name, "profile_steps", profile_steps, integer=True, ge=1)
        check_number(name, "pl_step_w", pl_step_w, integer=True, ge=1)
        check_number(name, "wait_steps", wait_steps, integer=True, ge=0)
        if job is not None and (not isinstance(job, str) or not job or "|" in job):
            fail(name, "job", job, "None or a non-empty string without '|'")
        check_bool(name, "reprofile_on_change", reprofile_on_change)
        if profile_path is not None:
            _check_writable(name, profile_path)

        self.objective = objective
        self.eta = float(eta)
        self.max_slowdown = max_slowdown
        self.warmup_steps = warmup_steps
        self.profile_steps = profile_steps
        self.pl_step_w = pl_step_w
        self.profile_path = os.fspath(profile_path) if profile_path is not None else None
        self.job = job
        self.wait_steps = wait_steps
        self.reprofile_on_change = reprofile_on_change

        self.world_size = 1
        self.gpu_index: int | None = None
        self.disabled_reason: str | None = None
        self.workload = 0
        self.reprofiles = 0
        self.cache_hits = 0
        self._guard: LimitGuard | None = None
        self._search: PowerLimitSearch | None = None
        self._windows: ZeusWindows | None = None
        self._limits_mw: list[int] = []
        self._gpu_name = ""
        self._job = ""
        self._gs_boundary: int | None = None
        self._boundaries = 0
        self._restored: dict[str, Any] | None = None
        # The checkpoint's profile, held until the first step gives this run's key to compare with its key.
        self._restored_profile: dict[str, Any] | None = None
        self._profile_key: str | None = None  # the workload the search's measurements are of
        # Every rank's GPU, by global rank: its original limit (saved for a resume) and what identifies it.
        self._originals_mw: dict[int, int] = {}
        self._rank_gpus: list[_RankGPU] = []
        self._rank = 0
        self._warned = False
        # Profiles measured or read in this process, by workload key: a workload seen before (fp32 again after a
        # precision fallback, then low precision again) reuses its profile instead of profiling again.
        self._profiles: dict[str, tuple[list[Any], int]] = {}
        self._lookup_pending = False  # the first look-up waits for the first batch (the batch size)
        self._batch_size: int | None = None
        self._size: tuple[int, float | None] | None = None
        self._fit_started = False

    # ------------------------------------------------------------------------------------------------ public
    @property
    def state(self) -> str:
        """``off``, ``waiting``, ``warmup``, ``profiling``, ``measured``, ``selecting`` or ``done``."""
        return self._search.state if self._search is not None else "off"

    @property
    def chosen_limit_w(self) -> float | None:
        """The limit the tuner settled on, W (``None`` before it did)."""
        if self._search is None or self._search.chosen_mw is None:
            return None
        return self._search.chosen_mw / 1000.0

    @property
    def profiling_steps(self) -> int:
        """Optimizer steps spent warming up or profiling so far, over all passes and resumes.

        Across a resume that continues the checkpoint's profile; a limit whose measurement the resume cut short is
        measured, and counted, again.
        """
        return self._search.profiling_steps if self._search is not None else 0

    def table(self) -> list[dict[str, float]]:
        """The current profile: energy (J) and time (s) per step, average power and cost per limit."""
        if self._search is None:
            return []
        search = self._search
        return profile_table(search.measurements, self.eta, self.world_size, search.measurement_steps)

    def use_profile_optimum(self, objective: Literal["time", "energy"]) -> bool:
        """Set the profiled limit with the shortest step time (``"time"``) or the least energy (``"energy"``).

        For other callbacks (``CarbonAwareScheduler(power="clean-fast")`` switches between the two by the grid's
        intensity). Only once profiling is done; call it on every rank at the same step. The original limit is
        still restored at the end. Returns whether a limit was set.
        """
        rows = self.table()
        if self.state != "done" or not rows or self._guard is None or self.gpu_index is None:
            return False
        key = "time_s" if objective == "time" else "energy_j"
        best = min(rows, key=lambda r: r[key])
        try:
            self._set_limit(int(best["limit_w"] * 1000))
        except ZeusBaseGPUError as err:
            log.debug("PowerLimitTuner could not set the %s-optimal limit: %s", objective, err)
            return False
        return True

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.world_size = int(trainer.world_size)
        self.disabled_reason = None
        self._warned = False
        # A new fit starts with the dense model: per-fit counters start again (a resumed fit restores them from
        # the checkpoint in on_fit_start, since load_state_dict runs after setup).
        self.workload = 0
        self.reprofiles = 0
        self.cache_hits = 0
        self._restored = None
        self._restored_profile = None
        self._profile_key = None
        self._originals_mw = {}
        self._rank_gpus = []
        self._rank = int(trainer.global_rank)
        self._lookup_pending = False
        self._fit_started = False
        self._batch_size = None
        self._size = None
        self._release()  # nothing left over from an earlier fit (a guard, a search) may act in this one
        self._search = None  # the last fit's profile stays readable until the next fit starts
        self.gpu_index = None
        index = rank_gpu_index(trainer)
        any_gpu = agree(trainer.strategy, index is not None, all=False)
        all_gpu = agree(trainer.strategy, index is not None, all=True)
        if not any_gpu:
            self.disabled_reason = "no GPU"
            rank_zero_info("PowerLimitTuner: no GPU to tune (CPU-only run); the tuner is off.")
            return
        from zeus.device import get_gpus

        control = check_power_control(get_gpus(), index) if index is not None else None
        local_ok = control is not None and control.ok
        if not agree(trainer.strategy, local_ok, all=True):
            reason = control.reason if control is not None and not control.ok else None
            if not all_gpu:
                reason = "some ranks train without a GPU"
            self._disable(trainer, reason or "power limits may not be set on another rank", restore=False)
            return
        assert index is not None and control is not None
        gpus = get_gpus()
        self.gpu_index = index
        self._gpu_name = str(gpus.get_name(index))
        self._job = self.job or ""
        self._limits_mw = limit_grid(control.min_mw, control.max_mw, self.pl_step_w)
        # Every rank's GPU: its range (pl_step_w must fit each), its limit now (the originals a resume needs) and the
        # machine and boot it is on (a limit a killed run left lasts until a reboot), in global-rank order.
        machine = limit_guard.machine_id()
        row = [index, control.current_mw, control.min_mw, control.max_mw, -1 if machine is None else machine]
        rows = gather_rows(trainer.strategy, row)
        narrowest = min(rows, key=lambda r: r[3] - r[2])
        if self.pl_step_w * 1000 > narrowest[3] - narrowest[2]:
            fail(
                type(self).__name__,
                "pl_step_w",
                self.pl_step_w,
                f"at most {int(narrowest[3] - narrowest[2]) // 1000} (W), the width of GPU {int(narrowest[0])}'s "
                f"power-limit range {int(narrowest[2]) // 1000}-{int(narrowest[3]) // 1000} W, so that at least two "
                "limits are profiled",
            )
        self._rank_gpus = [
            _RankGPU(index=int(r[0]), current_mw=int(r[1]), max_mw=int(r[3]), machine=int(r[4]) if r[4] >= 0 else None)
            for r in rows
        ]
        self._originals_mw = {rank: gpu.current_mw for rank, gpu in enumerate(self._rank_gpus)}
        self._guard = LimitGuard(gpus, [index], on_restore_failure=self._restore_failed)
        self._guard.arm()
        self._check_cache(trainer)  # a corrupt cache fails now, before training
        log.debug("PowerLimitTuner: GPU %d (%s) via %s, limits %s", index, self._gpu_name, control.method, control)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._guard is None or self.gpu_index is None:
            return
        self._windows = ZeusWindows(self._monitor(trainer), self.gpu_index, sync=self._sync(trainer))
        self._search = PowerLimitSearch(
            self._limits_mw,
            self._set_limit,
            self._windows,
            make_selector(self.objective, self.eta, self.max_slowdown, self.world_size),
            warmup_steps=self.warmup_steps,
            profile_steps=self.profile_steps,
            wait_steps=self.wait_steps,
        )
        restored, self._restored = self._restored, None
        self._fit_started = True
        self._lookup_pending = True
        if restored is not None:
            self._apply_restored(restored)
        self._gs_boundary = None
        self._boundaries = 0

    def _apply_restored(self, restored: dict[str, Any]) -> None:
        """Take the checkpoint's workload, original limits and profile.

        Called from on_fit_start, or from load_state_dict when the strategy restores after setup
        (``restore_checkpoint_after_setup``, e.g. FSDP, DeepSpeed), which is after on_fit_start.
        """
        assert self._search is not None
        self.workload = int(restored.get("workload", 0))  # the workload the checkpointed model is at
        self.reprofiles = int(restored.get("reprofiles", self.workload))
        self._adopt_originals(restored)
        rows = restored.get("measurements") or []
        if not rows or int(restored.get("world_size", 0)) != self.world_size:
            return  # nothing measured, or measured with another number of GPUs: profile again
        from zeus.optimizer.power_limit import PowerLimitMeasurement

        measurements = [PowerLimitMeasurement(**m) for m in rows]
        steps = int(restored.get("steps", self.profile_steps))
        key = restored.get("key")
        if key is not None:  # compared with this run's key at the first step, which gives the batch size
            done = restored.get("state") == "done"
            self._restored_profile = {
                "key": str(key),
                "measurements": measurements,
                "steps": steps,
                "done": done,
                "profiling_steps": int(restored.get("profiling_steps", 0)),
                "passes": int(restored.get("passes", 0)),
            }
            return
        # Version 1 saved no key (only finished profiles): reuse one measured at exactly this GPU's limits.
        if {m.power_limit for m in measurements} == {mw // 1000 for mw in self._limits_mw}:
            self._search.load(measurements, steps=steps)
            self._lookup_pending = False
        else:
            measured_w = sorted((m.power_limit for m in measurements), reverse=True)
            rank_zero_info(
                f"PowerLimitTuner: the checkpoint's power-limit profile ({measured_w} W) was not measured at this "
                f"GPU's limits ({self._gpu_name}, {[mw // 1000 for mw in self._limits_mw]} W); profiling again."
            )

    def _adopt_originals(self, restored: dict[str, Any]) -> None:
        """A GPU the checkpointed run left capped (it was killed) gets back that run's original.

        Only where that is certain: the same GPU model, rank, machine and boot (a limit a killed run left lasts until
        a reboot), the same GPU index, the GPU at a limit that run could have left, and below its maximum (at the
        maximum it is not capped). Every rank applies the rule to every rank's GPU (all read in setup), so the next
        checkpoint keeps the true originals; each rank sets only its own GPU.
        """
        if self._guard is None or self.gpu_index is None:
            return
        if restored.get("gpu_name") != self._gpu_name:
            return  # another GPU model: not the GPU that run left capped
        originals = {int(r): int(mw) for r, mw in (restored.get("original_limits_mw") or {}).items()}
        indices = {int(r): int(i) for r, i in (restored.get("gpu_indices") or {}).items()}
        machines = {int(r): int(m) for r, m in (restored.get("machine_ids") or {}).items() if m is not None}
        left = {int(mw) for mw in restored.get("tuning_limits_mw") or []}
        if restored.get("applied_limit_mw") is not None:
            left.add(int(restored["applied_limit_mw"]))
        if not originals or not left or not machines:
            return  # a checkpoint without machine ids (older): nothing is certain, nothing adopted
        capped = {
            rank: gpu
            for rank, gpu in enumerate(self._rank_gpus)
            if gpu.machine is not None
            and machines.get(rank) == gpu.machine
            and indices.get(rank) == gpu.index
            and rank in originals
            and gpu.current_mw in left
            and gpu.current_mw != gpu.max_mw
            and gpu.current_mw != originals[rank]
        }
        self._originals_mw.update({rank: originals[rank] for rank in capped})
        mine = capped.get(self._rank)
        if mine is not None and self._guard.adopt_originals({mine.current_mw}, {self.gpu_index: originals[self._rank]}):
            self._guard.restore()  # no reason to keep running capped until the tuner sets a limit
        if capped:
            rank_zero_info(
                "PowerLimitTuner: the run this checkpoint comes from was stopped before it restored the power limit "
                "of "
                + ", ".join(
                    f"GPU {gpu.index} of rank {rank} ({gpu.current_mw // 1000} W → {originals[rank] // 1000} W)"
                    for rank, gpu in sorted(capped.items())
                )
                + "; its original limit is back, and is restored at the end."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._guard is None or self._search is None:
            return
        # After Lightning's own SIGTERM handler (registered just before the loop), so ours runs first and then
        # hands the signal on to Lightning's graceful stop.
        self._guard.install_signals()
        if self._search.state == "selecting":
            self._conclude(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        search = self._search
        if search is None or search.state in ("off", "done"):
            return
        gs = trainer.global_step
        if gs == self._gs_boundary:  # same optimizer step: gradient accumulation
            search.continue_step()  # after a validation inside it, the rest of the step is measured too
            return
        self._gs_boundary = gs
        self._boundaries += 1
        self._batch_size = _batch_size(batch, self._batch_size)
        if self._lookup_pending:  # first step of the fit: every rank is here, at the same step
            self._lookup_pending = False
            if self._use_known_profile(trainer, pl_module, initial=self.workload == 0):
                self._log_state(trainer)
                return
        sync = search.transitions_next()
        window, error = None, None
        try:
            window = search.step_begin()
        except ZeusBaseGPUError as err:
            error = err
        if sync:
            self._sync_point(trainer, window, error)
        elif error is not None:  # cannot happen (only transitions touch the GPU); stay safe without a collective
            self._disable(trainer, f"setting the power limit failed mid-run ({error})")
        if self._search is not None and (sync or should_log_batch(trainer)):
            self._log_state(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pause(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        search = self._search
        if search is not None and search.state in ("waiting", "warmup", "profiling", "measured"):
            # max_steps, a budget or EarlyStopping ended the fit before the profile: say so (nothing was chosen).
            rank_zero_info(
                f"PowerLimitTuner: the fit ended before the profile did ({len(search.measurements)} of "
                f"{len(search.limits_mw)} limits measured, {search.profiling_steps} profiling steps), so no limit was "
                "chosen; the original limit is restored. A resume from a checkpoint continues the profile."
            )
        if self._search is not None:
            self._search.cancel()
        if self._guard is not None:
            self._guard.disarm()
            self._log_state(trainer, step=epoch_log_step(trainer))

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Other ranks may be gone: local clean-up only, no collectives. Lightning does not call teardown after an
        # exception: release here what teardown releases (the open window is discarded first).
        self._release()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._release()

    def _release(self) -> None:
        """Restore the limits, unregister the exit and signal handlers, and let go of the GPUs and the monitor.

        The search (the profile and the choice) stays readable until the next fit.
        """
        if self._search is not None:
            try:
                self._search.release()
            except Exception:  # never mask the user's exception with a metering problem
                log.debug("releasing the profiling windows failed", exc_info=True)
        if self._guard is not None:
            self._guard.disarm()
            self._guard = None
        self._windows = None

    def on_workload_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, change: WorkloadChange) -> None:
        """The cost of a step changed (a prune, a precision switch): profile again, from the next step on."""
        if self._search is None or self._search.state == "off" or not self.reprofile_on_change:
            return
        self.workload += 1
        self.reprofiles += 1
        self._search.restart()
        self._profile_key = None
        self._size = None  # a prune changes the model's size: count again
        known = not self._lookup_pending and self._use_known_profile(trainer, pl_module, initial=False)
        rank_zero_info(
            f"PowerLimitTuner: workload changed ({change.reason} by {change.source}); "
            + ("using the profile of this workload seen before." if known else "re-profiling power limits.")
        )
        self._log_state(trainer)

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        search = self._search
        # Finished limits, also mid-profiling (a resume measures only the rest), with the workload they are of.
        measured = search is not None and search.state != "off" and self._profile_key is not None
        measurements = search.measurements if search is not None and measured else []
        guard, index = self._guard, self.gpu_index
        # For a resume after a hard kill: which limits this run may have left a GPU at, and what to put back.
        applied = guard.applied.get(index) if guard is not None and index is not None else None
        tuning = set(self._limits_mw) | {m.power_limit * 1000 for m in measurements} if guard is not None else set()
        if search is not None and search.chosen_mw is not None and guard is not None:
            tuning.add(search.chosen_mw)
        return {
            "version": _STATE_VERSION,
            "state": self.state,
            "workload": self.workload,
            "reprofiles": self.reprofiles,
            "world_size": self.world_size,
            "chosen_limit_w": self.chosen_limit_w,
            "key": self._profile_key if measurements else None,
            "measurements": [{"power_limit": m.power_limit, "energy": m.energy, "time": m.time} for m in measurements],
            "steps": search.measurement_steps if search is not None else self.profile_steps,
            # The profiling so far, so that a resumed run reports the whole run's (GreenReport, energy report).
            "profiling_steps": search.profiling_steps if search is not None else 0,
            "passes": search.passes if search is not None else 0,
            "gpu_name": self._gpu_name,
            # by global rank: each rank's GPU, its original limit and the machine (and boot) it is on
            "original_limits_mw": dict(self._originals_mw) if guard is not None else {},
            "gpu_indices": {r: g.index for r, g in enumerate(self._rank_gpus)} if guard is not None else {},
            "machine_ids": {r: g.machine for r, g in enumerate(self._rank_gpus)} if guard is not None else {},
            "applied_limit_mw": applied,
            "tuning_limits_mw": sorted(int(mw) for mw in tuning),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=_STATE_VERSION)
        if self._fit_started and self._search is not None:  # restore_checkpoint_after_setup: after on_fit_start
            self._apply_restored(dict(state_dict))
        else:
            self._restored = dict(state_dict)

    # ------------------------------------------------------------------------------------------------ internals
    def _key(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """The workload's cache key: GPU model, world size, precision, model size (params, MACs), batch size."""
        if self._size is None:
            self._size = _model_size(pl_module)
        params, macs = self._size
        key = profile_key(
            self._gpu_name, self.world_size, _precision(trainer), params, macs, self._batch_size, self._job or None
        )
        # Rank 0's key on every rank, so that every rank takes the same branch (reuse or profile).
        return str(trainer.strategy.broadcast(key, src=0))

    def _use_known_profile(self, trainer: pl.Trainer, pl_module: pl.LightningModule, initial: bool) -> bool:
        """Load the profile of this workload if one was seen in this process or is in the cache, and conclude."""
        assert self._search is not None
        key = self._key(trainer, pl_module)
        self._profile_key = key
        restored, self._restored_profile = self._restored_profile, None
        dropped: str | None = None  # why the checkpoint's profile is not used
        if restored is not None and restored["key"] != key:
            if not self.reprofile_on_change and _hardware_part(restored["key"]) == _hardware_part(key):
                # Only the model or the precision changed (a prune, a precision switch): the run that saved the
                # checkpoint kept its profile, so this one does too.
                self._profile_key = restored["key"]
            else:
                dropped = (
                    f"the checkpoint's power-limit profile is of another workload ({restored['key']}), "
                    f"not this run's ({key})"
                )
                restored = None
        if restored is not None and restored["done"]:
            measured_w = sorted({m.power_limit for m in restored["measurements"]}, reverse=True)
            grid_w = [mw // 1000 for mw in self._limits_mw]
            if measured_w == sorted(grid_w, reverse=True):
                self._search.load(restored["measurements"], steps=restored["steps"])
                self._carry_counts(restored)
                same = restored["key"] == key  # else kept for another model/precision: not cached under its key
                self._conclude(trainer, key=restored["key"], save=same)
                return True
            dropped = (
                f"the checkpoint's power-limit profile ({measured_w} W) was not measured at this run's limits "
                f"({self._gpu_name}, {grid_w} W)"
            )
            restored = None
            self._profile_key = key
        known = self._profiles.get(key)
        found = f"reusing the profile measured earlier for {key}."
        if known is None:
            known = self._read_cache(trainer, key, initial)
            found = f"reusing the stored profile for {key} from {self.profile_path}."
        if dropped is not None:
            rank_zero_info(
                f"PowerLimitTuner: {dropped}; it is not used"
                + ("." if known is not None else ", profiling this run's workload.")
            )
        if known is not None:
            self.cache_hits += 1
            rank_zero_info(f"PowerLimitTuner: {found}")
            self._profile_key = key
            self._search.load(*known)
            self._conclude(trainer)
            return True
        return restored is not None and self._resume_profile(trainer, restored)

    def _resume_profile(self, trainer: pl.Trainer, restored: dict[str, Any]) -> bool:
        """Continue the checkpoint's partly measured profile (of this workload); ``True`` when it was complete."""
        assert self._search is not None
        try:
            self._search.resume(restored["measurements"], steps=restored["steps"])
        except ValueError as err:  # another grid or step count: its measurements do not mix with new ones
            rank_zero_info(
                f"PowerLimitTuner: cannot continue the checkpoint's power-limit profile ({err}); profiling again."
            )
            return False
        self._carry_counts(restored)
        if self._search.state == "selecting":
            self._conclude(trainer)
            return True
        return False

    def _carry_counts(self, restored: dict[str, Any]) -> None:
        """The checkpointed run's profiling steps and passes, continued (a limit measured again counts again)."""
        assert self._search is not None
        self._search.profiling_steps += restored.get("profiling_steps", 0)
        self._search.passes = max(self._search.passes, restored.get("passes", 0))

    def _check_cache(self, trainer: pl.Trainer) -> None:
        """Read the whole cache on rank 0 and raise its problem on every rank (a collective)."""
        if self.profile_path is None:
            return
        error = None
        if trainer.global_rank == 0:
            try:
                ProfileCache(self.profile_path, zeus_profile_steps=self.profile_steps).check()
            except ValueError as err:  # corrupt: the message names the file, the problem and the fix
                error = f"cannot read the profile cache: {err}"
            except OSError as err:
                error = f"cannot read the profile cache ({err}). Make it readable, or pass another path."
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise InvalidArgumentError(f"PowerLimitTuner(profile_path={self.profile_path!r}): {error}")

    def _read_cache(self, trainer: pl.Trainer, key: str, initial: bool) -> tuple[list[Any], int] | None:
        """The stored profile for ``key`` and its steps per measurement, or ``None``.

        Rank 0 reads the cache; every rank gets its answer (a broadcast), so all skip profiling or none does.
        A Zeus-written file answers only the ``initial`` workload (see :class:`~lightning_green.power.ProfileCache`).

        A cache that cannot be read is broadcast as an error message, and every rank raises it: raising on rank 0
        alone would leave the other ranks waiting in the broadcast forever.

        Raises:
            ValueError: The cache cannot be read or is corrupt (on every rank, with the same message).
        """
        if self.profile_path is None:
            return None
        answer: dict[str, Any] = {"rows": [], "steps": 1, "error": None}
        if trainer.global_rank == 0:
            try:
                found = ProfileCache(self.profile_path, zeus_profile_steps=self.profile_steps).profile(key, initial)
                if found is not None:
                    answer["rows"] = [[m.power_limit, m.energy, m.time] for m in found[0]]
                    answer["steps"] = found[1]
            except ValueError as err:  # corrupt: the message names the file, the problem and the fix
                answer["error"] = f"cannot read the profile cache: {err}"
            except OSError as err:
                answer["error"] = f"cannot read the profile cache ({err}). Make it readable, or pass another path."
        answer = trainer.strategy.broadcast(answer, src=0)
        if answer["error"] is not None:
            raise InvalidArgumentError(f"PowerLimitTuner(profile_path={self.profile_path!r}): {answer['error']}")
        rows = answer["rows"]
        if not rows:
            return None
        from zeus.optimizer.power_limit import PowerLimitMeasurement

        measurements = [PowerLimitMeasurement(power_limit=int(p), energy=float(e), time=float(t)) for p, e, t in rows]
        return measurements, int(answer["steps"])

    def _monitor(self, trainer: pl.Trainer) -> object:
        """The EnergyMonitor's Zeus monitor when it measures this GPU, else a monitor of our own."""
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            meter = getattr(cb, "meter", None)
            monitor = getattr(meter, "monitor", None)
            if monitor is not None and self.gpu_index in getattr(monitor, "gpu_indices", []):
                log.debug("PowerLimitTuner shares %s's Zeus monitor", type(cb).__name__)
                return monitor
        from zeus.monitor import ZeusMonitor

        return ZeusMonitor(gpu_indices=[self.gpu_index], cpu_indices=[], approx_instant_energy=True)

    def shares_monitor_with(self, trainer: pl.Trainer) -> str | None:
        """Name of the callback whose Zeus monitor the tuner uses, if it shares one."""
        if self._windows is None:
            return None
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if getattr(getattr(cb, "meter", None), "monitor", None) is self._windows.monitor:
                return type(cb).__name__
        return None

    @staticmethod
    def _sync(trainer: pl.Trainer) -> bool:
        return trainer.strategy.root_device.type == "cuda" and torch.cuda.is_available()

    def _set_limit(self, limit_mw: int) -> None:
        assert self._guard is not None and self.gpu_index is not None
        self._guard.set_limit(self.gpu_index, limit_mw)

    def _sync_point(self, trainer: pl.Trainer, window: Any, error: BaseException | None) -> None:
        """Every rank reaches this at the same step: agree on success, aggregate a finished window, conclude."""
        assert self._search is not None
        row = [float(error is None), window.energy_j if window else 0.0, window.time_s if window else 0.0]
        rows = gather_rows(trainer.strategy, row)
        if not all(r[0] > 0 for r in rows):
            self._disable(trainer, self._refusal(error))
            return
        if window is None:
            return
        energy = float(sum(r[1] for r in rows))
        elapsed = float(max(r[2] for r in rows))
        local_error: BaseException | None = None
        done = False
        try:
            done = self._search.record(energy, elapsed)
        except (ZeusBaseGPUError, ValueError) as err:
            local_error = err
        if not agree(trainer.strategy, local_error is None, all=True):
            self._disable(trainer, self._refusal(local_error))
            return
        if done:
            self._conclude(trainer)

    def _conclude(self, trainer: pl.Trainer, key: str | None = None, save: bool = True) -> None:
        """Select (the same on every rank: rank 0's choice is broadcast), apply, save and log.

        ``key``: the workload the profile is of (default: this run's now); ``save``: add it to the cache.
        """
        assert self._search is not None
        chosen = int(trainer.strategy.broadcast(self._search.select(), src=0))
        error: BaseException | None = None
        try:
            self._search.finish(chosen)
        except ZeusBaseGPUError as err:
            error = err
        if not agree(trainer.strategy, error is None, all=True):
            self._disable(trainer, self._refusal(error))
            return
        if key is None:
            key = self._key(trainer, trainer.lightning_module)  # of the workload just profiled (or loaded)
        self._profile_key = key
        self._profiles[key] = (list(self._search.measurements), self._search.measurement_steps)
        if save:
            self._save_cache(trainer, key)
        self._log_profile(trainer)
        rank_zero_info(
            f"PowerLimitTuner: {self.objective} → {chosen // 1000} W on {self._gpu_name} "
            f"(profiled {len(self._search.measurements)} limits; world size {self.world_size})."
        )

    def _pause(self, trainer: pl.Trainer) -> None:
        if self._search is None:
            return
        completed = self._gs_boundary is not None and trainer.global_step > self._gs_boundary
        self._search.pause(step_completed=completed)

    def _refusal(self, error: BaseException | None) -> str:
        if error is None:
            return "setting the power limit failed on another rank"
        return f"setting the power limit failed mid-run ({type(error).__name__}: {error})"

    def _disable(self, trainer: pl.Trainer, reason: str, restore: bool = True) -> None:
        self.disabled_reason = reason
        if self._search is not None:
            try:
                self._search.stop()
            except Exception:  # a broken monitor must not stop training
                log.debug("stopping the search failed", exc_info=True)
        if restore and self._guard is not None:
            self._guard.restore()
        if not self._warned:
            self._warned = True
            rank_zero_warn(
                f"PowerLimitTuner: cannot tune power limits: {reason}. The tuner is off; training continues "
                "at the GPU's original power limit."
            )
            if trainer.global_rank != 0:
                log.warning("PowerLimitTuner off on rank %d: %s", trainer.global_rank, reason)
        self._log_state(trainer)

    def _restore_failed(self, index: int, original_mw: int, error: BaseException) -> None:
        warnings.warn(
            f"PowerLimitTuner: could not restore GPU {index}'s power limit to {original_mw // 1000} W ({error}). "
            f"Restore it by hand: `nvidia-smi -i {index} -pl {original_mw // 1000}`.",
            RuntimeWarning,
            stacklevel=2,
        )

    def _save_cache(self, trainer: pl.Trainer, key: str) -> None:
        if self.profile_path is None or trainer.global_rank != 0 or self._search is None:
            return
        params, macs = self._size if self._size is not None else (None, None)
        try:
            ProfileCache(self.profile_path, zeus_profile_steps=self.profile_steps).save(
                key,
                self._search.measurements,
                steps=self._search.measurement_steps,
                gpu_name=self._gpu_name,
                job=self._job or None,
                world_size=self.world_size,
                precision=_precision(trainer),
                params=params,
                macs=macs,
                batch_size=self._batch_size,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
        except (OSError, ValueError) as err:
            rank_zero_warn(f"PowerLimitTuner: could not save the profile to {self.profile_path!r}: {err}")

    def _current_limit_w(self) -> float | None:
        if self._guard is None or self.gpu_index is None:
            return None
        try:
            return self._guard.gpus.get_power_management_limit(self.gpu_index) / 1000.0
        except ZeusBaseGPUError:
            return None

    def _log_state(self, trainer: pl.Trainer, step: int | None = None) -> None:
        if trainer.global_rank != 0 or not trainer.loggers or not trainer.log_every_n_steps:
            return
        metrics = {"power/tuner_state": float(STATE_CODES[self.state])}
        limit = self._current_limit_w()
        if limit is not None:
            metrics["power/limit_W"] = limit
        log_metrics(trainer, metrics, step=log_step(trainer) if step is None else step)

    def _log_profile(self, trainer: pl.Trainer) -> None:
        rows = self.table()
        section = {
            "objective": self.objective,
            "eta": self.eta,
            "max_slowdown": self.max_slowdown,
            "gpu_name": self._gpu_name,
            "job": self._job,
            "world_size": self.world_size,
            "workload": self.workload,
            "chosen_limit_w": self.chosen_limit_w,
            "profiling_steps": self.profiling_steps,
            "steps_per_limit": self._search.measurement_steps if self._search is not None else self.profile_steps,
            "table": rows,
        }
        add_report_section(trainer, "power_limit", section)
        if trainer.global_rank != 0 or not trainer.loggers:
            return
        metrics: dict[str, float] = {"power/chosen_limit_W": float(self.chosen_limit_w or 0.0)}
        for r in rows:
            w = int(r["limit_w"])
            metrics[f"power/profile/{w}W/energy_J"] = r["energy_j"]
            metrics[f"power/profile/{w}W/time_s"] = r["time_s"]
            metrics[f"power/profile/{w}W/cost"] = r["cost"]
        text = _markdown_table(rows, self.chosen_limit_w)
        step = log_step(trainer)  # Lightning's step, so the curves line up with the loss
        log_metrics(trainer, metrics, step=step)
        for lg in tensorboard_loggers(trainer):
            lg.experiment.add_text("power/profile", text, global_step=step)


@dataclasses.dataclass(frozen=True)
class _RankGPU:
    """One rank's GPU as setup read it: index, limit then, maximum limit, machine id (``None``: unknown)."""

    index: int
    current_mw: int
    max_mw: int
    machine: int | None


def _markdown_table(rows: list[dict[str, float]], chosen_w: float | None) -> str:
    lines = ["| limit (W) | energy/step (J) | time/step (s) | avg power (W) | cost/step |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " ✓" if chosen_w is not None and r["limit_w"] == chosen_w else ""
        lines.append(
            f"| {r['limit_w']:.0f}{mark} | {r['energy_j']:.4g} | {r['time_s']:.4g} | {r['avg_power_w']:.4g} "
            f"| {r['cost']:.4g} |"
        )
    return "\n".join(lines)


def _check_writable(owner: str, path: Any) -> None:
    """``path`` can be written: an existing writable file, or a new file in an existing writable folder."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        fail(owner, "profile_path", path, "None or a file path (str)", TypeError)
    p = Path(path)
    if p.exists():
        if not p.is_file() or not os.access(p, os.R_OK | os.W_OK):
            fail(owner, "profile_path", path, "a readable, writable file (it exists but is not one)")
        return
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        fail(owner, "profile_path", path, f"a file in an existing, writable folder ({str(parent)!r} is not one)")


def _hardware_part(key: str) -> list[str]:
    """A profile key without its model and precision fields (what ``reprofile_on_change=False`` ignores)."""
    return [part for part in key.split("|") if not part.startswith(("precision=", "params=", "macs="))]


def _precision(trainer: pl.Trainer) -> str:
    """The precision the steps run in now (AMPScheduler swaps the plugin; its mode is what runs)."""
    from lightning_green.precision.plugins import plugin_mode

    return plugin_mode(trainer.strategy.precision_plugin) or str(trainer.precision)


def _batch_size(batch: Any, previous: int | None) -> int | None:
    from lightning.pytorch.utilities.data import extract_batch_size

    try:
        return int(extract_batch_size(batch))
    except Exception:  # Lightning found no tensor in the batch: keep what was seen
        return previous


def _model_size(pl_module: pl.LightningModule) -> tuple[int, float | None]:
    """Parameters, and MACs of one forward of ``example_input_array`` (``None`` without one) by torch-pruning."""
    params = sum(p.numel() for p in pl_module.parameters())
    example = getattr(pl_module, "example_input_array", None)
    if example is None:
        return params, None
    from lightning.pytorch.utilities import move_data_to_device

    from lightning_green.pruning.graph import count_macs_params

    modes = {m: m.training for m in pl_module.modules()}
    try:
        pl_module.eval()  # no BatchNorm statistics update, no dropout draw
        macs, _ = count_macs_params(pl_module, move_data_to_device(example, pl_module.device))
    except Exception:  # a forward torch-pruning cannot trace: the key goes without MACs
        log.debug("counting MACs for the profile key failed", exc_info=True)
        macs = None
    finally:
        for m, training in modes.items():
            m.training = training
    return params, macs
