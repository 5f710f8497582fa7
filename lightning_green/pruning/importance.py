"""The importance criteria of :class:`~lightning_green.StructuredPruning`, mapped onto torch-pruning's classes.

Every criterion scores whole *groups* of coupled channels (a conv's output channels together with the batch-norm
and the next layer's input channels they feed), so a channel is kept or removed everywhere at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch_pruning as tp

__all__ = ["IMPORTANCES", "NEEDS_BATCHNORM", "NEEDS_GRADIENTS", "build_importance"]

#: Name → factory of the torch-pruning importance estimator.
IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    # Group L1 / L2 norm of the weights (DepGraph's default criterion).
    "magnitude-l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "magnitude-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    # |w · ∂L/∂w|, first-order Taylor sensitivity (Molchanov et al. 2019), from gradients accumulated over a few
    # optimizer steps before the prune.
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    # |γ| of the batch-norm that follows a layer (network slimming, Liu et al. 2017).
    "bn-scale": lambda: tp.importance.BNScaleImportance(),
    # Layer-adaptive magnitude (Lee et al. 2021): comparable across layers, for global pruning.
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    # Uniformly random scores: the baseline every criterion should beat.
    "random": lambda: tp.importance.RandomImportance(),
}

#: Criteria that read ``.grad``.
NEEDS_GRADIENTS = frozenset({"taylor"})
#: Criteria that score only groups containing a batch-norm layer.
NEEDS_BATCHNORM = frozenset({"bn-scale"})


def build_importance(name: str) -> tp.importance.Importance:
    """A fresh torch-pruning importance estimator for ``name`` (one of :data:`IMPORTANCES`).

    Example:
        >>> type(build_importance("lamp")).__name__
        'LAMPImportance'
        >>> build_importance("magnitude-l1").p
        1

    Raises:
        ValueError: ``name`` is not a known criterion.
    """
    try:
        factory = IMPORTANCES[name]
    except KeyError:
        raise ValueError(f"unknown importance {name!r}; known: {tuple(IMPORTANCES)}") from None
    return factory()
