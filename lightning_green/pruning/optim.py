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
from collections.abc import Callable, Mapping
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
        """Read the state of ``trainer``'s optimizers and schedulers; ``clone`` copies it to host memory (rollback)."""
        names = {p: n for n, p in module.named_parameters()}
        dup: Callable[[Any], Any] = (
            (lambda v: _offload(v) if torch.is_tensor(v) else copy.deepcopy(v)) if clone else (lambda v: v)
        )
        out = cls()
        for opt in trainer.optimizers:
            out.states.append(
                {names[p]: {k: dup(v) for k, v in st.items()} for p, st in opt.state.items() if p in names}
            )
            out.groups.append([{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups])
        out.schedulers = [copy.deepcopy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs]
        return out

    def renamed(self, rename: Callable[[Mapping[str, Any]], dict[str, Any]]) -> OptimizerState:
        """This state with each optimizer's per-parameter entries re-keyed by ``rename``.

        For parameters that moved to other names, as those of the decoder layers after a removed one do.
        """
        return OptimizerState([rename(st) for st in self.states], self.groups, self.schedulers)

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


def _offload(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in host memory (pinned when it comes from an accelerator, for a fast copy back)."""
    out = t.detach().to("cpu", copy=True)
    return out.pin_memory() if t.is_cuda else out


#: Width attributes put back on every module by a rollback, whether or not its own tensors changed shape
#: (``nn.Transformer.d_model`` has no tensors of its own).
_WIDTH_ATTRIBUTES = frozenset(
    {"embed_dim", "d_model", "hidden_size", "all_head_size", "intermediate_size", "dim_feedforward", "head_dim"}
)


class ModuleSnapshot:
    """A host-memory copy of a whole model, to undo a prune after its fine-tune window (for the accuracy guard).

    It holds every parameter, buffer, tensor attribute and layer size, and which module holds which submodules (a
    decoder layer that a prune removed goes back into its list).

    :meth:`restore` puts back *every* parameter and buffer, so the model is exactly the pre-prune one (not a mix of
    restored and fine-tuned layers); plain attributes are put back on modules whose tensors changed shape and for
    width attributes (``embed_dim``, ``d_model``, ...), so a LightningModule's own counters are not rolled back.
    The copy lives on the CPU (pinned for an accelerator), not beside the model on the device.
    """

    _SKIP = frozenset({"training"})

    def __init__(self, module: nn.Module) -> None:
        self._modules: dict[str, tuple[dict[str, Any], dict[str, tuple[torch.Tensor, bool, bool]], dict[str, Any]]] = {}
        # Which module holds which children (a removed decoder layer comes back into its list), by reference.
        self._children = [(m, dict(m._modules)) for m in module.modules()]
        for name, m in module.named_modules():
            params = {
                k: (
                    _offload(p),
                    p.requires_grad,
                    p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous(),
                )
                for k, p in m.named_parameters(recurse=False)
            }
            buffers = {k: _offload(b) if b is not None else None for k, b in m._buffers.items()}
            attrs = {
                k: (_offload(v) if torch.is_tensor(v) else v)
                for k, v in vars(m).items()
                if not k.startswith("_")
                and k not in self._SKIP
                and (isinstance(v, (int, float, bool, str, tuple)) or torch.is_tensor(v))
            }
            self._modules[name] = (attrs, params, buffers)

    @staticmethod
    def _changed(m: nn.Module, params: dict[str, Any], buffers: dict[str, Any]) -> bool:
        now_p = dict(m.named_parameters(recurse=False))
        return any(k not in now_p or now_p[k].shape != v.shape for k, (v, _, _) in params.items()) or any(
            v is not None and (m._buffers.get(k) is None or m._buffers[k].shape != v.shape) for k, v in buffers.items()
        )

    def restore(self, module: nn.Module) -> list[str]:
        """Put the whole model back as it was; returns the names of the modules whose shapes had changed."""
        changed = []
        for m, children in self._children:
            if m._modules != children:
                m._modules.clear()
                m._modules.update(children)
        modules = dict(module.named_modules())
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        for name, (attrs, params, buffers) in self._modules.items():
            m = modules.get(name)
            if m is None:
                continue
            reshaped = self._changed(m, params, buffers)
            for k, v in attrs.items():
                if torch.is_tensor(v):
                    old = vars(m).get(k)
                    setattr(m, k, v.to(old.device if torch.is_tensor(old) else device, copy=True))
                elif reshaped or k in _WIDTH_ATTRIBUTES:
                    setattr(m, k, v)
            for k, (value, requires_grad, channels_last) in params.items():
                old = m._parameters.get(k)
                value = value.to(old.device if old is not None else device, copy=True)
                if channels_last:
                    value = value.contiguous(memory_format=torch.channels_last)
                setattr(m, k, nn.Parameter(value, requires_grad=requires_grad))
            for k, value in buffers.items():
                if value is not None:
                    old = m._buffers.get(k)
                    m._buffers[k] = value.to(old.device if old is not None else device, copy=True)
            if reshaped:
                changed.append(name)
        return changed
