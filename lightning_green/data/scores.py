"""Per-sample scores and the InfoBatch epoch plan: which samples an epoch keeps and with what loss weight.

No Lightning import: this is the arithmetic of data pruning, unit-testable on its own.

The rule (InfoBatch, Qin et al., ICLR 2024): a sample whose last score (its loss when last seen) is below the mean
of all scores is *well learned*; each epoch, every well-learned sample is skipped with probability ``prune_ratio``
and, when kept, weighs ``1 / (1 - prune_ratio)``, so the expected sum of the kept samples' weighted gradients equals
the full data's. Samples never scored (or whose last loss was not finite) are always kept with weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["EpochPlan", "SampleScores", "plan_epoch"]


class SampleScores:
    """The last finite loss of every sample of a map-style dataset; ``NaN`` marks "never scored".

    Args:
        num_samples: Length of the dataset.

    Example:
        >>> s = SampleScores(4)
        >>> s.update(torch.tensor([0, 2]), torch.tensor([0.5, float("nan")]))
        1
        >>> s.scored_count, round(s.mean(), 2)
        (1, 0.5)
    """

    def __init__(self, num_samples: int) -> None:
        self.values = torch.full((int(num_samples),), float("nan"), dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def scored_count(self) -> int:
        """Samples with a score."""
        return int(torch.isfinite(self.values).sum())

    def mean(self) -> float:
        """Mean score of the scored samples (``nan`` when none is)."""
        finite = self.values[torch.isfinite(self.values)]
        return float(finite.mean()) if len(finite) else float("nan")

    def update(self, indices: torch.Tensor, losses: torch.Tensor) -> int:
        """Set the scores of ``indices`` to ``losses``; a non-finite loss un-scores its sample (kept next epoch).

        Returns the number of non-finite losses.
        """
        losses = losses.detach().to("cpu", torch.float64).reshape(-1)
        indices = indices.to("cpu", torch.long).reshape(-1)
        self.values[indices] = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("nan")))
        return int((~torch.isfinite(losses)).sum())

    def merge(self, sums: torch.Tensor, counts: torch.Tensor, bad: torch.Tensor) -> None:
        """Apply one epoch's updates gathered over ranks (per sample: sum and count of finite losses, non-finite count).

        A sample seen with finite losses scores their mean; one seen only with non-finite losses is un-scored.

        Example:
            >>> s = SampleScores(3)
            >>> s.merge(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2, 0, 0]), torch.tensor([0, 1, 0]))
            >>> s.values.tolist()[0], s.scored_count
            (0.5, 1)
        """
        sums, counts, bad = sums.cpu().to(torch.float64), counts.cpu(), bad.cpu()
        seen = counts > 0
        self.values[seen] = sums[seen] / counts[seen]
        self.values[(bad > 0) & ~seen] = float("nan")

    def state_dict(self) -> dict[str, Any]:
        """Plain data (a list of floats, ``nan`` for unscored)."""
        return {"values": self.values.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        values = torch.tensor(state.get("values", []), dtype=torch.float64)
        if len(values) != len(self.values):
            raise ValueError(
                f"SampleScores: the checkpoint scores {len(values)} samples, the dataset has {len(self.values)}; "
                "resume with the same training set."
            )
        self.values = values


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's kept samples and their loss weights.

    Attributes:
        epoch: The epoch planned.
        order: Kept sample indices in the order the epoch visits them (all ranks, before sharding; an unshuffled
            pruned epoch under ``drop_last`` starts at ``offset``).
        weights: Loss weight of every sample of the dataset (0 for skipped ones).
        pruned: Whether the epoch prunes (False during warm-up with no scores and the annealing epochs).
        offset: Where a loader that drops its last incomplete batch starts the kept ``order`` of an unshuffled pruned
            epoch (a draw, so that it is not always the same samples at the end of the order that fall off; 0 when
            shuffled or not pruned).
    """

    epoch: int
    order: torch.Tensor
    weights: torch.Tensor
    pruned: bool
    offset: int = 0

    @property
    def kept(self) -> int:
        """Samples kept."""
        return len(self.order)

    @property
    def kept_fraction(self) -> float:
        """Samples kept / dataset length."""
        return self.kept / max(len(self.weights), 1)


def plan_epoch(
    scores: SampleScores,
    prune_ratio: float,
    epoch: int,
    seed: int,
    shuffle: bool,
    full_data: bool = False,
) -> EpochPlan:
    """The kept samples and weights of ``epoch``: a pure function of the scores, the seed and the epoch.

    The random draws come from a generator seeded with ``(seed, epoch)``, so every rank — and a resumed run —
    plans the same epoch identically.

    Example:
        >>> s = SampleScores(6)
        >>> s.update(torch.arange(6), torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0]))
        0
        >>> plan = plan_epoch(s, prune_ratio=0.5, epoch=3, seed=0, shuffle=False)
        >>> set(plan.order.tolist()) >= {3, 4, 5}, sorted(set(plan.weights.tolist()) - {0.0})
        (True, [1.0, 2.0])
    """
    n = len(scores)
    gen = torch.Generator().manual_seed(_mix(seed, epoch))
    draws = torch.rand(n, generator=gen, dtype=torch.float64)
    weights = torch.ones(n, dtype=torch.float64)
    pruned = False
    if not full_data and prune_ratio > 0 and scores.scored_count > 0:
        finite = torch.isfinite(scores.values)
        well_learned = finite & (scores.values < scores.mean())
        skip = well_learned & (draws < prune_ratio)
        weights[well_learned] = 1.0 / (1.0 - prune_ratio)
        weights[skip] = 0.0
        pruned = True
    order = torch.nonzero(weights > 0).reshape(-1)
    offset = 0
    if shuffle:
        order = order[torch.randperm(len(order), generator=gen)]
    elif pruned and len(order):
        offset = int(torch.randint(len(order), (1,), generator=gen))
    return EpochPlan(epoch=epoch, order=order, weights=weights, pruned=pruned, offset=offset)


def _mix(seed: int, epoch: int) -> int:
    """One 63-bit generator seed from the run's seed and the epoch."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


def annealing_start(max_epochs: int | None, anneal_fraction: float) -> int | None:
    """First epoch (0-based) of the full-data annealing, ``None`` when ``max_epochs`` is unknown.

    The annealing epochs are the whole epochs that lie within the last ``anneal_fraction`` of ``max_epochs`` (at least
    the last epoch when ``anneal_fraction > 0``): 15 epochs at 0.125 anneal 1 epoch (1.875 rounded down), not 2
    (13 %, more than asked). InfoBatch itself prunes while the epoch is <= ``delta * num_epochs``, which anneals
    ``floor`` of the fraction or one epoch fewer.

    Example:
        >>> annealing_start(16, 0.125), annealing_start(15, 0.125), annealing_start(4, 0.125), annealing_start(10, 0.0)
        (14, 14, 3, 10)
        >>> annealing_start(None, 0.1) is None
        True
    """
    if max_epochs is None or max_epochs < 0:
        return None
    epochs = math.floor(max_epochs * anneal_fraction + 1e-9)
    if anneal_fraction > 0:
        epochs = max(epochs, min(1, max_epochs))
    return max_epochs - epochs
