"""The pruning sampler: yields only the kept samples of an epoch, sharded over ranks, and knows each batch's indices.

A :class:`~torch.utils.data.DistributedSampler` subclass, so Lightning's ``use_distributed_sampler`` leaves it in
place under DDP (it shards itself). Skipped samples are never yielded, so never loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DistributedSampler

from lightning_green.data.scores import EpochPlan

__all__ = ["PruningSampler", "epoch_batches"]


def _batches(n: int, size: int, drop_last: bool) -> int:
    return n // size if drop_last else math.ceil(n / size)


def _keep_steps_batch_size(shard: int, full_shard: int, batch_size: int, drop_last: bool) -> int:
    """The batch size of a pruned ``keep_steps`` epoch (see :attr:`PruningSampler.epoch_batch_size`)."""
    full = _batches(full_shard, batch_size, drop_last)
    if not full or not shard:
        return batch_size
    if drop_last and shard >= full and shard // (shard // full) == full:
        return min(batch_size, shard // full)
    return max(1, min(batch_size, math.ceil(shard / full)))


def epoch_batches(
    kept: int, total: int, batch_size: int, drop_last: bool = False, num_replicas: int = 1, keep_steps: bool = False
) -> int:
    """Batches each rank runs in a pruned epoch that keeps ``kept`` of ``total`` samples (as :class:`PruningSampler`).

    Example:
        >>> epoch_batches(20, 40, 4), epoch_batches(20, 40, 4, keep_steps=True), epoch_batches(30, 40, 4, True, 2)
        (5, 10, 3)
    """
    shard = math.ceil(kept / num_replicas)
    size = batch_size
    if keep_steps:
        size = _keep_steps_batch_size(shard, math.ceil(total / num_replicas), batch_size, drop_last)
    return _batches(shard, size, drop_last)


class PruningSampler(DistributedSampler):
    """The kept samples of each epoch, this rank's shard, every rank the same length.

    The epoch's plan comes from ``planner(epoch)`` (a pure function of the scores, seed and epoch, see
    :func:`~lightning_green.data.scores.plan_epoch`), fetched once per epoch and cached, so ``len()``, iteration
    and :meth:`batch_indices` agree however often the DataLoader is re-created or its workers prefetch. The kept
    order is padded (repeating its start) to a multiple of ``num_replicas`` and dealt round-robin, so shards are
    disjoint apart from the padding and all ranks run the same number of batches.

    Args:
        num_samples_total: Length of the dataset.
        planner: ``epoch -> EpochPlan``.
        batch_size: The DataLoader's batch size (maps a batch number to its sample indices).
        drop_last: Whether the DataLoader drops the last incomplete batch.
        num_replicas: World size.
        rank: This process's global rank.
        keep_steps: Keep the full data's number of batches per epoch and shrink the batches instead
            (:attr:`epoch_batch_size`); else the batches keep ``batch_size`` and an epoch has fewer of them.

    Example:
        >>> from lightning_green.data.scores import SampleScores, plan_epoch
        >>> scores = SampleScores(10)
        >>> s = PruningSampler(10, lambda e: plan_epoch(scores, 0.5, e, seed=0, shuffle=False), batch_size=4,
        ...                    num_replicas=2, rank=1)
        >>> list(s), len(s), s.batch_indices(1)
        ([1, 3, 5, 7, 9], 5, [9])
    """

    def __init__(
        self,
        num_samples_total: int,
        planner: Callable[[int], EpochPlan],
        batch_size: int,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        keep_steps: bool = False,
    ) -> None:
        # DistributedSampler's constructor only needs a sized dataset; ours is replaced by the plan.
        super().__init__(range(num_samples_total), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.planner = planner
        self.batch_size = int(batch_size)
        self.batch_drop_last = bool(drop_last)
        self.keep_steps = bool(keep_steps)
        self._batch_size_in_use: int | None = None
        self._plan: EpochPlan | None = None
        self._shard: list[int] = []
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this at every epoch start)."""
        if epoch != self.epoch:
            self._plan = None
        super().set_epoch(epoch)

    @property
    def plan(self) -> EpochPlan:
        """This epoch's plan (fetched on first use)."""
        if self._plan is None or self._plan.epoch != self.epoch:
            self._plan = self.planner(self.epoch)
            order = self._plan.order.tolist()
            if self.batch_drop_last and self._plan.offset:
                # Unshuffled: the loader drops the end of each shard, which would be the same samples every pruned
                # epoch (hard ones among them, which the rule always keeps); start the order at the plan's draw.
                at = self._plan.offset % len(order)
                order = order[at:] + order[:at]
            total = math.ceil(len(order) / self.num_replicas) * self.num_replicas if order else 0
            padded = (order * math.ceil(total / len(order)))[:total] if order else []
            self._shard = padded[self.rank : total : self.num_replicas]
        return self._plan

    @property
    def shard(self) -> list[int]:
        """This rank's indices this epoch, in order."""
        _ = self.plan
        return self._shard

    def skip_batches(self, batches: int) -> None:
        """Start this epoch's iteration after its first ``batches`` batches (a run resumed inside the epoch).

        ``len()`` and :meth:`batch_indices` stay those of the whole epoch, as Lightning counts a resumed epoch's
        batches from where it stopped.
        """
        self._skip = max(int(batches), 0)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.shard[self._skip * self.epoch_batch_size :]))

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def epoch_batch_size(self) -> int:
        """This epoch's batch size: the DataLoader's once :meth:`use_batch_size` said it, else the planned one.

        Planned: ``batch_size``, or with ``keep_steps`` on a pruned epoch the size that gives the full data's number of
        batches: ``ceil(kept shard / full-data batches)`` (with ``drop_last``: ``kept shard // full-data batches``
        where that gives exactly as many), never more than ``batch_size``. The epoch then has as many batches as on
        all the data, or a few fewer when the batches get small (no size gives exactly as many), never more.
        """
        if self._batch_size_in_use is not None:
            return self._batch_size_in_use
        if not self.keep_steps or not self.plan.pruned:
            return self.batch_size
        full_shard = math.ceil(len(self.dataset) / self.num_replicas)  # type: ignore[arg-type]
        return _keep_steps_batch_size(len(self.shard), full_shard, self.batch_size, self.batch_drop_last)

    def use_batch_size(self, size: int) -> None:
        """Record the batch size of the DataLoader this sampler was put in (what :meth:`batch_indices` maps with)."""
        self._batch_size_in_use = int(size)

    @property
    def num_batches(self) -> int:
        """Batches this rank runs this epoch."""
        return _batches(len(self.shard), self.epoch_batch_size, self.batch_drop_last)

    @property
    def loaded(self) -> int:
        """Samples this epoch loads over all ranks: the kept ones, less what ``drop_last`` drops (at most)."""
        kept = self.plan.kept
        if not self.batch_drop_last:
            return kept
        return min(kept, self.num_batches * self.epoch_batch_size * self.num_replicas)

    def batch_indices(self, batch_idx: int) -> list[int]:
        """Dataset indices of the ``batch_idx``-th batch of this epoch on this rank."""
        size = self.epoch_batch_size
        return self.shard[batch_idx * size : (batch_idx + 1) * size]

    def weights_of(self, indices: list[int]) -> torch.Tensor:
        """Loss weights of ``indices`` this epoch.

        With ``keep_steps`` they are the plan's weights times its kept fraction: a batch's weighted mean then has the
        full data's mean gradient as its expectation (without the factor it would be ``1 / kept fraction`` times it,
        which is right only when the epoch has that many fewer steps).
        """
        weights = self.plan.weights[torch.tensor(indices, dtype=torch.long)]
        return weights * self.plan.kept_fraction if self.keep_steps else weights
