"""Torch-Pruning glue for :class:`~lightning_green.StructuredPruning`.

Importance registry, schedules, the pruning engine, optimizer-state carry-over by surviving index, pruning history
record/replay, the check of each prune (:func:`prune_verified`), and :func:`load_pruned` to rebuild a pruned model
from a checkpoint for inference; :class:`LLMPruner` cuts Hugging Face causal LMs on their known block structure.
"""

from lightning_green.pruning.engine import ChannelPruner, PruneResult
from lightning_green.pruning.graph import Lineage, build_graph, count_macs_params, pruning_session
from lightning_green.pruning.history import (
    LoadsPrunedCheckpoints,
    find_pruning_state,
    load_pruned,
    rebuild_from_checkpoint,
    replay,
)
from lightning_green.pruning.importance import IMPORTANCES, build_importance
from lightning_green.pruning.llm import LLMPruner, replay_llm
from lightning_green.pruning.optim import ModuleSnapshot, OptimizerState, rebuild_ddp
from lightning_green.pruning.schedule import SCHEDULES, macs_fraction, prune_points, schedule_fraction, step_ratio
from lightning_green.pruning.verify import Probe, VerifiedPrune, prune_verified, quiet_forward

__all__ = [
    "IMPORTANCES",
    "SCHEDULES",
    "ChannelPruner",
    "LLMPruner",
    "Lineage",
    "LoadsPrunedCheckpoints",
    "ModuleSnapshot",
    "OptimizerState",
    "Probe",
    "PruneResult",
    "VerifiedPrune",
    "build_graph",
    "build_importance",
    "count_macs_params",
    "find_pruning_state",
    "load_pruned",
    "macs_fraction",
    "prune_points",
    "prune_verified",
    "pruning_session",
    "quiet_forward",
    "rebuild_ddp",
    "rebuild_from_checkpoint",
    "replay",
    "replay_llm",
    "schedule_fraction",
    "step_ratio",
]
