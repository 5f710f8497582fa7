"""AMPScheduler: scheduled mixed precision with an fp32 fallback when low precision goes wrong."""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green._internal.distributed import any_rank
from lightning_green._internal.logging import epoch_log_step, log_metrics, log_step, should_log_step
from lightning_green._internal.packages import require_lightning_package
from lightning_green._internal.runs import PicklesWithoutTrainer, continue_run
from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_number,
    check_state_version,
    fail,
)
from lightning_green.events import WorkloadChange, workload_changed
from lightning_green.precision.capability import PolicyChoice, resolve_policy
from lightning_green.precision.guard import (
    BufferSnapshot,
    FallbackTracker,
    drop_grads,
    nonfinite_flag,
    optimizer_params,
)
from lightning_green.precision.modes import FP32, LOW_MODES, MODES, mode_code
from lightning_green.precision.plugins import PluginSet, check_swappable
from lightning_green.precision.schedule import PrecisionSchedule, validate_schedule

__all__ = ["AMPScheduler"]

log = logging.getLogger(__name__)

_POLICIES = ("auto", "bf16-mixed", "16-mixed")
_INTERVALS = ("epoch", "step")


_HALF = (torch.float16, torch.bfloat16)


class AMPScheduler(PicklesWithoutTrainer, Callback):
    """Schedule mixed precision over training, and fall back to fp32 when low precision produces NaN/inf.

    The callback swaps ``trainer.strategy.precision_plugin`` between Lightning's ``Precision()`` (fp32) and
    ``MixedPrecision("bf16-mixed" | "16-mixed", device)``, always at an optimizer-step boundary — never inside a
    gradient-accumulation window — with automatic optimization and with manual optimization
    (``manual_backward``). Validation runs in the mode training is in.

    *What runs when*: either an explicit ``schedule`` ``{epoch_or_step: precision}`` (``interval`` says which;
    positions before the first key run in fp32), or the shortcuts: fp32 for ``warmup_epochs``, the low precision
    picked by ``policy`` in between, fp32 for the last ``final_fp32_epochs``. ``policy="auto"`` picks bf16 where
    the device runs it natively (CUDA with native bf16, a CPU with AVX-512-BF16/AMX), else fp16 with a grad
    scaler on CUDA, else fp32, and says which it picked. A schedule may name ``"auto"`` for that choice.

    *Fallback*: a non-finite loss (any mode) or non-finite gradients (bf16/fp32) make the optimizer step a no-op:
    gradients are dropped (gradient clipping, by norm or by value, then has nothing to do) and the module's buffers
    (BatchNorm statistics) restored to their state before the step, so no NaN reaches the weights. In low precision
    the run then falls back to fp32 for ``cooldown_steps`` optimizer steps and retries; so do ``overflow_patience``
    consecutive fp16 grad-scaler overflows (the scaler skips those updates itself). The ``max_fallbacks``-th
    fallback is final: fp32 for the rest of the run. Under DDP the decision is taken collectively: one rank's NaN
    switches every rank.

    *Logged* to every logger when Lightning logs the loss (``log_every_n_steps``, at the loss's step) and after
    each switch: ``precision/mode`` as a number — 32 = fp32, 16 = fp16, 16.5 = bf16 —
    ``precision/loss_scale`` (1.0 outside fp16), ``precision/fallbacks``, ``precision/skipped_steps`` (the updates
    this callback skipped) and ``precision/overflows`` (those the fp16 grad scaler skipped). Each
    switch prints one line and calls :func:`~lightning_green.events.workload_changed` (reason ``"precision"``) so
    the energy forecast and the power tuner re-fit. Mode, counters, schedule position and the fp16 loss scale are
    kept in checkpoints; after fit the Trainer's own precision plugin is put back for validate/test/predict.

    *Cost* per optimizer step: one device sync (the non-finite check), one pass over the gradients, a copy of the
    buffers (``guard_buffers``) and, under DDP, one all-reduce of a flag.

    Args:
        schedule: ``{epoch_or_step: "32-true" | "bf16-mixed" | "16-mixed" | "auto"}``; ``None`` uses the shortcuts.
        policy: The low precision of the shortcuts and of ``"auto"`` in a schedule: ``"auto"`` (by device),
            ``"bf16-mixed"`` or ``"16-mixed"``. With a ``schedule`` that names no ``"auto"`` it must stay ``"auto"``.
        warmup_epochs: fp32 epochs before low precision (shortcut; not with ``schedule``).
        final_fp32_epochs: fp32 epochs at the end of ``max_epochs`` (shortcut; not with ``schedule``).
        interval: What ``schedule`` keys count: ``"epoch"`` or ``"step"`` (optimizer steps, ``global_step``).
        overflow_patience: Consecutive fp16 overflows that count as a storm and trigger a fallback.
        cooldown_steps: Optimizer steps in fp32 after a fallback before low precision is retried.
        max_fallbacks: Fallbacks in one run; the last one keeps fp32 to the end.
        guard_buffers: Snapshot the module's buffers each step so a poisoned forward pass can be undone (costs one
            copy of the buffers per optimizer step; turn off for models with large buffers).

    Raises:
        ValueError: An argument is out of range, a schedule key lies beyond ``max_epochs``/``max_steps``, or (in
            ``setup``) the Trainer runs ``"16-true"``/``"bf16-true"`` or a strategy with its own precision plugin
            (FSDP, DeepSpeed).
        TypeError: An argument has the wrong type.

    Example:
        >>> import tempfile
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> amp = AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed"})
        >>> trainer = Trainer(default_root_dir=tempfile.mkdtemp(), max_epochs=2, limit_train_batches=2,
        ...                   limit_val_batches=1, callbacks=[amp], enable_progress_bar=False, logger=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> [(s["epoch"], s["from"], s["to"]) for s in amp.switches]
        [(1, '32-true', 'bf16-mixed')]
    """

    _trainer_refs = ("_fit_trainer",)

    def __init__(
        self,
        schedule: dict[int, str] | None = None,
        policy: Literal["auto", "bf16-mixed", "16-mixed"] = "auto",
        warmup_epochs: int = 0,
        final_fp32_epochs: int = 0,
        interval: Literal["epoch", "step"] = "epoch",
        overflow_patience: int = 10,
        cooldown_steps: int = 100,
        max_fallbacks: int = 3,
        guard_buffers: bool = True,
    ) -> None:
        name = type(self).__name__
        self.schedule = validate_schedule(name, schedule)
        check_choice(name, "policy", policy, _POLICIES)
        check_number(name, "warmup_epochs", warmup_epochs, integer=True, ge=0)
        check_number(name, "final_fp32_epochs", final_fp32_epochs, integer=True, ge=0)
        check_choice(name, "interval", interval, _INTERVALS)
        check_number(name, "overflow_patience", overflow_patience, integer=True, ge=1)
        check_number(name, "cooldown_steps", cooldown_steps, integer=True, ge=0)
        check_number(name, "max_fallbacks", max_fallbacks, integer=True, ge=1)
        check_bool(name, "guard_buffers", guard_buffers)
        if self.schedule is not None:
            for arg, value in (("warmup_epochs", warmup_epochs), ("final_fp32_epochs", final_fp32_epochs)):
                if value:
                    fail(name, arg, value, "0 when `schedule` is given (the schedule says where fp32 goes)")
            if policy != "auto" and "auto" not in self.schedule.values():
                fail(
                    name,
                    "policy",
                    policy,
                    "'auto' (the default) when `schedule` names no 'auto': the schedule's own modes are used; put "
                    "'auto' in the schedule where the policy's low precision should run",
                )
        elif interval == "step" and (warmup_epochs or final_fp32_epochs):
            fail(
                name,
                "interval",
                interval,
                "'epoch' with warmup_epochs/final_fp32_epochs (they count epochs); for step-wise switching give a "
                "`schedule` keyed by global step",
            )
        self.policy = policy
        self.warmup_epochs = warmup_epochs
        self.final_fp32_epochs = final_fp32_epochs
        self.interval = interval
        self.guard_buffers = guard_buffers
        self.tracker = FallbackTracker(overflow_patience, cooldown_steps, max_fallbacks)

        #: The mode installed now (``None`` before fit).
        self.mode: str | None = None
        #: What ``policy`` resolved to on this run's device (set in ``setup``).
        self.choice: PolicyChoice | None = None
        #: The schedule in force, ``"auto"`` resolved (set in ``setup``).
        self.active_schedule: PrecisionSchedule | None = None
        #: One record per switch: ``{"epoch", "step", "from", "to", "cause"}``.
        self.switches: list[dict[str, Any]] = []
        self.position = 0
        self._plugins: PluginSet | None = None
        self._original: Any = None
        self._restored: dict[str, Any] | None = None
        self._pending_scaler: dict[str, Any] | None = None
        self._active = False
        self._backward_pending = False
        self._loss_bad: torch.Tensor | bool = False
        self._pending_cause: str | None = None
        self._logged_metrics: dict[str, float] | None = None
        self._was_forced = False
        self._settle = False
        self._batch_mode = FP32
        self._logged_step = -1
        self._logged_mode: str | None = None
        self._snapshot: BufferSnapshot | None = None
        self._fit_trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer of the last fit (kept after it)
        self._setup_stage: str | None = None
        self._warned_fp32_skip = False

    # ------------------------------------------------------------------------------------------------ public
    @property
    def fallbacks(self) -> int:
        """Fallbacks to fp32 so far in this run."""
        return self.tracker.fallbacks

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps this callback dropped for a non-finite loss or gradients (not :attr:`overflows`)."""
        return self.tracker.skipped_steps

    @property
    def overflows(self) -> int:
        """fp16 updates the grad scaler skipped because their gradients overflowed (it lowers its scale then)."""
        return self.tracker.overflows

    @property
    def loss_scale(self) -> float:
        """The fp16 loss scale now (1.0 outside fp16)."""
        if self._plugins is None or self.mode is None:
            return 1.0
        return self._plugins.loss_scale(self.mode)

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._setup_stage = stage  # before Lightning restores a checkpoint's callback state (load_state_dict)
        if stage != "fit":
            return
        name = type(self).__name__
        require_lightning_package(name, trainer, "swaps Lightning's own precision plugins")
        # A second AMPScheduler is refused by Lightning itself (two stateful callbacks with one state_key).
        original_mode = check_swappable(name, trainer.strategy)
        device_type = trainer.strategy.root_device.type
        schedule = self._build_schedule(trainer)
        self.choice = resolve_policy(self.policy, device_type)
        self.active_schedule = schedule.resolve(self.choice.mode)
        uses_policy = self.schedule is None or "auto" in self.schedule.values()
        if uses_policy and self.policy == "auto":
            rank_zero_info(f"{name}: policy='auto' picked {self.choice.mode}: {self.choice.reason}.")
        elif uses_policy and self.choice.reason != "requested":
            rank_zero_warn(f"{name}: policy={self.policy!r} on {device_type}: {self.choice.reason}.")
        for mode in sorted(set(schedule.entries.values()) & set(LOW_MODES)):
            reason = resolve_policy(mode, device_type).reason
            if reason != "requested":
                rank_zero_warn(f"{name}: {mode} on {device_type}: {reason}.")
        rank_zero_info(f"{name}: schedule {self.active_schedule.describe()}.")
        if original_mode != FP32:
            rank_zero_info(f"{name}: Trainer(precision={original_mode!r}) is replaced by the schedule during fit.")
        self._original = trainer.strategy.precision_plugin
        self._plugins = PluginSet(device_type, self._original)
        # Several fits on one Trainer are one run: a fallback made final stays final, and the switches and
        # counters go on. A new Trainer is a new run (a checkpoint restored next brings its own state).
        same_run, self._fit_trainer = continue_run(self._fit_trainer, trainer)
        if not same_run:
            self.tracker.reset()
            self.switches = []
        self.mode = None
        self.position = 0
        self._restored = None  # load_state_dict (resume) runs after setup
        self._pending_scaler = None
        self._was_forced = False
        self._settle = False
        self._warned_fp32_skip = False
        self._logged_step, self._logged_mode, self._logged_metrics = -1, None, None

    def _build_schedule(self, trainer: pl.Trainer) -> PrecisionSchedule:
        name = type(self).__name__
        if trainer.fast_dev_run:
            # Lightning's smoke test forces max_epochs=1 / max_steps=N: the schedule is meant for the real run, and
            # the smoke run follows its start (the bounds below would blame settings the user never gave).
            if self.schedule is not None:
                return PrecisionSchedule(self.schedule, self.interval)
            return PrecisionSchedule.from_shortcuts("auto", self.warmup_epochs, 0, None)
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if self.schedule is not None:
            if self.interval == "epoch" and max_epochs is not None and max(self.schedule) >= max_epochs:
                fail(name, "schedule", self.schedule, f"keyed by epochs < Trainer(max_epochs={max_epochs})")
            if self.interval == "step" and trainer.max_steps > 0 and max(self.schedule) >= trainer.max_steps:
                fail(name, "schedule", self.schedule, f"keyed by steps < Trainer(max_steps={trainer.max_steps})")
            return PrecisionSchedule(self.schedule, self.interval)
        if self.final_fp32_epochs and max_epochs is None:
            fail(
                name,
                "final_fp32_epochs",
                self.final_fp32_epochs,
                "0 when Trainer(max_epochs) is unbounded (the last epochs are unknown)",
            )
        if max_epochs is not None and self.warmup_epochs + self.final_fp32_epochs >= max_epochs:
            fail(
                name,
                "warmup_epochs",
                self.warmup_epochs,
                f"such that warmup_epochs + final_fp32_epochs ({self.warmup_epochs} + {self.final_fp32_epochs} = "
                f"{self.warmup_epochs + self.final_fp32_epochs}) < Trainer(max_epochs={max_epochs}), leaving at least "
                "one epoch in low precision",
            )
        return PrecisionSchedule.from_shortcuts("auto", self.warmup_epochs, self.final_fp32_epochs, max_epochs)

    def _check_optimizers(self, trainer: pl.Trainer) -> None:
        """Refuse fp16 for LBFGS before the run (Lightning's grad scaler cannot drive it: it fails at the switch)."""
        if "16-mixed" not in self.active_schedule.entries.values():
            return
        lbfgs = [type(opt).__name__ for opt in trainer.optimizers if isinstance(opt, torch.optim.LBFGS)]
        if lbfgs:
            what = "policy" if self.schedule is None or "auto" in self.schedule.values() else "schedule"
            value = self.policy if what == "policy" else self.schedule
            raise InvalidArgumentError(
                f"{type(self).__name__}({what}={value!r}) schedules 16-mixed, which Lightning's grad scaler cannot "
                f"run with the {lbfgs[0]} optimizer (its step re-evaluates the closure): use bf16-mixed or 32-true "
                "in the schedule (policy='bf16-mixed'), or another optimizer."
            )

    def _check_weights(self, pl_module: pl.LightningModule) -> None:
        """Refuse trainable half-precision weights (a model built or loaded in bf16/fp16): nothing to fall back to.

        Autocast leaves them in half precision, so a "32-true" epoch still computes in it, and Lightning's grad
        scaler refuses their fp16 gradients. Frozen half weights (a teacher) are the user's business.
        """
        trainable = [(n, p.dtype) for n, p in pl_module.named_parameters() if p.requires_grad]
        half = [(n, dtype) for n, dtype in trainable if dtype in _HALF]
        if half:
            name, dtype = half[0]
            raise InvalidArgumentError(
                f"{type(self).__name__}: the module's trainable weights must be fp32 (torch.float32) for it to "
                f"schedule precision and fall back to fp32; {len(half)} of {len(trainable)} tensors are {dtype} (e.g. "
                f"{name!r}). Build or load the model in fp32 (e.g. from_pretrained(..., dtype=torch.float32)) and let "
                f"{type(self).__name__} pick the precision, or remove it."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._plugins is not None, "setup() did not run"
        self._check_weights(pl_module)
        self._check_optimizers(trainer)
        self._active = True
        self._backward_pending = False
        self._loss_bad = False
        restored = self._restored
        self._restored = None
        # A fallback asked for in the batch a checkpoint was saved at takes place at the resumed run's first batch.
        pending = restored.get("pending_cause") if restored is not None else None
        self._pending_cause = str(pending) if pending is not None else None
        if self._pending_scaler:
            self._plugins.load_scaler_state(self._pending_scaler)
            self._pending_scaler = None
        # The loops' progress is restored only after on_fit_start: on resume, install the checkpoint's mode, so
        # Lightning restores the grad-scaler state into the plugin that saved it; the first batch re-targets.
        mode = self._restored_mode(restored)
        self._settle = mode is None and (restored is not None or trainer.ckpt_path is not None)
        if self._settle:
            # A resume in no mode of the checkpoint's: the schedule's position (and whether a restored cooldown still
            # forces fp32) is known only once the loops are restored. The first batch installs it without recording
            # a switch; until then this one is a placeholder (at step 0 a finished cooldown looked active).
            forced = self._was_forced
            mode = self._target(trainer)
            self._was_forced = forced
        self._install(trainer, mode if mode is not None else self._target(trainer))
        self._snapshot = BufferSnapshot(pl_module) if self.guard_buffers else None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A step key past the run's last step: refused up front against Trainer(max_steps); with only max_epochs the
        # number of steps is known once the training data is loaded (now). Lightning's estimate is an upper bound
        # (DataPruning shortens epochs), so a key at or past it is never reached.
        if not self._active or self.interval != "step" or not self.schedule or trainer.max_steps > 0:
            return
        if not pl_module.automatic_optimization and len(trainer.optimizers) > 1:
            return  # each optimizer.step() is a step: Lightning's estimate counts batches, not several steps a batch
        steps = trainer.estimated_stepping_batches
        if math.isfinite(steps) and max(self.schedule) >= steps:
            late = sorted(k for k in self.schedule if k >= steps)
            rank_zero_warn(
                f"{type(self).__name__}(schedule={self.schedule!r}, interval='step'): the run has at most {int(steps)} "
                f"optimizer steps (Trainer(max_epochs={trainer.max_epochs}), {trainer.num_training_batches} batches "
                f"an epoch, accumulate_grad_batches={trainer.accumulate_grad_batches}), so the entries at steps {late} "
                "are never reached."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        if not self._backward_pending:  # an optimizer-step boundary: nothing accumulated yet
            # A batch without backward (training_step returned None) still steps: judge it by its own (absent) loss,
            # not by the flag a previous batch's losses left (on_before_optimizer_step keeps it for joint losses).
            self._loss_bad = False
            forced_before = self._was_forced
            if self._pending_cause is not None and not self.tracker.locked:
                # The cooldown counts from this boundary: with several optimizers (manual optimization) the others'
                # steps in the batch of the fallback ate into it (cooldown_steps=1 ran no fp32 step at all).
                self.tracker.cooldown_until = trainer.global_step + self.tracker.cooldown_steps
            target = self._target(trainer)
            if self._settle:  # the resumed run's mode: the run did not switch into it
                self._settle = False
                if target != self.mode:
                    self._install(trainer, target)
            elif target != self.mode:
                if self._pending_cause is not None:
                    cause = self._pending_cause
                elif forced_before and not self._was_forced:
                    cause = "retry after the fp32 cooldown"
                elif self._was_forced:
                    cause = "fallback"
                else:
                    cause = "schedule"
                self._switch(trainer, target, cause)
            self._pending_cause = None
            if self._snapshot is not None:
                self._snapshot.take()
        self._batch_mode = self.mode or FP32

    def on_workload_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, change: WorkloadChange) -> None:
        """The workload changed; a prune (or its rollback) replaces the model's buffers: copy the new ones.

        A prune in another callback's ``on_train_batch_start`` after this one's snapshot would otherwise leave the
        snapshot holding the old tensors, so a poisoned forward right after it could not be undone (NaN BatchNorm
        statistics for the rest of the run).
        """
        if self._snapshot is not None:
            self._snapshot.take()

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self._active:
            return
        if not self._backward_pending:  # the first backward since an optimizer step: a new step's losses
            self._loss_bad = False
        self._backward_pending = True
        # Kept on the device: one sync per optimizer step, not per micro-batch.
        flag = ~torch.isfinite(loss.detach()).all()
        self._loss_bad = flag if isinstance(self._loss_bad, bool) else self._loss_bad | flag

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._active:
            return
        self._backward_pending = False
        mode = self.mode or FP32
        params = optimizer_params(optimizer)
        device = trainer.strategy.root_device
        # Not cleared here: with manual optimization one backward can feed several optimizers' steps (a joint loss),
        # and each of them must skip when it was non-finite. The next backward after a step starts afresh.
        loss_flag = torch.as_tensor(self._loss_bad, device=device).reshape(())
        # One collective and one device sync per optimizer step (every rank reaches this once per step). In fp16
        # the grads were unscaled before this hook; non-finite ones are an overflow the scaler will skip.
        any_loss, any_grad = any_rank(trainer.strategy, torch.stack([loss_flag, nonfinite_flag(params, device)]))
        bad = overflow = False
        if any_loss or any_grad:
            if mode == "16-mixed":
                bad = any_loss
                overflow = not bad
            else:
                bad = True
        step = trainer.global_step
        if bad and self._pending_cause is not None:  # another optimizer of this batch already asked for the fallback
            self.tracker.skipped_steps += 1
            cause = None
        else:
            cause = self.tracker.record(step, mode, bad=bad, overflow=overflow)
        if bad:
            plugin = trainer.strategy.precision_plugin
            if callable(getattr(plugin, "skip_step", None)):
                plugin.skip_step(params)  # after the clipping that follows this hook (a user's may need the grads)
            else:
                drop_grads(params)
            if self._snapshot is not None:
                self._snapshot.restore()
            if mode == FP32 and not self._warned_fp32_skip:
                self._warned_fp32_skip = True
                rank_zero_warn(
                    f"{type(self).__name__}: a non-finite loss or gradient in fp32 (not a precision problem); the "
                    "update was skipped. Further ones are counted in `precision/skipped_steps`."
                )
        if cause is not None:
            final = " (final: fp32 for the rest of the run)" if self.tracker.locked else ""
            self._pending_cause = f"fallback after {cause} at step {step}{final}"
            log.debug("fallback requested: %s", self._pending_cause)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active or not trainer.loggers:
            return
        # Straight to the loggers, when Lightning logs the loss (same step) and after each switch: LightningModule.log
        # costs milliseconds a call, a visible share of a small model's bf16 step. log_every_n_steps=0: nothing.
        if not trainer.log_every_n_steps:
            return
        step = log_step(trainer)
        due = should_log_step(trainer) or self._batch_mode != self._logged_mode
        if not due or step == self._logged_step:
            return
        self._logged_step, self._logged_mode = step, self._batch_mode
        self._log(trainer, step)

    def _metrics(self) -> dict[str, float]:
        return {
            "precision/mode": mode_code(self._batch_mode),
            "precision/loss_scale": self._plugins.loss_scale(self._batch_mode) if self._plugins else 1.0,
            "precision/fallbacks": float(self.tracker.fallbacks),
            "precision/skipped_steps": float(self.tracker.skipped_steps),
            "precision/overflows": float(self.tracker.overflows),
        }

    def _log(self, trainer: pl.Trainer, step: int) -> None:
        self._logged_metrics = self._metrics()
        log_metrics(trainer, self._logged_metrics, step=step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The run's last counts (a skip or overflow after the last logging step), so the last value logged is the
        # run's: what the green report reads.
        if self._active and trainer.loggers and trainer.log_every_n_steps and self._metrics() != self._logged_metrics:
            self._logged_step = epoch_log_step(trainer)  # the last batch's (a later fit() logs from the next one)
            self._log(trainer, self._logged_step)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._finish(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish(trainer)

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        scaler = self._plugins.scaler_state() if self._plugins is not None else self._pending_scaler
        return {
            "version": 1,
            "mode": self.mode,
            "position": self.position,
            "tracker": self.tracker.state_dict(),
            "scaler": scaler,
            "forced": self._was_forced,
            "switches": [dict(s) for s in self.switches],
            "pending_cause": self._pending_cause,  # a fallback asked for in the batch of the checkpoint
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=1)
        if self._setup_stage not in (None, "fit"):
            # validate/test/predict(ckpt_path=...): Lightning restores every callback's state for any stage, but
            # this is the state of the fit that wrote it; the run's own (e.g. between two fits) stays.
            return
        self._restored = dict(state_dict)
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
        self.switches = [dict(s) for s in state_dict.get("switches", [])]
        self.position = int(state_dict.get("position", 0))
        self._was_forced = bool(state_dict.get("forced", False))
        scaler = state_dict.get("scaler")
        self._pending_scaler = dict(scaler) if scaler else None

    # ------------------------------------------------------------------------------------------------ internals
    def _restored_mode(self, restored: dict[str, Any] | None) -> str | None:
        """The checkpoint's precision mode if this run may install it; ``None``: re-target from the schedule."""
        mode = restored.get("mode") if restored is not None else None
        if mode is None:
            return None
        name = type(self).__name__
        if mode not in MODES:
            raise InvalidArgumentError(
                f"{name}: the checkpoint's precision mode {mode!r} is not one of {MODES}; the checkpoint is corrupt "
                "or was not written by lightning-green."
            )
        assert self.active_schedule is not None
        allowed = self.active_schedule.modes() | {FP32}
        if mode not in allowed:
            rank_zero_warn(
                f"{name}: the checkpoint was saved in {mode}, which this run's schedule does not use here "
                f"({', '.join(sorted(allowed))}); resuming in the schedule's mode instead."
            )
            return None
        return mode

    def _target(self, trainer: pl.Trainer) -> str:
        assert self.active_schedule is not None
        self.position = trainer.current_epoch if self.interval == "epoch" else trainer.global_step
        self._was_forced = self.tracker.forced_fp32(trainer.global_step)
        return FP32 if self._was_forced else self.active_schedule.at(self.position)

    def _install(self, trainer: pl.Trainer, mode: str) -> None:
        assert self._plugins is not None
        trainer.strategy.precision_plugin = self._plugins.get(mode)
        self.mode = mode
        self._batch_mode = mode

    def _switch(self, trainer: pl.Trainer, mode: str, cause: str) -> None:
        old = self.mode
        self._install(trainer, mode)
        epoch, step = trainer.current_epoch, trainer.global_step
        self.switches.append({"epoch": epoch, "step": step, "from": old, "to": mode, "cause": cause})
        rank_zero_info(f"{type(self).__name__}: epoch {epoch}, step {step}: {old} -> {mode} ({cause}).")
        workload_changed(trainer, "precision", self, precision=mode, previous=old, cause=cause)

    def _finish(self, trainer: pl.Trainer) -> None:
        # Later validate/test/predict calls run in the precision the Trainer was built with.
        if self._active and self._original is not None:
            trainer.strategy.precision_plugin = self._original
        self._active = False
        self._snapshot = None
        self._backward_pending = False
