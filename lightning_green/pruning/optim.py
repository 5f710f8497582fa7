"""Optimizers and LR schedulers across a prune: rebuilt through the strategy, state carried by surviving index.

After a prune the old optimizer still holds the old, now detached parameters: keeping it trains nothing and
raises nothing. :class:`OptimizerState` captures the optimizer and scheduler state before the prune (keyed by
parameter *name*), lets the strategy re-run ``configure_optimizers`` on the pruned model, and writes the state
back: learning rates and other group settings as they were, scheduler state as it was, and every per-parameter
tensor (momentum, Adam's ``exp_avg``/``exp_avg_sq``) cut to the channels that survived, scalars (``step``) kept.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

__all__ = ["ModuleSnapshot", "OptimizerState", "rebuild_ddp"]

log = logging.getLogger(__name__)

#: ``carry(new_param, old_value)`` → the value cut to ``new_param``'s channels, or ``None`` if it cannot be.
Carry = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def _identity_carry(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor | None:
    return value if value.shape == param.shape else None


@dataclass
class OptimizerState:
    """Per-optimizer state by parameter name, group settings and LR-scheduler state of a Trainer."""

    states: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    groups: list[list[dict[str, Any]]] = field(default_factory=list)
    schedulers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def capture(cls, trainer: pl.Trainer, module: nn.Module, clone: bool = False) -> OptimizerState:
        """Read the state of ``trainer``'s optimizers and schedulers; ``clone`` copies it (for a later rollback)."""
        names = {p: n for n, p in module.named_parameters()}
        dup: Callable[[Any], Any] = (
            (lambda v: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) if clone else (lambda v: v)
        )
        out = cls()
        for opt in trainer.optimizers:
            out.states.append(
                {names[p]: {k: dup(v) for k, v in st.items()} for p, st in opt.state.items() if p in names}
            )
            out.groups.append([{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups])
        out.schedulers = [copy.deepcopy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs]
        return out

    def restore(self, trainer: pl.Trainer, module: nn.Module, carry: Carry | None = None) -> int:
        """Rebuild optimizers and schedulers through ``trainer.strategy`` and write this state back.

        Args:
            trainer: The Trainer whose ``configure_optimizers`` is re-run.
            module: The (pruned) model, to name its parameters.
            carry: Cuts an old per-parameter tensor to the new parameter; default: keep it when shapes agree.

        Returns:
            How many parameters lost their state because it could not be carried (it restarts from zero).
        """
        carry = carry or _identity_carry
        trainer.strategy.setup_optimizers(trainer)
        names = {p: n for n, p in module.named_parameters()}
        dropped = 0
        if len(trainer.optimizers) != len(self.states):
            log.warning(
                "configure_optimizers returned %d optimizers, had %d", len(trainer.optimizers), len(self.states)
            )
        for opt, states, groups in zip(trainer.optimizers, self.states, self.groups, strict=False):
            if len(opt.param_groups) == len(groups):
                for group, saved in zip(opt.param_groups, groups, strict=True):
                    group.update(copy.deepcopy(saved))
            for group in opt.param_groups:
                for p in group["params"]:
                    old = states.get(names.get(p, ""))
                    if not old:
                        continue
                    new: dict[str, Any] = {}
                    for key, value in old.items():
                        if torch.is_tensor(value) and value.dim() > 0:
                            value = carry(p, value)
                            if value is None:
                                new = {}
                                dropped += 1
                                break
                        new[key] = value.to(p.device) if torch.is_tensor(value) else value
                    if new:
                        opt.state[p] = new
        for cfg, state in zip(trainer.lr_scheduler_configs, self.schedulers, strict=False):
            cfg.scheduler.load_state_dict(copy.deepcopy(state))
        return dropped


def rebuild_ddp(trainer: pl.Trainer) -> bool:
    """Wrap the (changed) LightningModule in a new ``DistributedDataParallel``; ``False`` if not under DDP.

    DDP registers its gradient hooks and buckets on the parameters it was built with; after a prune those are
    gone and the new ones would never be all-reduced, so ranks would silently drift apart. Building a new
    wrapper also broadcasts rank 0's parameters and buffers. Call it on every rank.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy) or trainer.world_size <= 1:
        return False
    # Public DDPStrategy API: unwrap to the LightningModule, then the strategy wraps it exactly as in `setup`.
    strategy.model = strategy.lightning_module
    strategy.configure_ddp()
    return True


class ModuleSnapshot:
    """A copy of a model's parameters, buffers and layer sizes, to undo a prune (for the accuracy guard).

    Only modules whose tensors changed shape are put back, so plain attributes of untouched modules (e.g. a
    LightningModule's counters) are never rolled back.
    """

    _SKIP = frozenset({"training"})

    def __init__(self, module: nn.Module) -> None:
        self._modules: dict[
            str, tuple[dict[str, Any], dict[str, tuple[torch.Tensor, bool]], dict[str, torch.Tensor]]
        ] = {}
        for name, m in module.named_modules():
            params = {k: (p.detach().clone(), p.requires_grad) for k, p in m.named_parameters(recurse=False)}
            buffers = {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}
            if not params and not buffers:
                continue
            attrs = {
                k: v
                for k, v in vars(m).items()
                if not k.startswith("_") and k not in self._SKIP and isinstance(v, (int, float, bool, str, tuple))
            }
            self._modules[name] = (attrs, params, buffers)

    def _changed(self, m: nn.Module, params: dict[str, Any], buffers: dict[str, Any]) -> bool:
        now_p = dict(m.named_parameters(recurse=False))
        now_b = dict(m.named_buffers(recurse=False))
        return any(k not in now_p or now_p[k].shape != v.shape for k, (v, _) in params.items()) or any(
            k not in now_b or now_b[k].shape != v.shape for k, v in buffers.items()
        )

    def restore(self, module: nn.Module) -> list[str]:
        """Put back every module whose shapes changed since the snapshot; returns their names."""
        restored = []
        modules = dict(module.named_modules())
        for name, (attrs, params, buffers) in self._modules.items():
            m = modules.get(name)
            if m is None or not self._changed(m, params, buffers):
                continue
            for k, v in attrs.items():
                setattr(m, k, v)
            for k, (value, requires_grad) in params.items():
                old = getattr(m, k)
                value = value.to(old.device)
                if old.dim() == 4 and old.is_contiguous(memory_format=torch.channels_last):
                    value = value.contiguous(memory_format=torch.channels_last)
                setattr(m, k, nn.Parameter(value, requires_grad=requires_grad))
            for k, value in buffers.items():
                setattr(m, k, value.to(getattr(m, k).device))
            restored.append(name)
        return restored
