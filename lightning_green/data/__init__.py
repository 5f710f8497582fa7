"""Data-efficient training: per-sample scores, the pruning sampler, ``reduce_sample_losses`` (no Trainer needed)."""

from lightning_green.data.losses import reduce_sample_losses, sequence_losses
from lightning_green.data.sampler import PruningSampler
from lightning_green.data.scores import EpochPlan, SampleScores, annealing_start, plan_epoch

__all__ = [
    "EpochPlan",
    "PruningSampler",
    "SampleScores",
    "annealing_start",
    "plan_epoch",
    "reduce_sample_losses",
    "sequence_losses",
]
