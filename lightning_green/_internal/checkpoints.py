"""What a Lightning checkpoint says about where the fit stopped (its loops' progress). Not public API."""

from __future__ import annotations

from typing import Any

__all__ = ["last_batch_progress"]


def last_batch_progress(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The epoch's batch progress of a checkpoint saved at an epoch's last batch, before the epoch's end; else ``None``.

    Such a checkpoint comes from ``on_train_batch_end`` (``ModelCheckpoint(every_n_train_steps=...)`` landing on the
    last batch): the batch is processed but not yet counted as completed. On resume Lightning counts that epoch as
    done and calls no ``on_train_epoch_end`` for it. Lightning 2.4-2.6's layout
    (``loops.fit_loop["epoch_loop.batch_progress"]``, pinned <3); anything else gives ``None``.

    Example:
        >>> progress = {"is_last_batch": True, "total": {"processed": 8, "completed": 7}, "current": {}}
        >>> last_batch_progress({"loops": {"fit_loop": {"epoch_loop.batch_progress": progress}}}) is progress
        True
        >>> progress["total"]["completed"] = 8  # saved at the epoch's end: Lightning ended the epoch itself
        >>> last_batch_progress({"loops": {"fit_loop": {"epoch_loop.batch_progress": progress}}}) is None
        True
    """
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = fit_loop.get("epoch_loop.batch_progress") if isinstance(fit_loop, dict) else None
    if not isinstance(progress, dict) or not progress.get("is_last_batch"):
        return None
    total, current = progress.get("total"), progress.get("current")
    if not isinstance(total, dict) or not isinstance(current, dict):
        return None
    return progress if total.get("completed") == total.get("processed", 0) - 1 else None
