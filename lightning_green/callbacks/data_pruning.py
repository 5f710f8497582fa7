"""DataPruning: skip the samples the model has already learned (InfoBatch), unbiased, and measured."""

from __future__ import annotations

import functools
import logging
import math
import os
import weakref
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch.utils.data import DataLoader, RandomSampler
from typing_extensions import override

from lightning_green._internal.checkpoints import last_batch_progress
from lightning_green._internal.runs import PicklesWithoutTrainer, continue_run
from lightning_green._internal.validation import InvalidArgumentError, check_bool, check_number, check_state_version
from lightning_green.data.install import install_train_sampler
from lightning_green.data.sampler import PruningSampler, epoch_batches
from lightning_green.data.scores import EpochPlan, SampleScores, annealing_start, plan_epoch
from lightning_green.events import add_report_section

__all__ = ["DataPruning"]

log = logging.getLogger(__name__)

#: An epoch's batch counter that reads as run to its end for any next epoch's length (see on_load_checkpoint).
_EPOCH_RUN_OUT = 2**62


class DataPruning(PicklesWithoutTrainer, Callback):
    """InfoBatch-style data pruning: each epoch, skip part of the samples the model already gets right.

    Add the callback, and in ``training_step`` reduce one loss per sample with
    :func:`~lightning_green.reduce_sample_losses`::

        losses = F.cross_entropy(logits, y, reduction="none")
        loss = reduce_sample_losses(self, losses)

    Each epoch, a sample whose last loss (its *score*) is below the mean score is skipped with probability
    ``prune_ratio``; the well-learned samples that are kept weigh ``1 / (1 - prune_ratio)``, so the expected gradient of
    an epoch equals the full data's. Samples never scored, or whose last loss was NaN/inf, are always kept. The last
    ``anneal_fraction`` of ``max_epochs`` (the whole epochs in it, at least one) uses every sample. Skipped samples
    are never loaded: the training DataLoader is re-created by Lightning with a sampler that yields only the kept ones
    (shuffled when the original was), so each epoch has fewer batches (with ``keep_steps``: smaller ones). Under DDP all
    ranks plan the same epoch from the gathered scores, each gets a disjoint shard (apart from the padding that evens
    them out without ``drop_last``, as in ``DistributedSampler``), and all run the same number of batches.

    To re-plan every epoch the callback sets ``Trainer(reload_dataloaders_every_n_epochs=1)`` for the fit (Lightning's
    own mechanism for epochs of changing length: batch counts, validation and progress follow). Schedulers that count
    *steps* see the shorter epochs; size them for fewer steps or use ``interval="epoch"`` (a warning names a step
    scheduler sized for the full data), or use ``keep_steps=True``.

    The weights keep an epoch's expected *sum of gradients*, which is an epoch's progress under SGD. Adam and AdamW
    make every step about ``lr`` long whatever the loss's scale, so there an epoch of fewer steps moves less and a
    pruned run trails the full one. ``keep_steps=True`` keeps every epoch's number of steps and shrinks its batches
    instead, with the weights times the epoch's kept fraction so that each step's expected gradient is the full-data
    step's (for any optimizer); the saving then comes from smaller batches, which cost proportionally less where the
    batch sets the work (CPUs, GPUs at large batch sizes). README, "DataPruning": measured on the digits demo with
    both optimizers and both modes.

    Logged each epoch: ``data/kept_fraction`` (samples this epoch loads / samples an epoch on all the data loads,
    both under the same ``limit_train_batches`` and ``drop_last``), ``data/samples_seen`` (samples loaded so far, all
    ranks) and ``data/score_mean``. The
    EnergyMonitor's report gets a ``data`` section (samples seen, saved).

    Args:
        prune_ratio: Probability of skipping a well-learned sample, in [0, 1) (0 trains on everything).
        anneal_fraction: Share of the last epochs that use all the data, in [0, 1].
        seed: Seed of the per-epoch draws and order (with the epoch), the same on every rank. ``None`` (default):
            Lightning's global seed (``seed_everything``, as Lightning's ``DistributedSampler`` follows it), else 0.
            A resumed run keeps its checkpoint's seed.
        keep_steps: Keep the full data's number of batches per epoch with smaller batches (for Adam-like
            optimizers), instead of fewer batches of the DataLoader's ``batch_size`` (default).

    Raises:
        ValueError: An argument is out of range; in ``setup``: the training data is not one DataLoader over a
            map-style dataset; at the end of the first epoch: ``training_step`` never called ``reduce_sample_losses``.

    Example:
        >>> DataPruning(prune_ratio=0.5, anneal_fraction=0.125).prune_ratio
        0.5
    """

    _trainer_refs = ("_fit_trainer", "_trainer_ref")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        anneal_fraction: float = 0.125,
        seed: int | None = None,
        keep_steps: bool = False,
    ) -> None:
        name = type(self).__name__
        check_number(name, "prune_ratio", prune_ratio, ge=0, lt=1)
        check_number(name, "anneal_fraction", anneal_fraction, ge=0, le=1)
        if seed is not None:
            check_number(name, "seed", seed, integer=True)
        check_bool(name, "keep_steps", keep_steps)
        self.prune_ratio = float(prune_ratio)
        self.anneal_fraction = float(anneal_fraction)
        self.seed = None if seed is None else int(seed)
        self._draw_seed = self.seed if self.seed is not None else 0  # resolved in setup, or a checkpoint's
        self.keep_steps = bool(keep_steps)
        self.scores: SampleScores | None = None
        self.history: list[dict[str, Any]] = []  # per epoch: epoch, kept, total, pruned
        self.samples_seen = 0
        self._pending_state: dict[str, Any] | None = None
        self._sampler: PruningSampler | None = None
        self._shuffle = False
        self._anneal_start: int | None = None
        self._undo: Callable[[], None] | None = None
        self._reload_before: int | None = None
        self._indices: list[int] | None = None
        self._in_flight = 0  # samples of the batch between its on_train_batch_start and _end (0: none)
        self._weights: torch.Tensor | None = None
        self._epoch_calls = 0
        self._epoch_seen = 0
        self._batch_number = 0
        self._first_epoch = True
        self._buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._warned_nonfinite = False
        self._warned_small = False
        self._warned_twice = False
        self._batch_calls = 0  # reduce_sample_losses calls in the batch in progress
        self._closure_repeats = False  # an optimizer (LBFGS) runs training_step several times per batch
        # The fewest batches per rank an epoch may have, what needs them, and the loader's (batch_size, drop_last,
        # world size) that turn kept samples into batches (set with the sampler; see _fewest_batches).
        self._min_batches: tuple[int, str, tuple[int, bool, int]] = (0, "", (1, False, 1))
        self._rank = 0
        self._open_epoch: int | None = None  # the epoch whose scores are in _buffers, not yet merged
        self._pending_epoch: dict[str, Any] | None = None  # a checkpoint's open epoch, restored by _make_sampler
        self._step_bounded = False
        self._setup_stage: str | None = None
        self._trainer_ref: weakref.ref[pl.Trainer] | None = None
        self._fit_trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer of the last fit (kept after it)
        self._restored_open = False  # the open epoch came from a checkpoint (close it even if its end hook never runs)
        # (epoch, whether it was pruned) of an epoch a checkpoint was taken in: it keeps its plan on resume, even if
        # the resumed Trainer's max_epochs moves the annealing epochs.
        self._restored_plan: tuple[int, bool] | None = None

    # ------------------------------------------------------------------------------------------------ public
    @property
    def active(self) -> bool:
        """Whether the sampler drives the training data (between ``setup`` and ``teardown`` of a fit)."""
        return self._sampler is not None

    @property
    def sampler(self) -> PruningSampler | None:
        """The sampler of the current training DataLoader."""
        return self._sampler

    @property
    def batch_indices(self) -> list[int] | None:
        """Dataset indices of the training batch in progress (``None`` between batches)."""
        return None if self._indices is None else list(self._indices)

    def plan(self, epoch: int) -> EpochPlan:
        """The kept samples and weights of ``epoch`` from the current scores (what the sampler uses)."""
        if self.scores is None:
            raise RuntimeError("DataPruning.plan: no training data yet (call it during fit).")
        full = self._anneal_start is not None and epoch >= self._anneal_start
        if self._restored_plan is not None and self._restored_plan[0] == epoch:
            # Half run before the checkpoint: the rest of it follows the same plan (the batches already run are
            # skipped by count, and a plan with other samples would repeat some and never draw others).
            full = not self._restored_plan[1]
        plan = plan_epoch(self.scores, self.prune_ratio, epoch, self._draw_seed, self._shuffle, full_data=full)
        need, why, geometry = self._min_batches
        kept, n = len(plan.order), len(self.scores)
        batches = epoch_batches(kept, n, *geometry, keep_steps=self.keep_steps) if need else 0
        if not full and plan.pruned and batches < need:  # Lightning would stop ("no training batches") or raise
            if not self._warned_small:
                self._warned_small = True
                hint = "A lower" if self.keep_steps else "keep_steps=True keeps the full data's batch count; a lower"
                rank_zero_warn(
                    f"DataPruning: epoch {epoch} would keep {kept} of {n} samples, {batches} batch(es) per rank, "
                    f"fewer than {why} needs; such epochs train on all the data. {hint} prune_ratio keeps more "
                    "samples."
                )
            plan = plan_epoch(self.scores, self.prune_ratio, epoch, self._draw_seed, self._shuffle, full_data=True)
        return plan

    def planned_samples(self, trainer: pl.Trainer, epoch: int) -> int | None:
        """Samples (all ranks) a coming ``epoch`` will load if known before it starts, for EnergyMonitor's forecast.

        An annealing epoch loads all the data (under ``limit_train_batches``; with the samples a ``DistributedSampler``
        pads the shards with, as the monitor counts them); a pruned epoch's kept set is drawn from the scores at its
        start, and with ``prune_ratio=0`` every epoch is alike: ``None`` (like the epochs seen).
        """
        if self._sampler is None or self.scores is None or self.prune_ratio == 0:
            return None
        if self._anneal_start is None or epoch < self._anneal_start:
            return None
        return self._full_data_samples(trainer, None, padded=True)

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """Weighted mean of this batch's per-sample ``losses``, recorded as scores (see ``reduce_sample_losses``)."""
        if self._indices is None or self._weights is None:
            raise RuntimeError(
                "reduce_sample_losses: DataPruning has no batch open; call it from training_step of a fit."
            )
        if len(losses) != len(self._indices):
            raise InvalidArgumentError(
                f"reduce_sample_losses(losses of length {len(losses)}): `losses` must hold one loss per sample of the "
                f"batch ({len(self._indices)} samples); for sequences average the token losses per sample (and a "
                "collate_fn must not drop samples: DataPruning maps each batch to the indices its sampler yielded)."
            )
        self._batch_calls += 1
        if self._batch_calls == 2 and not self._warned_twice and not self._closure_repeats:
            self._warned_twice = True
            rank_zero_warn(
                "reduce_sample_losses was called more than once in one training step: each call records its losses "
                "as the batch's scores, so the scores become their mean. Call it once, with the per-sample losses "
                "that should decide which samples are well learned, and add other loss terms to what it returns."
            )
        self._record(losses.detach())
        self._epoch_calls += 1
        return (losses * self._weights.to(device=losses.device, dtype=losses.dtype)).mean()

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._setup_stage = stage  # before Lightning restores a checkpoint (load_state_dict)
        if stage != "fit":
            return
        if trainer.overfit_batches:
            # Lightning replaces the training sampler with a sequential one after ours is installed.
            raise InvalidArgumentError(
                f"DataPruning: Trainer(overfit_batches={trainer.overfit_batches}) trains on a fixed few batches in a "
                "fixed order, so there is nothing to prune; remove DataPruning for that debugging run."
            )
        if is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True):
            # The step draws its batches itself (any number per step, or none): the callback's batch hooks no longer
            # tell which samples a step trained on, so the scores would land on other samples.
            raise InvalidArgumentError(
                "DataPruning: training_step(self, dataloader_iter) fetches its own batches, so DataPruning cannot tell "
                "which samples each loss belongs to; take `batch` in training_step (one batch per step), or remove "
                "DataPruning."
            )
        start = annealing_start(trainer.max_epochs, self.anneal_fraction)
        # EarlyStopping cannot stop before min_epochs epochs ran: with min_epochs >= max_epochs every annealing epoch
        # runs. (`start` is None without max_epochs: nothing anneals, which its own warning says.)
        early_stop = any(isinstance(cb, EarlyStopping) for cb in trainer.callbacks)
        may_stop_early = early_stop and start is not None and (trainer.min_epochs or 0) < trainer.max_epochs
        if self.anneal_fraction > 0 and self.prune_ratio > 0 and may_stop_early:
            rank_zero_warn(
                f"DataPruning(anneal_fraction={self.anneal_fraction}): the last epochs train on all the data "
                f"(from epoch {start} of max_epochs={trainer.max_epochs}), but EarlyStopping may end the run "
                "before them; set max_epochs to the epochs the run will take, or expect no annealing."
            )
        same_run, self._fit_trainer = continue_run(self._fit_trainer, trainer)
        if not same_run and (self.history or self.scores is not None):
            # Several fits on one Trainer are one run; a new Trainer is a new run (the callback reused, e.g. after a
            # fast_dev_run): the scores were of the model trained before. A checkpoint restored next brings its own.
            self.scores, self.history, self.samples_seen = None, [], 0
            self._pending_state = self._pending_epoch = self._restored_plan = None
            self._open_epoch, self._buffers = None, None
        if not same_run:
            seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            # Every rank must draw the same kept set: rank 0's seed (a collective, as in setup every rank is here).
            self._draw_seed = int(trainer.strategy.broadcast(seed, src=0)) if trainer.world_size > 1 else seed
        self._rank = trainer.global_rank
        self._in_flight = 0  # a batch a previous fit crashed in is not this fit's
        self._trainer_ref = weakref.ref(trainer)  # state_dict gathers an open epoch's records over the ranks
        self._anneal_start = annealing_start(trainer.max_epochs, self.anneal_fraction)
        if self._anneal_start is None and self.anneal_fraction > 0:
            rank_zero_warn(
                f"DataPruning(anneal_fraction={self.anneal_fraction}): Trainer(max_epochs) is not set, so there are no "
                "last epochs to train on all the data; set max_epochs to anneal."
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            self._reload_before = trainer.reload_dataloaders_every_n_epochs
            if self._reload_before:
                rank_zero_info(
                    f"DataPruning: reload_dataloaders_every_n_epochs={self._reload_before} becomes 1 for this fit "
                    "(the kept samples change every epoch)."
                )
            trainer.reload_dataloaders_every_n_epochs = 1
        self._first_epoch = True
        self._batch_number = 0
        self._undo = install_train_sampler(trainer, type(self).__name__, lambda dl: self._make_sampler(trainer, dl))

    def _make_sampler(self, trainer: pl.Trainer, loader: DataLoader) -> PruningSampler:
        n = len(loader.dataset)  # type: ignore[arg-type]
        if self.scores is None or len(self.scores) != n:
            if self.scores is not None:
                rank_zero_warn(f"DataPruning: the training set changed size ({len(self.scores)} -> {n}); rescoring.")
            self.scores = SampleScores(n)
        if self._pending_state is not None:
            self.scores.load_state_dict(self._pending_state)
            self._pending_state = None
        self._shuffle = isinstance(loader.sampler, RandomSampler) or bool(getattr(loader.sampler, "shuffle", False))
        epoch = trainer.current_epoch
        # A checkpoint taken inside an epoch (mid-epoch, at validation end, or at its last batch) holds that epoch's
        # losses so far. Lightning restarts such an epoch without on_train_epoch_start, or counts it as done without
        # on_train_epoch_end, and may build the loader early (estimated_stepping_batches) while current_epoch is
        # still 0: restore once the loader is for that epoch or a later one.
        self._merge_restored(trainer, epoch, before=True)  # restarted past its end: merged before this one is planned
        self._open(epoch)  # a new epoch's state here: its start hook may not run on a restart
        self._min_batches = self._fewest_batches(trainer, loader)
        sampler = PruningSampler(
            n,
            self.plan,
            batch_size=loader.batch_size,  # type: ignore[arg-type]
            drop_last=loader.drop_last,
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            keep_steps=self.keep_steps,
        )
        sampler.set_epoch(epoch)
        self._sampler = sampler
        if self._batch_number:  # a DataLoader is not resumable: continue after the batches already run
            sampler.skip_batches(self._batch_number)
        return sampler

    def _fewest_batches(self, trainer: pl.Trainer, loader: DataLoader) -> tuple[int, str, tuple[int, bool, int]]:
        """The fewest batches per rank an epoch may have for Lightning to run it, what needs them, and the geometry.

        The geometry is the loader's ``batch_size``, ``drop_last`` and the world size. Needed: one batch (a whole one
        under ``drop_last``), or an int ``val_check_interval``'s many (validation on: Lightning refuses an epoch
        shorter than it), after a float ``limit_train_batches`` below 1 (``int(limit * batches)``, as Lightning counts).
        """
        size = loader.batch_size
        world = trainer.world_size
        if not size:
            return 0, "", (1, False, world)
        limit = trainer.limit_train_batches
        interval = trainer.val_check_interval
        validates = isinstance(interval, int) and trainer.check_val_every_n_epoch is not None
        need = max(1, interval) if validates and trainer.limit_val_batches else 1
        batches = need
        if isinstance(limit, float) and 0 < limit < 1:
            batches = math.ceil(need / limit)
            while int(batches * limit) < need:  # as Lightning counts them (1/161: 161 * limit rounds below 1)
                batches += 1
        what = f"{batches} batch(es) of up to {size} per rank" + (" with drop_last" if loader.drop_last else "")
        if batches > 1:
            what += f" (limit_train_batches={limit}, val_check_interval={interval})"
        return batches, what + (f" on {world} ranks" if world > 1 else ""), (size, bool(loader.drop_last), world)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # LBFGS evaluates its closure (training_step) several times per batch: several calls per step are expected.
        self._closure_repeats = any(isinstance(opt, torch.optim.LBFGS) for opt in trainer.optimizers)
        if self._sampler is None or self.keep_steps:  # keep_steps: as many steps as on the full data
            return
        full_steps = trainer.estimated_stepping_batches
        if self._bounded_by_max_steps(trainer):
            return  # the run still ends at max_steps: shorter epochs only mean more of them
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            total = _scheduler_steps(sched)
            if config.interval != "step" or not isinstance(total, int) or self.prune_ratio == 0:
                continue
            if total >= 0.99 * full_steps:
                rank_zero_warn(
                    f"DataPruning: the step-interval LR scheduler {type(sched).__name__} is sized for {total} steps "
                    f"(the full data: ~{full_steps:.0f}), but pruned epochs are shorter, so it will not reach its "
                    "end. Use interval='epoch', or size it for fewer steps (e.g. OneCycleLR(total_steps=...) from the "
                    "data/kept_fraction of a first run)."
                )
                break

    def _bounded_by_max_steps(self, trainer: pl.Trainer) -> bool:
        """Whether ``max_steps`` ends the run even if every epoch keeps only ``1 - prune_ratio`` of the batches."""
        if trainer.max_steps < 0:
            return False
        epochs = trainer.max_epochs
        if epochs is None or epochs < 0:
            return True
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return True
        # Lightning also steps on an epoch's last, partial accumulation.
        kept = max(math.ceil(batches * (1 - self.prune_ratio)), 1)
        per_epoch = math.ceil(kept / max(trainer.accumulate_grad_batches, 1))
        return epochs * per_epoch >= trainer.max_steps

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch's state was set where its loader was made (_make_sampler), restored there after a resume; the
        # buffers are created on the losses' device by the first record (no host sync per step).
        self._open(trainer.current_epoch)

    def _open(self, epoch: int) -> None:
        """Start recording ``epoch`` (nothing to do if it is already open, e.g. restored from a checkpoint)."""
        if self._open_epoch != epoch:
            self._buffers, self._batch_number, self._epoch_calls, self._epoch_seen = None, 0, 0, 0
            self._open_epoch, self._restored_open, self._in_flight = epoch, False, 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._sampler is None:
            return
        # Our own count of the batches drawn from this DataLoader iterator, not Lightning's batch_idx: after a
        # mid-epoch resume Lightning continues batch_idx while a non-resumable loader starts from its first batch.
        self._indices = self._sampler.batch_indices(self._batch_number)
        self._batch_number += 1
        self._weights = self._sampler.weights_of(self._indices)
        self._epoch_seen += len(self._indices)
        self._in_flight = len(self._indices)
        self._batch_calls = 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._indices = None
        self._weights = None
        self._in_flight = 0

    def _record(self, losses: torch.Tensor) -> None:
        assert self.scores is not None and self._indices is not None
        device = losses.device
        if self._buffers is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
            self._buffers = tuple(torch.zeros(len(self.scores), dtype=dtype, device=device) for _ in range(3))
        if self._buffers[0].device != device:  # restored from a checkpoint on the CPU
            self._buffers = tuple(b.to(device) for b in self._buffers)
        sums, counts, bad = self._buffers
        idx = torch.tensor(self._indices, dtype=torch.long, device=device)
        values = losses.to(sums.dtype).reshape(-1)
        finite = torch.isfinite(values)
        ones = finite.to(sums.dtype)
        sums.index_add_(0, idx, torch.where(finite, values, torch.zeros_like(values)))
        counts.index_add_(0, idx, ones)
        bad.index_add_(0, idx, 1.0 - ones)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sampler is None or self.scores is None:
            return
        self._close_epoch(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A fit resumed from a checkpoint taken at the last batch of its last epoch ends at once: Lightning counts
        # that epoch as done and runs no end hook for it, and no later epoch's loader merges it (_make_sampler).
        if self._sampler is None or self.scores is None:
            return
        self._merge_restored(trainer, trainer.current_epoch, before=False)

    def _merge_restored(self, trainer: pl.Trainer, epoch: int, before: bool) -> None:
        """Restore the checkpoint's open epoch once ``epoch`` reaches it; merge it if it is over.

        Over: it is before ``epoch`` (``before``: the loader of a later epoch is being made), or the fit is ending.
        """
        pending = self._pending_epoch
        if pending is not None and int(pending.get("epoch", 0)) <= epoch:
            self._pending_epoch = None
            self._restore_open_epoch(pending)
        if self._restored_open and self._open_epoch is not None and (not before or self._open_epoch < epoch):
            self._close_epoch(trainer, None)

    def _close_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule | None) -> None:
        """Merge the open epoch's losses into the scores (all ranks: one collective) and account the epoch.

        From the epoch-end hook; or, with ``pl_module=None`` (nothing logged), when a run resumed from a checkpoint
        taken at an epoch's last batch: Lightning then counts that epoch as done and never calls its end hook.
        """
        assert self.scores is not None
        epoch = trainer.current_epoch if self._open_epoch is None else self._open_epoch
        sampler = self._sampler if self._sampler is not None and self._sampler.epoch == epoch else None
        plan = sampler.plan if sampler is not None else self.plan(epoch)
        kept = sampler.loaded if sampler is not None else plan.kept  # less what drop_last drops
        strategy = trainer.strategy
        if self._buffers is None:
            n = len(self.scores)
            self._buffers = tuple(torch.zeros(n, dtype=torch.float64, device=strategy.root_device) for _ in range(3))
        sums, counts, bad = self._buffers
        totals = torch.tensor([float(self._epoch_calls), float(self._epoch_seen)], dtype=torch.float64)
        if trainer.world_size > 1:  # one collective: every rank's scores reach every rank
            packed = torch.cat(
                [
                    sums.to(strategy.root_device),
                    counts.to(strategy.root_device),
                    bad.to(strategy.root_device),
                    totals.to(strategy.root_device),
                ]
            )
            packed = strategy.reduce(packed, reduce_op="sum").cpu()
            n = len(sums)
            sums, counts, bad, totals = packed[:n], packed[n : 2 * n], packed[2 * n : 3 * n], packed[3 * n :]
        else:
            sums, counts, bad = sums.cpu(), counts.cpu(), bad.cpu()
        calls, seen = int(totals[0]), int(totals[1])
        nonfinite = int(bad.sum())
        if nonfinite and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"reduce_sample_losses: {nonfinite} non-finite (NaN/inf) loss(es) in epoch {epoch}; "
                "those samples' scores are not updated and they stay in the training data (`losses` must be finite "
                "to be scored)."
            )
        if calls == 0 and self._first_epoch and pl_module is not None:
            raise InvalidArgumentError(
                "DataPruning: training_step never called reduce_sample_losses in the first epoch, so no sample was "
                "scored and nothing can be pruned. Compute one loss per sample and return "
                "`reduce_sample_losses(self, losses)` from training_step (or remove DataPruning)."
            )
        self._first_epoch = False
        self.scores.merge(sums, counts, bad)
        batches = self._batch_number
        self._buffers, self._open_epoch, self._epoch_calls, self._epoch_seen = None, None, 0, 0  # merged
        self._restored_open = False
        self.samples_seen += seen
        complete = pl_module is None or batches >= trainer.num_training_batches
        full = self._full_data_samples(trainer, None if complete else batches)
        self._step_bounded = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        self.history.append(
            {
                "epoch": epoch,
                "kept": kept,
                "planned": plan.kept,
                "total": len(self.scores),
                "pruned": plan.pruned,
                "seen": seen,
                "full": full,
                "full_per_batch": self._full_data_samples(trainer, 1),
                "batches": batches,
            }
        )
        score_mean = self.scores.mean()
        if pl_module is not None:
            # Equal on every rank: sync_dist=True (a mean of equal values) is what Lightning asks for at epoch level
            # under DDP, without its per-metric warning.
            # What the epoch loaded (less DDP's padding) over what an epoch on all the data loads under the same
            # limit_train_batches and drop_last: the share of the full data's steps a step-sized scheduler sees.
            fraction = min(seen, kept) / max(self._full_data_samples(trainer, None), 1)
            pl_module.log("data/kept_fraction", fraction, on_step=False, on_epoch=True, sync_dist=True)
            pl_module.log("data/samples_seen", float(self.samples_seen), on_step=False, on_epoch=True, sync_dist=True)
            if score_mean == score_mean:  # not NaN
                pl_module.log("data/score_mean", score_mean, on_step=False, on_epoch=True, sync_dist=True)
        log.debug("epoch %d: kept %d of %d, score mean %.4g", epoch, kept, len(self.scores), score_mean)
        add_report_section(trainer, "data", self.report_section())

    def report_section(self) -> dict[str, Any]:
        """The ``data`` section of the energy report: samples loaded vs. the full data's, per-epoch kept counts.

        ``samples_full_data`` is what training on all the data would have loaded in the same run: per epoch, the
        dataset under the Trainer's ``limit_train_batches``; for an epoch cut short (``max_steps``, a stop), and for
        every epoch of a run bounded by ``max_steps`` (where the full data would have run fewer epochs in as many
        steps), as many full batches as the epoch ran.
        """
        full = 0
        for h in self.history:
            per_epoch = int(h.get("full", h["total"]))
            if "batches" in h and self._step_bounded:
                per_epoch = min(per_epoch, int(h["batches"]) * int(h["full_per_batch"]))
            full += per_epoch
        seen = sum(int(h.get("seen", h["kept"])) for h in self.history)
        return {
            "method": "DataPruning (InfoBatch)",
            "prune_ratio": self.prune_ratio,
            "anneal_fraction": self.anneal_fraction,
            "epochs": len(self.history),
            "samples_seen": self.samples_seen,
            "samples_full_data": full,
            "samples_saved": max(full - seen, 0),
            "samples_ratio": (seen / full) if full else None,
            "training_samples": len(self.scores) if self.scores is not None else None,
            "kept_per_epoch": [h["kept"] for h in self.history],
        }

    def _full_data_samples(self, trainer: pl.Trainer, batches: int | None, padded: bool = False) -> int:
        """Samples an epoch on all the data loads under ``limit_train_batches`` (in ``batches`` batches, if given).

        ``padded``: as the ranks load a whole epoch, with the samples a ``DistributedSampler`` pads the shards with
        (what EnergyMonitor counts); else at most the dataset's samples.
        """
        assert self._sampler is not None and self.scores is not None
        n, world, size = len(self.scores), max(trainer.world_size, 1), self._sampler.batch_size
        per_rank = math.ceil(n / world)
        drop = self._sampler.batch_drop_last
        whole = per_rank // size if drop else math.ceil(per_rank / size)
        full_batches = whole
        limit = trainer.limit_train_batches
        if isinstance(limit, float):  # Lightning's reading: a float is a fraction (1.0 all), an int a count
            full_batches = int(full_batches * limit)
        elif isinstance(limit, int):
            full_batches = min(full_batches, limit)
        if batches is not None:
            full_batches = min(full_batches, batches)
        if padded and full_batches == whole:
            return (whole * size if drop else per_rank) * world
        return min(n, full_batches * size * world)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._setup_stage = None
        if stage == "fit":
            self._uninstall(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._uninstall(trainer)

    def _uninstall(self, trainer: pl.Trainer) -> None:
        self._trainer_ref = None  # no collective in a state_dict taken outside the fit (or after a failure)
        if self._undo is not None:
            self._undo()
            self._undo = None
        if self._reload_before is not None:
            trainer.reload_dataloaders_every_n_epochs = self._reload_before
            self._reload_before = None
        self._sampler = None
        self._indices = None
        self._weights = None

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        scores = self.scores.state_dict() if self.scores is not None else self._pending_state
        return {
            "version": 1,
            "seed": self._draw_seed,
            "scores": scores,
            "history": [dict(h) for h in self.history],
            "samples_seen": self.samples_seen,
            "open_epoch": self._open_epoch_state(),
        }

    def _batch_in_flight(self) -> bool:
        """Whether the batch begun last did not finish training (a checkpoint from ``on_exception``).

        Lightning counts a batch as processed after its optimizer step, before any ``on_train_batch_end``: a
        checkpoint another callback saves there (listed before this one) holds a batch that trained. Read from
        the fit loop's batch progress (``ready`` vs ``processed``; Lightning 2.x's trackers, pinned <3, as the
        checkpoint layout read in ``on_load_checkpoint``); without a Trainer, from this callback's hooks.
        """
        if not self._in_flight:
            return False
        trainer = self._fit_trainer() if self._fit_trainer is not None else None
        if trainer is None:
            return True
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        return bool(current.ready > current.processed)

    def _open_epoch_state(self) -> dict[str, Any] | None:
        """The losses recorded so far in an epoch not yet merged (a checkpoint mid-epoch or at validation end).

        Plain lists over every rank's samples: under DDP this sums the ranks' records (one collective; Lightning
        builds a checkpoint on every rank, ``Trainer.save_checkpoint`` is itself collective), and the resumed run
        merges them once, from rank 0.
        """
        # A batch still in flight (a checkpoint from on_exception, e.g. OnExceptionCheckpoint) did not train: it is
        # not counted, so the resumed run draws it again (Lightning re-runs it too).
        in_flight = self._batch_in_flight()
        batches = self._batch_number - int(in_flight)
        if self._open_epoch is None or not batches or self.scores is None:
            return None  # the same on every rank: batches run in lockstep
        n = len(self.scores)
        if self._buffers is not None:
            sums, counts, bad = (b.detach().cpu().to(torch.float64) for b in self._buffers)
        else:
            sums, counts, bad = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
        seen = self._epoch_seen - (self._in_flight if in_flight else 0)
        totals = torch.tensor([float(self._epoch_calls), float(seen)], dtype=torch.float64)
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is not None and trainer.world_size > 1:
            strategy = trainer.strategy
            packed = torch.cat([sums, counts, bad, totals]).to(strategy.root_device)
            packed = strategy.reduce(packed, reduce_op="sum").cpu()
            sums, counts, bad, totals = packed[:n], packed[n : 2 * n], packed[2 * n : 3 * n], packed[3 * n :]
        idx = torch.nonzero((counts > 0) | (bad > 0)).flatten()
        sampler = self._sampler if self._sampler is not None and self._sampler.epoch == self._open_epoch else None
        return {
            "epoch": self._open_epoch,
            "pruned": None if sampler is None else bool(sampler.plan.pruned),
            "calls": int(totals[0]),
            "seen": int(totals[1]),
            "batches": batches,
            # The geometry the batches were counted in: a resume inside the epoch needs the same (see on_fit_start).
            "world_size": 1 if trainer is None else int(trainer.world_size),
            "epoch_batches": None if sampler is None else _batches_run(trainer, sampler),
            "first": self._first_epoch,
            "index": idx.tolist(),
            "sums": sums[idx].tolist(),
            "counts": counts[idx].tolist(),
            "bad": bad[idx].tolist(),
        }

    def _restore_open_epoch(self, pending: dict[str, Any]) -> None:
        assert self.scores is not None
        self._first_epoch = bool(pending.get("first", False))
        self._open_epoch, self._restored_open = int(pending["epoch"]), True
        pruned = pending.get("pruned")
        self._restored_plan = None if pruned is None else (self._open_epoch, bool(pruned))
        self._batch_number = int(pending.get("batches", 0))  # the same on every rank
        self._buffers, self._epoch_calls, self._epoch_seen = None, 0, 0
        if self._rank != 0:  # the checkpoint holds every rank's part of the epoch: merged once, from rank 0
            return
        n = len(self.scores)
        buffers = tuple(torch.zeros(n, dtype=torch.float64) for _ in range(3))
        index = torch.tensor(pending.get("index", []), dtype=torch.long)
        if len(index) and int(index.max()) >= n:
            raise InvalidArgumentError(
                f"DataPruning: the checkpoint scores sample {int(index.max())}, the training set has {n}; resume with "
                "the same training set."
            )
        for buffer, key in zip(buffers, ("sums", "counts", "bad"), strict=True):
            buffer[index] = torch.tensor(pending.get(key, []), dtype=torch.float64)
        self._buffers = buffers
        self._epoch_calls = int(pending.get("calls", 0))
        self._epoch_seen = int(pending.get("seen", 0))

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A checkpoint saved at the last batch of an epoch (ModelCheckpoint(every_n_train_steps=...) landing on it):
        # on resume Lightning counts that epoch as done, then takes the next epoch as already under way when its
        # batch counter is below the *next* loader's length (training_epoch_loop.reset: `completed >=
        # num_training_batches`), true of every epoch with the same length. Pruned epochs differ in length, so a
        # longer next epoch would run only its last batches. (Lightning calls no on_train_epoch_start for the epoch
        # after such a checkpoint, whatever the lengths: the sampler's state is set where its loader is made.) The
        # epoch's own counters ("current") are made to read as an epoch run to its end, whatever the next length;
        # Lightning then resets them to zero for the next epoch, as it does for equal lengths.
        progress = last_batch_progress(checkpoint) if self._setup_stage in (None, "fit") else None
        if progress is not None:
            progress["current"] = {k: _EPOCH_RUN_OUT for k in progress["current"]}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the restore (load_state_dict), before any batch: a resume inside an epoch continues each rank's shard
        # after the batches it ran; the kept samples are dealt to the processes in turn, so under another number of
        # processes those shards are other samples (some trained twice in the epoch, others never).
        pending = self._pending_epoch
        if pending is None or pending.get("world_size") is None or pending.get("epoch_batches") is None:
            return
        world, done, total = int(pending["world_size"]), int(pending.get("batches", 0)), int(pending["epoch_batches"])
        if world == trainer.world_size or not 0 < done < total:
            return
        raise InvalidArgumentError(
            f"DataPruning: the checkpoint was saved after batch {done} of {total} of epoch {int(pending['epoch'])} on "
            f"{world} process(es), and this run has {trainer.world_size}; resuming inside that epoch would train some "
            f"of its samples twice and skip others (its kept samples are dealt to the processes in turn). Resume on "
            f"{world} process(es) (Trainer devices x num_nodes), or from a checkpoint saved at an epoch's end."
        )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=1)
        if self._setup_stage not in (None, "fit"):  # validate/test/predict(ckpt_path=...): nothing of a fit to resume
            return
        # The per-epoch draws derive from (seed, epoch): with the seed and the scores restored, a resumed run plans
        # exactly the epochs the interrupted one would have.
        self._draw_seed = int(state_dict.get("seed", self._draw_seed))
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.samples_seen = int(state_dict.get("samples_seen", 0))
        self._pending_state = state_dict.get("scores")
        self._first_epoch = False
        self._pending_epoch = state_dict.get("open_epoch")
        if self.scores is not None and self._pending_state is not None:
            self.scores.load_state_dict(self._pending_state)
            self._pending_state = None


