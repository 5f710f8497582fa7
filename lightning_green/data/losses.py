"""``reduce_sample_losses``: the one line a user's ``training_step`` calls to train with :class:`DataPruning`."""

from __future__ import annotations

from typing import Any

import torch

from lightning_green._internal.validation import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["reduce_sample_losses"]


def reduce_sample_losses(module: Any, losses: torch.Tensor) -> torch.Tensor:
    """The scalar loss to optimise from one loss per sample of the batch.

    Under a :class:`~lightning_green.DataPruning` callback during training: the mean of ``losses`` weighted by each
    sample's weight this epoch (``1 / (1 - prune_ratio)`` for the kept well-learned samples, else 1; with
    ``keep_steps`` both times the epoch's kept fraction), and the detached losses are recorded as the samples' scores.
    Anywhere else (no DataPruning, validation, a module outside a Trainer): the plain mean.

    Args:
        module: The ``LightningModule`` whose ``training_step`` calls this (``self``).
        losses: One loss per sample, shape ``(batch_size,)``, e.g. ``F.cross_entropy(..., reduction="none")``;
            for sequences, the token losses averaged per sequence.

    Raises:
        TypeError: ``losses`` is not a tensor.
        ValueError: ``losses`` is a scalar or not 1-D; under DataPruning, its length is not the batch's.

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> reduce_sample_losses(LightningModule(), torch.tensor([1.0, 2.0, 6.0]))
        tensor(3.)
    """
    if not isinstance(losses, torch.Tensor):
        raise InvalidArgumentTypeError(
            f"reduce_sample_losses(losses={type(losses).__name__}): `losses` must be a tensor with one loss per "
            "sample, shape (batch_size,)."
        )
    if losses.dim() != 1:
        hint = (
            " A scalar is an already reduced loss: compute it with reduction='none' (e.g. "
            "F.cross_entropy(logits, y, reduction='none')) and, for sequences, average the token losses per sample "
            "(loss.view(batch_size, -1).mean(dim=1))."
        )
        raise InvalidArgumentError(
            f"reduce_sample_losses(losses of shape {tuple(losses.shape)}): `losses` must be 1-D with one loss per "
            f"sample, shape (batch_size,).{hint if losses.dim() == 0 else ''}"
        )
    pruning = _active_data_pruning(module)
    if pruning is None:
        return losses.mean()
    return pruning.reduce(losses)


def _active_data_pruning(module: Any) -> Any:
    """The DataPruning callback of the module's Trainer while it trains, else ``None``."""
    if not getattr(module, "training", False):
        return None
    try:
        trainer = module.trainer
    except RuntimeError:  # a LightningModule not attached to a Trainer
        return None
    if trainer is None or not getattr(trainer, "training", False):
        return None
    from lightning_green.callbacks.data_pruning import DataPruning

    for cb in trainer.callbacks:
        if isinstance(cb, DataPruning) and cb.active:
            return cb
    return None
