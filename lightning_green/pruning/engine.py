"""One prune of a model with torch-pruning: which layers may be cut, how far, and the record of what was cut."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from lightning_green._internal.validation import GreenRuntimeError, InvalidArgumentError, fail
from lightning_green.pruning.graph import Lineage, count_macs_params, eager, follow_widths, pruning_session
from lightning_green.pruning.history import plain_entries
from lightning_green.pruning.importance import NEEDS_BATCHNORM, build_importance
from lightning_green.pruning.verify import first_line

__all__ = ["ChannelPruner", "PruneResult"]

log = logging.getLogger(__name__)

#: Most counted steps a speedup-targeted prune takes; it stops at the first that reaches the target.
MAX_SUBSTEPS = 64
#: Smallest increase of the channel ratio between those steps.
MIN_SUBSTEP = 1.0 / 64


@dataclass
class PruneResult:
    """What one prune did."""

    entries: list[list[Any]] = field(default_factory=list)
    lineage: Lineage = field(default_factory=Lineage)
    macs: float = 0.0
    params: int = 0
    #: Whether the goal asked for any cut (a speedup target may already be met by an earlier prune).
    needed: bool = True
    reached: bool = True
    #: The first line of the error the cut model raised when its MACs were counted (it is broken); ``None`` if fine.
    error: str | None = None
    #: The root layer of the group whose cut itself raised (torch-pruning has no rule for it), if one did.
    blame: str | None = None


class _CutBroke(Exception):
    """The model raised in the MAC count right after a cut, or torch-pruning in the cut of group ``blame``."""

    def __init__(self, message: str, blame: str | None = None) -> None:
        super().__init__(message)
        self.blame = blame


def _step(pruner: Any, module: nn.Module) -> None:
    """``pruner.step()``, group by group, so a group torch-pruning fails to cut is named."""
    names = {m: n for n, m in module.named_modules()}
    with eager():
        for group in pruner.step(interactive=True):
            try:
                group.prune()
            except Exception as exc:  # e.g. torch-pruning 1.6 asserts num_layers == 1 in the middle of an LSTM cut
                error = f"torch-pruning cannot cut it ({first_line(exc)})"
                raise _CutBroke(error, names.get(group[0].dep.target.module, "?")) from exc


def _count_cut(module: nn.Module, example_inputs: Any, forward_fn: Any) -> tuple[float, int]:
    try:
        return count_macs_params(module, example_inputs, forward_fn)
    except Exception as exc:  # a cut the model cannot take (a hard-coded width): the caller's check undoes it
        raise _CutBroke(first_line(exc)) from exc


def _is_frozen(module: nn.Module) -> bool:
    own = list(module.parameters(recurse=False))
    return bool(own) and not all(p.requires_grad for p in own)


class ChannelPruner:
    """Prunes channels of a module in place with torch-pruning's ``BasePruner``, under the callback's rules.

    Rules beyond torch-pruning's defaults: layers whose outputs are the model's outputs (the classifier) are never
    cut; frozen modules (any parameter with ``requires_grad=False``) keep every channel — including the input
    channels another layer's prune would take from them; ``ignored_layers`` takes names and glob patterns;
    ``nn.MultiheadAttention`` gets ``round_to`` = its number of heads; ``max_layer_ratio`` counts from the
    *dense* width of each layer, also after a resume.

    Args:
        owner: Class name used in error messages.
        importance: A name of :data:`~lightning_green.pruning.importance.IMPORTANCES`.
        global_pruning: Rank channels across all layers instead of within each layer.
        round_to: Channel counts after the ``final`` prune are multiples of this.
        ignored_layers: Module names or glob patterns never cut.
        max_layer_ratio: Largest share of a layer's dense channels that may be removed.
        num_heads: Attention projection layer name → number of heads, so heads are cut alike.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> pruner = ChannelPruner(importance="magnitude-l2")
        >>> result = pruner.prune(net, torch.zeros(1, 1, 8, 8), ratio=0.5)
        >>> net[0].out_channels, net[3].out_channels, result.entries[0][:2]
        (4, 4, ['0', True])
    """

    def __init__(
        self,
        owner: str = "StructuredPruning",
        importance: str = "magnitude-l2",
        global_pruning: bool = False,
        round_to: int | None = None,
        ignored_layers: Sequence[str] | None = None,
        max_layer_ratio: float = 0.9,
        num_heads: Mapping[str, int] | None = None,
    ) -> None:
        self.owner = owner
        self.importance = importance
        self.global_pruning = global_pruning
        self.round_to = round_to
        self.ignored_layers = list(ignored_layers or [])
        self.max_layer_ratio = max_layer_ratio
        self.num_heads = dict(num_heads or {})
        #: ``forward_fn(module, example_inputs)`` when calling the module with the inputs does not run it.
        self.forward_fn: Any = None
        #: Module names left whole besides ``ignored_layers`` (their cut failed the check of a prune).
        self.left_whole: set[str] = set()

    # ------------------------------------------------------------------------------------------------- checks
    def check_module(self, module: nn.Module) -> None:
        """Raise ``ValueError`` when the settings do not fit ``module`` (names that match nothing, ...)."""
        names = [n for n, _ in module.named_modules() if n]
        for pattern in self.ignored_layers:
            if not self._match(pattern, names):
                fail(
                    self.owner,
                    "ignored_layers",
                    self.ignored_layers,
                    f"names or glob patterns of modules; {pattern!r} matches none (modules: {_preview(names)})",
                )
        modules = dict(module.named_modules())
        ignored = {n for pattern in self.ignored_layers for n in self._match(pattern, names)}
        for name, m in modules.items():
            if not isinstance(m, nn.MultiheadAttention):
                continue
            if m.add_zero_attn:
                raise InvalidArgumentError(
                    f"{self.owner}: cannot prune this model: nn.MultiheadAttention {name!r} has add_zero_attn=True, "
                    "which torch-pruning 1.6 cannot trace."
                )
            if not m._qkv_same_embed_dim and name not in ignored:
                fail(
                    self.owner,
                    "ignored_layers",
                    self.ignored_layers,
                    f"a list that names nn.MultiheadAttention {name!r}: torch-pruning 1.6 cannot cut attention whose "
                    f"kdim/vdim ({m.kdim}/{m.vdim}) differ from embed_dim ({m.embed_dim})",
                )
        for name in self.num_heads:
            if not isinstance(modules.get(name), nn.Linear):
                fail(
                    self.owner,
                    "num_heads",
                    self.num_heads,
                    f"keyed by names of nn.Linear attention projections; {name!r} is not one",
                )
        if self.importance in NEEDS_BATCHNORM and not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
        ):
            fail(self.owner, "importance", self.importance, "a criterion the model supports: it has no BatchNorm layer")
        self.effective_round_to(module)

    def effective_round_to(self, module: nn.Module, final: bool = True) -> int | None:
        """The channel multiple of a prune: ``round_to`` for the ``final`` one, else only what attention needs.

        ``nn.MultiheadAttention`` needs its embedding to stay a multiple of its heads at every prune (the lcm of
        all heads when there are several). Rounding intermediate prunes to ``round_to`` as well would floor every
        small layer by a whole multiple at each prune and overshoot the schedule; the final shapes are what runs.
        """
        heads = {n: m.num_heads for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)}
        needed = math.lcm(*heads.values()) if heads else None
        for name, h in heads.items():
            if self.round_to is not None and self.round_to % h:
                fail(
                    self.owner,
                    "round_to",
                    self.round_to,
                    f"a multiple of the {h} heads of nn.MultiheadAttention {name!r} (or None)",
                )
        if final and self.round_to is not None:
            return self.round_to
        return needed

    @staticmethod
    def _match(pattern: str, names: Sequence[str]) -> list[str]:
        return [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]

    # ---------------------------------------------------------------------------------------------- pruning
    def channels(self, module: nn.Module, example_inputs: Any) -> dict[str, list[int]]:
        """``{layer name: [out channels, in channels]}`` of every prunable layer (the dense record)."""
        with pruning_session(module):
            pruner = self._pruner(module, example_inputs, ratio=0.0, steps=1)
        names = {m: n for n, m in module.named_modules()}
        return {
            names[m]: [int(pruner.layer_init_out_ch[m] or 0), int(pruner.layer_init_in_ch[m] or 0)]
            for m in pruner.layer_init_out_ch
            if m in names
        }

    def prune(
        self,
        module: nn.Module,
        example_inputs: Any,
        *,
        ratio: float | None = None,
        target_macs: float | None = None,
        dense_channels: Mapping[str, Sequence[int]] | None = None,
        gradients: Mapping[str, torch.Tensor] | None = None,
        final: bool = True,
        goal: float | None = None,
    ) -> PruneResult:
        """Cut ``module`` in place: ``ratio`` of its current channels, or until its MACs are at most ``target_macs``.

        Args:
            module: The model.
            example_inputs: Input for tracing and MAC counts (on the model's device).
            ratio: Share of the current channels of each layer (or of all, with global pruning) to remove.
            target_macs: Remove channels in fine steps until one forward costs at most this many MACs.
            dense_channels: :meth:`channels` of the dense model, so ``max_layer_ratio`` counts from there.
            gradients: Parameter name → accumulated gradient, for gradient-based importance. Every ``.grad`` is
                ``None`` afterwards.
            final: The last prune of a schedule: ``round_to`` applies (see :meth:`effective_round_to`).
            goal: With ``ratio`` and ``dense_channels``: the share of the *dense* channels that is to be gone after
                this cut (one prune of an iterative schedule). Each layer is then cut to ``int(dense × (1 − goal))``
                channels (with global pruning: all groups together), from the widths it has now, so the channels
                torch-pruning rounds away at one prune (whole channel groups, ``round_to``) are not cut again by
                the next; ``ratio`` stays the share for a layer without a dense record.
        """
        if (ratio is None) == (target_macs is None):
            raise ValueError("give exactly one of `ratio` and `target_macs`")
        to_goal = ratio is not None and goal is not None and bool(dense_channels)
        ratios = self._layer_ratios(module, dense_channels, goal) if to_goal and not self.global_pruning else {}
        params = dict(module.named_parameters())
        if gradients is not None:
            for name, p in params.items():
                g = gradients.get(name)
                p.grad = g.to(p.dtype).reshape(p.shape) if g is not None else torch.zeros_like(p)
        result = PruneResult()
        try:
            with pruning_session(module) as lineage:
                if ratio is not None:
                    pruner = self._pruner(
                        module, example_inputs, ratio=ratio, steps=1, dense=dense_channels, final=final, ratios=ratios
                    )
                    self._check_gradients(pruner, gradients)
                    ignored = set(pruner.ignored_layers)
                    if to_goal and self.global_pruning:
                        ratio = self._global_ratio(module, pruner, dense_channels, goal, ratio)  # type: ignore[arg-type]
                        pruner.per_step_pruning_ratio[1:] = [ratio]  # read at step(), as in _prune_to_macs
                    if ratios:  # cut where a layer that may be cut is above its goal
                        result.needed = any(r > 0 for m, r in ratios.items() if m not in ignored)
                    else:
                        result.needed = ratio > 0
                    if result.needed:
                        try:
                            _step(pruner, module)
                        except _CutBroke as exc:
                            result.error, result.blame = str(exc), exc.blame
                        follow_widths(module, lineage)
                else:
                    pruner = self._pruner(
                        module, example_inputs, ratio=0.0, steps=MAX_SUBSTEPS, dense=dense_channels, final=final
                    )
                    self._check_gradients(pruner, gradients)
                    try:
                        result.macs, result.params, start = self._prune_to_macs(
                            pruner, module, example_inputs, target_macs, lineage
                        )
                        result.needed = start > target_macs
                        result.reached = result.macs <= target_macs
                    except _CutBroke as exc:
                        result.error, result.blame = str(exc), exc.blame
                result.entries = plain_entries(pruner.pruning_history())
            result.lineage = lineage
            if result.error is None:
                # Counted outside the session, where coupled buffers are buffers again (not parameters).
                try:
                    result.macs, result.params = _count_cut(module, example_inputs, self.forward_fn)
                except _CutBroke as exc:
                    result.error = str(exc)
        finally:
            # Old gradients (torch-pruning cuts them too) belong to a step that is over; they would only cost memory
            # and mismatch the restored channels-last layout of the new weights.
            for p in module.parameters():
                p.grad = None
        return result

    @staticmethod
    def _widths(module: nn.Module, dense: Mapping[str, Sequence[int]]) -> dict[nn.Module, tuple[int, int]]:
        """``{root layer: (dense width, width now)}`` of the layers with a dense record whose width is known."""
        modules = dict(module.named_modules())
        widths = {}
        for name, (dense_out, _) in dense.items():
            m = modules.get(name)
            now = _out_width(m) if m is not None else None
            if now is not None and dense_out > 0:
                widths[m] = (int(dense_out), now)
        return widths

    def _layer_ratios(
        self, module: nn.Module, dense: Mapping[str, Sequence[int]] | None, goal: float | None
    ) -> dict[nn.Module, float]:
        """Per layer, the share of its channels now that this cut removes so that ``goal`` of its dense ones are gone.

        torch-pruning keeps ``int(n × (1 − ratio))`` of a layer's ``n`` current channels (of its channel groups'
        units), so a step ratio computed from the schedule alone rounds down at every prune: a layer of 8 channels
        cut 8 times towards 0.5 ended with 1. A layer of ``D`` dense channels and ``C`` now is asked to keep
        ``K = int(D × (1 − goal))``: ratio ``1 − (K + 0.5) / C`` (torch-pruning's floor then lands on ``K``, also
        per unit of ``g`` channel groups, since ``⌊(K + 0.5) / g⌋ = ⌊K / g⌋``), 0 where ``C <= K``. Given to
        torch-pruning as its public ``pruning_ratio_dict``.
        """
        assert dense is not None and goal is not None
        ratios = {}
        for m, (dense_out, now) in self._widths(module, dense).items():
            keep = max(1, int(dense_out * (1.0 - goal) + 1e-9))  # torch-pruning never cuts a layer to 0
            ratios[m] = 0.0 if now <= keep else 1.0 - (keep + 0.5) / now
        return ratios

    def _global_ratio(
        self, module: nn.Module, pruner: Any, dense: Mapping[str, Sequence[int]], goal: float, ratio: float
    ) -> float:
        """With global pruning, the share of the channels now that this cut removes to reach ``goal``.

        ``goal`` of the dense channels of every group that may be cut are then gone, all groups together (they lose
        different shares). Each group of coupled layers (a residual stream, attention's projections) counts once, as
        torch-pruning ranks it: by its root layer. ``ratio`` where no such group has a known width.
        """
        known = self._widths(module, dense)
        graph = pruner.DG
        groups = graph.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
        roots = {group[0].dep.target.module for group in groups}
        widths = [known[m] for m in roots if m in known]
        total_dense, total_now = sum(d for d, _ in widths), sum(c for _, c in widths)
        if not total_now:
            return ratio
        keep = (1.0 - goal) * total_dense * (1.0 + 1e-9)  # torch-pruning floors: not one channel short
        return max(0.0, 1.0 - keep / total_now)

    def _prune_to_macs(
        self, pruner: Any, module: nn.Module, example_inputs: Any, target_macs: float, lineage: Lineage
    ) -> tuple[float, int, float]:
        """Step the pruner's ratio up until MACs <= ``target_macs``; returns MACs, params and the MACs before.

        MACs after removing a share ``r`` of channels behave like ``(1 - r) ** alpha`` (alpha ~ 2 when both sides
        of most layers shrink). Each step aims at 80 % of the way to the ratio that model predicts, then refits
        ``alpha`` from the count, so the target is met in a few counted steps, from below.
        """
        macs, params = count_macs_params(module, example_inputs, self.forward_fn)
        start, ratio, alpha = macs, 0.0, 2.0
        ratios = pruner.per_step_pruning_ratio  # read at each step(); torch-pruning fills it from its scheduler
        for step in range(1, MAX_SUBSTEPS + 1):
            if macs <= target_macs or ratio >= self.max_layer_ratio:
                break
            predicted = 1.0 - (target_macs / start) ** (1.0 / alpha)
            ratio = min(self.max_layer_ratio, max(ratio + MIN_SUBSTEP, ratio + 0.8 * (predicted - ratio)))
            ratios[step] = ratio
            _step(pruner, module)
            follow_widths(module, lineage)
            macs, params = _count_cut(module, example_inputs, self.forward_fn)
            if 0.0 < macs < start:
                alpha = max(0.5, math.log(macs / start) / math.log(1.0 - ratio))
        return macs, params, start

    def _check_gradients(self, pruner: Any, gradients: Mapping[str, torch.Tensor] | None) -> None:
        """Refuse a gradient criterion when no gradient reached any layer that may be cut."""
        if gradients is None:
            return
        names = {m: n for n, m in pruner.model.named_modules()}
        roots = [
            names.get(group[0].dep.target.module, "?")
            for group in pruner.DG.get_all_groups(
                ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
            )
        ]
        if roots and not any(f"{root}.weight" in gradients for root in roots):
            fail(
                self.owner,
                "importance",
                self.importance,
                f"a criterion without gradients (e.g. 'magnitude-l2'): no gradient reached the layers it would cut "
                f"({_preview(roots)})",
                GreenRuntimeError,  # found mid-fit: a runtime state, not a bad argument
            )

    def regularizer(self, module: nn.Module, example_inputs: Any, kind: str, strength: float) -> Any:
        """Torch-pruning's sparsity regulariser for ``module`` (``"group-norm"`` or ``"bn-scale"``), same rules."""
        with pruning_session(module):
            if kind == "group-norm":
                return self._pruner(
                    module, example_inputs, ratio=0.0, steps=1, cls=tp.pruner.GroupNormPruner, reg=strength
                )
            return self._pruner(module, example_inputs, ratio=0.0, steps=1, cls=tp.pruner.BNScalePruner, reg=strength)

    def _pruner(
        self,
        module: nn.Module,
        example_inputs: Any,
        *,
        ratio: float,
        steps: int,
        dense: Mapping[str, Sequence[int]] | None = None,
        final: bool = True,
        cls: type = tp.pruner.BasePruner,
        ratios: Mapping[nn.Module, float] | None = None,
        **extra: Any,
    ) -> Any:
        modules = dict(module.named_modules())
        names = [n for n in modules if n]
        ignored = {modules[n] for pattern in self.ignored_layers for n in self._match(pattern, names)}
        ignored |= {modules[n] for n in self.left_whole if n in modules}
        frozen = {m for m in module.modules() if _is_frozen(m)}
        # The regularisers rank by group norm; only the pruner itself uses the chosen criterion.
        importance = (
            build_importance(self.importance)
            if cls is tp.pruner.BasePruner
            else tp.importance.GroupMagnitudeImportance(p=2)
        )
        with eager():
            pruner = cls(
                module,
                example_inputs,
                importance=importance,
                global_pruning=self.global_pruning,
                pruning_ratio=ratio,
                pruning_ratio_dict=dict(ratios) if ratios else None,
                max_pruning_ratio=self.max_layer_ratio,
                iterative_steps=steps,
                ignored_layers=list(ignored | frozen),
                round_to=self.effective_round_to(module, final),
                num_heads={modules[n]: h for n, h in self.num_heads.items()},
                forward_fn=self.forward_fn,
                **extra,
            )
            extra_ignored = self._protected_roots(pruner, frozen)
        for m in extra_ignored:
            pruner.ignored_layers.extend(m.modules())
        if hasattr(pruner, "update_regularizer"):
            pruner.update_regularizer()
        if dense:
            # torch-pruning caps each layer relative to the width it had when this pruner was built; make the cap
            # relative to the dense width, which the callback keeps across prunes and resumes.
            for name, (out_ch, in_ch) in dense.items():
                m = modules.get(name)
                if m is not None and m in pruner.layer_init_out_ch:
                    pruner.layer_init_out_ch[m] = out_ch
                    pruner.layer_init_in_ch[m] = in_ch
        return pruner

    @staticmethod
    def _protected_roots(pruner: Any, frozen: set[nn.Module]) -> set[nn.Module]:
        """Root layers whose outputs are model outputs (no layer consumes them) or whose group touches a frozen module.

        A layer *consumes* channels when it prunes them on its input side only (a conv, a linear); norms,
        depthwise convs and attention pass their channels on, so the group continues behind them.
        """
        graph = pruner.DG
        protected = set()
        for group in graph.get_all_groups(root_module_types=pruner.root_module_types):
            consumed = any(
                graph.is_in_channel_pruning_fn(dep.handler) and not graph.is_out_channel_pruning_fn(dep.handler)
                for dep, _ in group
            )
            if not consumed or any(dep.target.module in frozen for dep, _ in group):
                protected.add(group[0].dep.target.module)
        return protected


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _out_width(m: nn.Module) -> int | None:
    """A root layer's output width as torch-pruning counts it (``None`` for a layer this does not know)."""
    if isinstance(m, _CONVS):
        return int(m.out_channels)
    if isinstance(m, nn.Linear):
        return int(m.out_features)
    if isinstance(m, nn.MultiheadAttention):
        return int(m.embed_dim)
    if isinstance(m, nn.LSTM):
        return int(m.hidden_size)
    return None


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")
