"""Collective helpers over the Lightning strategy (public API only), safe on a single device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.strategies import Strategy

__all__ = ["agree", "any_rank", "gather_rows"]


def gather_rows(strategy: Strategy, row: Sequence[float], device: torch.device | None = None) -> list[list[float]]:
    """All-gather one row of floats from every rank: returns ``world_size`` rows, rank order.

    A single call, so it must be reached by every rank at the same point (like any collective).
    """
    t = torch.tensor(list(row), dtype=torch.float64, device=device or strategy.root_device)
    if strategy.world_size <= 1:
        return [t.tolist()]
    gathered = strategy.all_gather(t)
    if gathered.dim() == 1:  # a strategy that returns the local tensor unchanged
        gathered = gathered.unsqueeze(0)
    return gathered.cpu().tolist()


def agree(strategy: Strategy, decision: bool, all: bool = True) -> bool:  # noqa: A002 - mirrors Lightning's name
    """The same boolean on every rank: all ranks True (``all=True``) or any rank True (``all=False``)."""
    if strategy.world_size <= 1:
        return bool(decision)
    return bool(strategy.reduce_boolean_decision(bool(decision), all=all))


def any_rank(strategy: Strategy, flags: torch.Tensor) -> list[bool]:
    """For each entry of the boolean tensor ``flags``: whether it is True on any rank (one collective, one sync).

    Example:
        >>> from lightning.pytorch.strategies import SingleDeviceStrategy
        >>> any_rank(SingleDeviceStrategy("cpu"), torch.tensor([True, False]))
        [True, False]
    """
    counts = flags.to(torch.int32)
    if strategy.world_size > 1:
        counts = strategy.reduce(counts, reduce_op="sum")
    return [c > 0 for c in counts.tolist()]
