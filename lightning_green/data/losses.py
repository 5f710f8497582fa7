"""``reduce_sample_losses``: the one line a user's ``training_step`` calls to train with :class:`DataPruning`.

``sequence_losses`` gives the per-sample losses of a (Hugging Face style) causal language model to pass it.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from lightning_green._internal.validation import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    check_bool,
    check_number,
)

__all__ = ["reduce_sample_losses", "sequence_losses"]


def reduce_sample_losses(module: Any, losses: torch.Tensor) -> torch.Tensor:
    """The scalar loss to optimise from one loss per sample of the batch.

    Under a :class:`~lightning_green.DataPruning` callback during training: the mean of ``losses`` weighted by each
    sample's weight this epoch (``1 / (1 - prune_ratio)`` for the kept well-learned samples, else 1; with
    ``keep_steps`` both times the epoch's kept fraction), and the detached losses are recorded as the samples' scores.
    Anywhere else (no DataPruning, validation, a module outside a Trainer): the plain mean.

    Args:
        module: The ``LightningModule`` whose ``training_step`` calls this (``self``).
        losses: One loss per sample, shape ``(batch_size,)``, e.g. ``F.cross_entropy(..., reduction="none")``;
            for sequences, the token losses averaged per sequence. In the order of the batch's samples as the
            sampler drew them (the DataLoader's order): a ``collate_fn`` that reorders a batch (e.g. sorting by length
            for ``pack_padded_sequence``) must have ``training_step`` put the losses back in that order, or the
            scores go to the wrong samples.

    Raises:
        TypeError: ``losses`` is not a floating-point tensor.
        ValueError: ``losses`` is a scalar, not 1-D or empty; under DataPruning, its length is not the batch's.

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
    if not losses.is_floating_point():
        raise InvalidArgumentTypeError(
            f"reduce_sample_losses(losses of dtype {losses.dtype}): `losses` must be floating point (losses with a "
            "gradient), one per sample."
        )
    if len(losses) == 0:
        raise InvalidArgumentError(
            "reduce_sample_losses(losses of shape (0,)): `losses` must hold one loss per sample of a non-empty batch."
        )
    pruning = active_data_pruning(module)
    if pruning is None:
        return losses.mean()
    return pruning.reduce(losses)


def sequence_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    shift: bool = True,
) -> torch.Tensor:
    """One next-token loss per sequence: the mean cross-entropy over its predicted tokens, for ``reduce_sample_losses``.

    This is what a Hugging Face causal LM's ``loss`` averages over the whole batch, kept per sequence (in fp32):
    with ``shift`` (the default, as ``labels`` are passed to an HF model) position ``t``'s logits predict
    ``labels[:, t + 1]``; without it they predict ``labels[:, t]``. Tokens labelled ``ignore_index`` or masked out by
    ``attention_mask`` (0) are not predicted. A sequence with no predicted token gets 0 (nothing to learn, so
    DataPruning may skip it). Each sequence counts once in ``reduce_sample_losses``' mean, whatever its number of
    predicted tokens, where the HF ``loss`` is a mean over all of the batch's tokens: the two are the same when every
    sequence predicts as many tokens (no padding, no ``ignore_index`` labels).

    Args:
        logits: ``(batch, time, vocab)`` scores, e.g. ``model(**batch).logits``.
        labels: ``(batch, time)`` integer targets (often the ``input_ids``).
        attention_mask: ``(batch, time)``, 0 where padding; ``None``: every token counts.
        ignore_index: Label value that is not predicted (HF's ``-100``).
        shift: Whether ``labels`` are the inputs (HF convention, shifted here) or already the next tokens.

    Raises:
        TypeError: ``logits``/``labels``/``attention_mask`` is not a tensor, ``ignore_index`` not an integer or
            ``shift`` not a bool.
        ValueError: The shapes do not match ``(batch, time, vocab)`` and ``(batch, time)``, ``logits`` are not
            floating point, or ``labels`` are not integer token ids; a label outside ``[0, vocab)`` other than
            ``ignore_index`` where torch reports it at once (on CPU; on CUDA it is torch's device-side assert, as
            with ``F.cross_entropy``: no host sync is added to check it).

    Example:
        >>> logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: ln 4 per predicted token
        >>> labels = torch.tensor([[1, 2, 3], [1, -100, -100]])
        >>> sequence_losses(logits, labels).tolist()  # the second sequence predicts nothing
        [1.3862943649291992, 0.0]
    """
    name = "sequence_losses"
    for arg, value in (("logits", logits), ("labels", labels), ("attention_mask", attention_mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise InvalidArgumentTypeError(f"{name}({arg}={type(value).__name__}): `{arg}` must be a tensor.")
    if isinstance(ignore_index, numbers.Integral) and not isinstance(ignore_index, bool):
        ignore_index = int(ignore_index)  # e.g. a NumPy integer read from a tokenizer's config
    check_number(name, "ignore_index", ignore_index, integer=True)
    check_bool(name, "shift", shift)
    if logits.dim() != 3 or not logits.is_floating_point():
        raise InvalidArgumentError(
            f"{name}(logits of shape {tuple(logits.shape)}, dtype {logits.dtype}): `logits` must be floating-point "
            "scores of shape (batch, time, vocab)."
        )
    if (
        labels.shape != logits.shape[:2]
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise InvalidArgumentError(
            f"{name}(labels of shape {tuple(labels.shape)}, dtype {labels.dtype}): `labels` must be integer token ids "
            f"of shape (batch, time) = {tuple(logits.shape[:2])}, the logits' first two dimensions."
        )
    if attention_mask is not None and attention_mask.shape != labels.shape:
        raise InvalidArgumentError(
            f"{name}(attention_mask of shape {tuple(attention_mask.shape)}): `attention_mask` must have the labels' "
            f"shape {tuple(labels.shape)}, or be None."
        )
    labels = labels.to(device=logits.device, dtype=torch.long)  # a model split over devices: logits on the last one
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask.to(logits.device) == 0, ignore_index)
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    try:
        token = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=ignore_index,
            reduction="none",
        ).view(labels.shape)
    except (IndexError, RuntimeError) as exc:
        # Checked by torch where it raises at once (CPU), not with a host sync of our own per step: on CUDA an
        # out-of-range label is a device-side assert, as in torch's own cross_entropy.
        if isinstance(exc, RuntimeError) and "out of bounds" not in str(exc):
            raise
        raise _label_range_error(name, labels, logits.shape[-1], ignore_index, exc) from exc
    counts = (labels != ignore_index).sum(dim=1)
    return token.sum(dim=1) / counts.clamp(min=1)


def _label_range_error(
    name: str, labels: torch.Tensor, vocab: int, ignore_index: int, exc: BaseException
) -> InvalidArgumentError:
    """The argument error for labels outside the vocabulary (built only once torch refused them)."""
    bad = labels[(labels != ignore_index) & ((labels < 0) | (labels >= vocab))].unique()
    shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.numel() > 5 else "")
    return InvalidArgumentError(
        f"{name}(labels with values {shown or '?'}): `labels` must be token ids in [0, {vocab}) (vocab: the logits' "
        f"last dimension) or ignore_index ({ignore_index}); torch: {str(exc).strip().splitlines()[0]}"
    )


def active_data_pruning(module: Any) -> Any:
    """The DataPruning callback of the module's Trainer while it trains, else ``None``.

    Training is the Trainer's stage, not the module's mode: a module kept in ``eval()`` mode while it trains (frozen
    BatchNorm statistics, no dropout) still trains on DataPruning's samples.
    """
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
