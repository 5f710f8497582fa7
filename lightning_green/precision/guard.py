"""Keeping low precision from poisoning a run: non-finite checks, the skip of a step, and the fallback counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightning_green.precision.modes import FP32

__all__ = ["BufferSnapshot", "FallbackTracker", "drop_grads", "grads_nonfinite", "nonfinite_flag", "optimizer_params"]


def optimizer_params(optimizer: Any) -> list[torch.Tensor]:
    """The parameters an optimizer (or a ``LightningOptimizer`` around one) updates."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def grads_nonfinite(params: Iterable[torch.Tensor]) -> bool:
    """Whether any gradient holds a NaN or an infinity (one device sync).

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> p.grad = torch.tensor([1.0, float("inf")])
        >>> grads_nonfinite([p])
        True
    """
    return bool(nonfinite_flag(params, torch.device("cpu")))


def nonfinite_flag(params: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-dim bool tensor on ``device``: whether any gradient holds a NaN or an infinity (no sync on its own)."""
    grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    flags = [torch.zeros((), dtype=torch.bool, device=device)]
    for tensors in by_device.values():
        # The max-norm propagates NaN and is inf for any inf: finite iff every element is.
        if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: one fused pass
            norm = torch.nn.utils.get_total_norm(tensors, norm_type=float("inf"))
        else:  # pragma: no cover - older torch
            norm = torch.stack([torch.linalg.vector_norm(g.float(), float("inf")) for g in tensors]).max()
        flags.append((~torch.isfinite(norm)).to(device))
    return torch.stack(flags).any()


def drop_grads(params: Iterable[torch.Tensor]) -> None:
    """Skip the coming update: optimizers leave a parameter whose ``.grad`` is ``None`` untouched.

    No step, no momentum and no weight decay is applied to it.
    """
    for p in params:
        p.grad = None


class BufferSnapshot:
    """A copy of a module's buffers (BatchNorm running statistics, ...) to undo a poisoned forward pass.

    A non-finite activation writes NaN into BatchNorm's running mean/variance during the forward pass, before any
    optimizer step could be skipped: restoring the copy taken at the start of the step undoes it.

    Example:
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> snap = BufferSnapshot(bn)
        >>> snap.take()
        >>> _ = bn(torch.tensor([[float("nan"), 1.0], [0.0, 2.0]]))
        >>> bool(bn.running_mean.isnan().any())
        True
        >>> snap.restore()
        >>> bn.running_mean.tolist()
        [0.0, 0.0]
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._copies: list[tuple[torch.Tensor, torch.Tensor]] = []

    def take(self) -> None:
        """Copy the current buffers (reusing the copies' storage from last time)."""
        buffers = list(self.module.buffers())
        if len(buffers) != len(self._copies) or any(
            b is not src or c.shape != b.shape for (src, c), b in zip(self._copies, buffers, strict=False)
        ):
            self._copies = [(b, b.detach().clone()) for b in buffers]
            return
        if self._copies:
            with torch.no_grad():  # one batched copy instead of a launch per buffer, every optimizer step
                torch._foreach_copy_([c for _, c in self._copies], [src for src, _ in self._copies])

    def restore(self) -> None:
        """Write the copies back."""
        if self._copies:
            with torch.no_grad():
                torch._foreach_copy_([src for src, _ in self._copies], [c for _, c in self._copies])


class FallbackTracker:
    """The fallback state machine: when to leave low precision, for how long, and when to give up on it.

    A *bad* step (non-finite loss, or non-finite gradients outside fp16) in low precision falls back to fp32 for
    ``cooldown_steps`` optimizer steps; in fp16, ``overflow_patience`` consecutive scaler overflows do the same.
    The ``max_fallbacks``-th fallback is final: fp32 for the rest of the run.

    Example:
        >>> t = FallbackTracker(overflow_patience=2, cooldown_steps=3, max_fallbacks=2)
        >>> t.record(step=10, mode="bf16-mixed", bad=True, overflow=False)
        'non-finite loss or gradients'
        >>> [t.forced_fp32(s) for s in (11, 13, 14)]
        [True, True, False]
        >>> t.record(step=20, mode="16-mixed", bad=False, overflow=True) is None
        True
        >>> t.record(step=21, mode="16-mixed", bad=False, overflow=True)
        '2 consecutive fp16 overflows'
        >>> t.locked, t.forced_fp32(10_000)
        (True, True)
    """

    def __init__(self, overflow_patience: int, cooldown_steps: int, max_fallbacks: int) -> None:
        self.overflow_patience = overflow_patience
        self.cooldown_steps = cooldown_steps
        self.max_fallbacks = max_fallbacks
        self.reset()

    def reset(self) -> None:
        """Forget every count (a new run)."""
        self.fallbacks = 0
        self.overflow_streak = 0
        self.overflows = 0
        self.skipped_steps = 0
        self.cooldown_until: int | None = None

    @property
    def locked(self) -> bool:
        """Whether low precision is given up for the rest of the run."""
        return self.fallbacks >= self.max_fallbacks

    def forced_fp32(self, step: int) -> bool:
        """Whether the step numbered ``step`` (``trainer.global_step`` before it) must run in fp32."""
        return self.locked or (self.cooldown_until is not None and step < self.cooldown_until)

    def record(self, step: int, mode: str, bad: bool, overflow: bool) -> str | None:
        """Account the optimizer step ``step`` taken in ``mode``; the cause if it triggers a fallback.

        ``bad``: the update is poisoned and is skipped (non-finite loss in any mode, non-finite gradients outside
        fp16). ``overflow``: fp16 gradients overflowed (the grad scaler skips that update itself).
        """
        if bad:
            self.skipped_steps += 1
            self.overflow_streak = 0
            if mode == FP32:
                return None
            return self._fall_back(step, "non-finite loss or gradients")
        if mode == "16-mixed" and overflow:
            self.overflows += 1
            self.overflow_streak += 1
            if self.overflow_streak >= self.overflow_patience:
                streak, self.overflow_streak = self.overflow_streak, 0
                return self._fall_back(step, f"{streak} consecutive fp16 overflows")
            return None
        self.overflow_streak = 0
        return None

    def _fall_back(self, step: int, cause: str) -> str:
        self.fallbacks += 1
        self.cooldown_until = step + 1 + self.cooldown_steps
        return cause

    def state_dict(self) -> dict[str, Any]:
        """Plain-type counters."""
        return {
            "fallbacks": self.fallbacks,
            "overflow_streak": self.overflow_streak,
            "overflows": self.overflows,
            "skipped_steps": self.skipped_steps,
            "cooldown_until": self.cooldown_until,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.fallbacks = int(state.get("fallbacks", 0))
        self.overflow_streak = int(state.get("overflow_streak", 0))
        self.overflows = int(state.get("overflows", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        until = state.get("cooldown_until")
        self.cooldown_until = None if until is None else int(until)