def _batches_run(trainer: pl.Trainer | None, sampler: PruningSampler) -> int:
    """Batches an epoch of ``sampler`` runs on each rank: its own, or fewer under ``limit_train_batches``."""
    limit = getattr(trainer, "num_training_batches", math.inf) if trainer is not None else math.inf
    return int(min(sampler.num_batches, limit)) if math.isfinite(limit) else int(sampler.num_batches)


def _scheduler_steps(sched: Any) -> int | None:
    """The steps a step-interval LR scheduler is sized for, where it says (``None`` where it does not).

    ``OneCycleLR.total_steps``, ``CosineAnnealingLR.T_max``, ``LinearLR``/``PolynomialLR``/``ConstantLR.total_iters``,
    and a ``LambdaLR`` of ``functools.partial`` functions with a ``num_training_steps`` keyword (Hugging Face's
    ``get_linear_schedule_with_warmup`` and its siblings).

    Example:
        >>> import functools, torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> _scheduler_steps(torch.optim.lr_scheduler.LinearLR(opt, total_iters=40))
        40
        >>> lam = functools.partial(lambda step, num_training_steps: 1.0, num_training_steps=90)
        >>> _scheduler_steps(torch.optim.lr_scheduler.LambdaLR(opt, lam)), _scheduler_steps(object())
        (90, None)
    """
    for name in ("total_steps", "T_max", "total_iters"):
        total = getattr(sched, name, None)
        if isinstance(total, int) and not isinstance(total, bool):
            return total
    lambdas = getattr(sched, "lr_lambdas", None)
    if isinstance(lambdas, (list, tuple)):
        for fn in lambdas:
            total = getattr(fn, "keywords", {}).get("num_training_steps") if isinstance(fn, functools.partial) else None
            if isinstance(total, int) and not isinstance(total, bool):
                return total
    return None
