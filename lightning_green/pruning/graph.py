"""The torch-pruning seam: dependency graphs, MAC counts and a *pruning session* that undoes its side effects.

Torch-pruning changes a model in place and, on the way, (1) switches it to ``eval()`` while tracing, (2) replaces
every pruned tensor by a new ``nn.Parameter`` with ``requires_grad=True`` and (3) drops the channels-last layout
of 4-D weights. :func:`pruning_session` restores all three, and records for every new parameter which indices of
which old one it kept (a :class:`Lineage`), so optimizer state can follow the surviving channels.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tp_function

__all__ = [
    "Lineage",
    "build_graph",
    "count_macs_params",
    "coupled_tensors",
    "eager",
    "follow_widths",
    "pruning_session",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d code eagerly: tracing and MAC counting must see the original modules.

    ``torch.compiler.set_stance`` exists from torch 2.6; on older torch (the package allows >= 2.3) compiled
    submodules are traced as they are — ``_EagerForward`` still bypasses a compiled ``forward`` on the instance.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    with set_stance("force_eager") if set_stance is not None else contextlib.nullcontext():
        yield


def build_graph(module: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> tp.DependencyGraph:
    """Torch-pruning's dependency graph of ``module`` (traced eagerly; call inside :func:`pruning_session`).

    ``forward_fn(module, example_inputs)`` runs the module when calling it with the inputs does not.
    """
    with eager():
        return tp.DependencyGraph().build_dependency(
            module, example_inputs=example_inputs, forward_fn=forward_fn, verbose=False
        )


class _EagerForward(nn.Module):
    """Calls the class's ``forward``, not one set on the instance.

    Lightning's ``from_compiled`` puts a compiled ``forward`` on the instance, which torch-pruning's counter (it
    deep-copies the model) would call on the *original*, uncounted modules.
    """

    def __init__(self, module: nn.Module, forward_fn: Callable | None = None) -> None:
        super().__init__()
        self.module = module
        self.forward_fn = forward_fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        m = self.module
        if len(args) == 1 and not kwargs and isinstance(args[0], _Batch):
            args, kwargs = args[0].call_args(self.forward_fn is not None)
        if self.forward_fn is not None:
            return self.forward_fn(m, args[0] if len(args) == 1 and not kwargs else (args or kwargs))
        if "forward" in vars(m):
            return type(m).forward(m, *args, **kwargs)
        return m(*args, **kwargs)


def count_macs_params(module: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> tuple[float, int]:
    """MACs of one forward (per sample of ``example_inputs``) and parameter count, by torch-pruning's counter.

    Torch-pruning's counter runs a deep copy of the model. It is given a copy on the ``meta`` device (parameters,
    buffers and tensor attributes are replaced, not copied), so counting costs no accelerator memory and no copy
    of the weights; a model that cannot run on ``meta`` (data-dependent Python control flow) is counted as is.
    ``forward_fn(module, example_inputs)`` runs the module when calling it with the inputs does not.

    Example:
        >>> count_macs_params(nn.Linear(4, 2), torch.zeros(1, 4))  # 8 multiply-adds + 2 bias adds
        (10.0, 10)
    """
    from lightning_green.pruning.op_count import linear_like_counted  # GPT-2's Conv1D counts as the Linear it is

    with eager(), torch.no_grad(), linear_like_counted():
        try:
            shadow, inputs = _meta_copy(module), _to_meta(example_inputs)
            macs, params = tp.utils.count_ops_and_params(_EagerForward(shadow, forward_fn), (_Batch(inputs),))
        except Exception as err:  # not runnable on meta: count the real module
            log.debug("MAC count on the meta device failed (%s); counting on %s", err, _device(module))
            macs, params = tp.utils.count_ops_and_params(_EagerForward(module, forward_fn), (_Batch(example_inputs),))
    return float(macs), int(params)


class _Batch:
    """The example inputs as the counter's one positional input, whose ``len`` is their batch size.

    Torch-pruning's counter divides the MACs by ``len`` of the first positional input: keyword inputs (a dict, e.g.
    a Hugging Face batch) counted a whole batch as one sample, and an input handed to ``forward_fn`` was divided by
    its number of elements. This one is divided by the leading size of its first tensor, as Lightning counts a batch.
    """

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs
        first = next(iter(_tensors(inputs)), None)
        self.size = int(first.shape[0]) if first is not None and first.dim() > 0 else 1

    def __len__(self) -> int:
        return self.size

    def call_args(self, one: bool) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """How torch-pruning's counter calls a model with these inputs (or one argument, for ``forward_fn``)."""
        x = self.inputs
        if one:
            return (x,), {}
        if isinstance(x, (tuple, list)):
            return tuple(x), {}
        if isinstance(x, dict):
            return (), dict(x)
        return (x,), {}


def _tensors(data: Any) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
    elif isinstance(data, Mapping):
        for v in data.values():
            yield from _tensors(v)
    elif isinstance(data, (tuple, list)):
        for v in data:
            yield from _tensors(v)


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _meta_copy(module: nn.Module, keep: Iterable[Any] = ()) -> nn.Module:
    """A deep copy of ``module`` whose parameters, buffers and tensor attributes live on the ``meta`` device.

    The objects in ``keep`` are not copied: the copy refers to them.
    """
    memo: dict[int, Any] = {id(obj): obj for obj in keep}
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
        for b in m._buffers.values():
            if b is not None and id(b) not in memo:
                memo[id(b)] = b.detach().to("meta")
        for v in vars(m).values():
            if torch.is_tensor(v) and id(v) not in memo:
                memo[id(v)] = v.detach().to("meta")
    return copy.deepcopy(module, memo)


def _to_meta(data: Any) -> Any:
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(data, torch.Tensor, lambda t: t.to("meta"))


class Lineage:
    """For each parameter a prune created: the old parameter it came from and the indices kept, dimension by dimension.

    A weight can be cut several times in one prune (output channels by one group, input channels by another), so
    the record is a chain back to the parameter that existed before the session.
    """

    def __init__(self) -> None:
        self._parent: dict[nn.Parameter, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def record(self, new: nn.Parameter, old: torch.Tensor, dim: int, keep: list[int]) -> None:
        """``new`` is ``old`` indexed with ``keep`` along ``dim``."""
        self._parent[new] = (old, dim, torch.as_tensor(keep, dtype=torch.long))

    def __len__(self) -> int:
        return len(self._parent)

    def trace(self, param: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        """The parameter ``param`` descends from and the index selections that lead to it (oldest first)."""
        steps: list[tuple[int, torch.Tensor]] = []
        while param in self._parent:
            param, dim, keep = self._parent[param]  # type: ignore[index]
            steps.append((dim, keep))
        return param, steps[::-1]

    def carry(self, param: torch.Tensor, value: torch.Tensor) -> torch.Tensor | None:
        """``value`` — a tensor shaped like ``param``'s ancestor (an optimizer moment) — cut the way ``param`` was.

        Returns ``value`` unchanged when ``param`` was not pruned (whatever its shape). A factored moment (Adafactor's
        row and column statistics: the ancestor's shape with some dimensions 1) is cut along its other dimensions.
        ``None`` when ``value`` fits neither (nothing can be carried).

        Example:
            >>> lineage, old = Lineage(), nn.Parameter(torch.zeros(3, 4))
            >>> new = nn.Parameter(torch.zeros(2, 4))
            >>> lineage.record(new, old, 0, [0, 2])
            >>> row_var = torch.tensor([[1.0], [2.0], [3.0]])
            >>> lineage.carry(new, row_var).tolist(), lineage.carry(new, torch.ones(1, 4)).shape
            ([[1.0], [3.0]], torch.Size([1, 4]))
        """
        root, steps = self.trace(param)
        if not steps:
            return value
        if value.dim() != root.dim() or any(v not in (r, 1) for v, r in zip(value.shape, root.shape, strict=True)):
            return None
        size = list(root.shape)
        for dim, keep in steps:
            if value.shape[dim] == size[dim]:  # else 1: a dimension a factored moment averages over
                value = torch.index_select(value, dim, keep.to(value.device))
            size[dim] = len(keep)
        return value


@contextlib.contextmanager
def pruning_session(module: nn.Module) -> Iterator[Lineage]:
    """Prune ``module`` inside this block; its modes, frozen flags and layouts survive.

    Train/eval modes, ``requires_grad`` flags and channels-last layouts are restored on exit, and the returned
    :class:`Lineage` fills up with every parameter torch-pruning replaces.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).train()
        >>> net[2].requires_grad_(False)  # doctest: +ELLIPSIS
        Linear(...)
        >>> with pruning_session(net) as lineage:
        ...     graph = build_graph(net, torch.zeros(1, 4))
        ...     graph.get_pruning_group(net[0], tp.prune_linear_out_channels, [0, 1]).prune()
        >>> net.training, net[2].weight.requires_grad, tuple(net[2].weight.shape), len(lineage)
        (True, False, (2, 6), 3)
    """
    ties: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        ties.setdefault(id(p), []).append(name)
    modes = {m: m.training for m in module.modules()}
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    channels_last = {
        name
        for name, p in module.named_parameters()
        if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    }
    lineage = Lineage()
    with _observe_parameter_cuts(lineage), _heads_kept_whole(), _coupled_tensors_cut(module):
        try:
            yield lineage
        finally:
            follow_widths(module, lineage)
            _retie(module, [names for names in ties.values() if len(names) > 1])
            for m, training in modes.items():
                m.training = training
            for name, p in module.named_parameters():
                if name in flags and p.requires_grad != flags[name]:
                    p.requires_grad_(flags[name])
                if name in channels_last and not p.is_contiguous(memory_format=torch.channels_last):
                    p.data = p.data.contiguous(memory_format=torch.channels_last)


#: Width attributes of modules torch-pruning has no rule for (attention, transformer blocks) that follow a cut.
WIDTH_ATTRIBUTES = ("embed_dim", "d_model", "hidden_size", "all_head_size", "intermediate_size", "dim_feedforward")


def follow_widths(module: nn.Module, lineage: Lineage) -> None:
    """Set width attributes of other modules (``embed_dim``, ``d_model``, ...) to the width their layers were cut to.

    A width is followed only where the cut is unambiguous: every tensor dimension of that size that was cut in the
    session ended at the same new size. ``head_dim`` becomes the new width over ``num_heads`` (heads stay whole).
    """
    cuts: dict[int, set[int]] = {}
    for _new, (old, dim, keep) in lineage._parent.items():
        before, after = int(old.shape[dim]), len(keep)
        if before != after:
            cuts.setdefault(before, set()).add(after)
    step = {old: next(iter(new)) for old, new in cuts.items() if len(new) == 1}
    if not step:
        return

    def final(width: int) -> int | None:
        seen = set()
        while width in step and width not in seen:
            seen.add(width)
            width = step[width]
        return width if seen else None

    for m in module.modules():
        if isinstance(m, _KNOWN_LAYERS):
            continue
        for attr in WIDTH_ATTRIBUTES:
            value = vars(m).get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and (new := final(value)) is not None:
                setattr(m, attr, new)
                heads = vars(m).get("num_heads")
                if (
                    attr in ("embed_dim", "hidden_size", "all_head_size", "d_model")
                    and isinstance(heads, int)
                    and "head_dim" in vars(m)
                    and heads > 0
                    and new % heads == 0
                ):
                    m.head_dim = new // heads


#: Layers torch-pruning cuts itself, tensors included (a BatchNorm's running statistics, an attention's biases).
_KNOWN_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.LSTM,
    nn.PReLU,
)


def coupled_tensors(module: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """Tensors torch-pruning does not see that may carry a width it cuts: ``(owner, name, is_buffer)``.

    Buffers and plain tensor attributes (e.g. a positional encoding, a custom norm's running statistics) of modules
    torch-pruning has no rule for, floating point, whose last non-singleton size is the width of some layer of the
    model (a linear's or conv's output, an embedding's dimension).
    """
    widths = set()
    for m in module.modules():
        for attr in ("out_features", "out_channels", "embedding_dim", "num_features", "normalized_shape"):
            value = getattr(m, attr, None)
            value = value[-1] if isinstance(value, tuple) and value else value
            if isinstance(value, int) and value > 1:
                widths.add(value)
    found = []
    for m in module.modules():
        if isinstance(m, _KNOWN_LAYERS) or type(m).__module__.startswith("torchmetrics."):
            continue  # torch-pruning cuts these layers' tensors itself; a metric's states are not the model's
        own = [(k, t, True) for k, t in m._buffers.items() if t is not None]
        own += [(k, t, False) for k, t in vars(m).items() if torch.is_tensor(t) and not isinstance(t, nn.Parameter)]
        for k, t, is_buffer in own:
            sizes = [s for s in t.shape if s > 1]
            if t.is_floating_point() and sizes and sizes[-1] in widths:
                found.append((m, k, is_buffer))
    return found


@contextlib.contextmanager
def _coupled_tensors_cut(module: nn.Module) -> Iterator[None]:
    # Torch-pruning follows parameters only. Inside the session, make each coupled tensor a parameter: torch-pruning
    # then finds it in the traced graph as an "unwrapped parameter" (its public mechanism for a ViT's positional
    # embedding) and cuts its last non-singleton dimension with the width it is used with. Outside, it is the
    # buffer or plain attribute it was, with its requires_grad=False values.
    converted = []
    orders = {}
    for m, k, is_buffer in coupled_tensors(module):
        orders.setdefault(m, list(m._buffers))
        t = m._buffers.pop(k) if is_buffer else vars(m).pop(k)
        m._parameters[k] = nn.Parameter(t.detach(), requires_grad=True)
        converted.append((m, k, is_buffer))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            yield
    finally:
        for m, k, is_buffer in converted:
            p = m._parameters.pop(k, None)
            if p is None:
                continue
            value = p.detach().requires_grad_(False)
            if is_buffer:
                m._buffers[k] = value
            else:
                vars(m)[k] = value
        for m, order in orders.items():  # buffers in their registration order (state_dict keys, printing)
            items = sorted(m._buffers.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
            m._buffers.clear()
            m._buffers.update(items)


def _retie(module: nn.Module, tied: list[list[str]]) -> None:
    """Share tied parameters again (e.g. a language model's embedding and output weights).

    Torch-pruning cuts each use of a shared parameter separately and hands every module its own copy; the copies
    hold the same values, but would train apart.
    """
    for names in tied:
        first = module.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            other = getattr(holder, attr)
            if other is first:
                continue
            if other.shape != first.shape:
                log.warning("tied parameters %s and %s were cut differently; they are no longer tied", names[0], name)
                continue
            setattr(holder, attr, first)


@contextlib.contextmanager
def _observe_parameter_cuts(lineage: Lineage) -> Iterator[None]:
    # Every layer pruner in torch-pruning 1.6 creates its new tensors through this one method (weights, biases,
    # attention projections, norms, embeddings, LSTMs). Wrapping it is the only way to learn *which* indices
    # survived without re-implementing each layer's pruning rule.
    original = tp_function.BasePruningFunc._prune_parameter_and_grad

    def observed(self: Any, weight: torch.Tensor, keep_idxs: list[int], pruning_dim: int) -> nn.Parameter:
        new = original(self, weight, keep_idxs, pruning_dim)
        lineage.record(new, weight, pruning_dim, list(keep_idxs))
        return new

    tp_function.BasePruningFunc._prune_parameter_and_grad = observed  # type: ignore[method-assign]
    try:
        yield
    finally:
        tp_function.BasePruningFunc._prune_parameter_and_grad = original  # type: ignore[method-assign]


#: torch-pruning's own cut of nn.MultiheadAttention, and the public aliases bound to it at import.
_MHA_PRUNE = tp_function.MultiheadAttentionPruner.prune_out_channels
_MHA_ALIASES = ("prune_multihead_attention_out_channels", "prune_multihead_attention_in_channels")
_regrouping = 0  # depth of nested sessions; only the outermost installs the wrapper


@contextlib.contextmanager
def _heads_kept_whole() -> Iterator[None]:
    # Torch-pruning 1.6 cuts nn.MultiheadAttention's q/k/v rows at the *residual* indices it removes, and the layer
    # then regroups the survivors contiguously into heads: an uneven cut moves dimensions between heads. Before each
    # cut, reorder the rows inside the layer so that the rows at the removed indices are each head's weakest and the
    # survivors land, head by head, in the order the layer will regroup them (see regroup_heads). The public aliases
    # (tp.prune_multihead_attention_*_channels) point at the wrapper too, so groups asked for by alias still match.
    global _regrouping
    if _regrouping:
        _regrouping += 1
        try:
            yield
        finally:
            _regrouping -= 1
        return

    def prune(self: Any, layer: nn.MultiheadAttention, idxs: Any) -> nn.Module:
        regroup_heads(self, layer, list(idxs))
        return _MHA_PRUNE(self, layer, idxs)

    cls = tp_function.MultiheadAttentionPruner
    holders = [(m, name, getattr(m, name)) for m in (tp_function, tp) for name in _MHA_ALIASES if hasattr(m, name)]
    cls.prune_out_channels = cls.prune_in_channels = prune  # type: ignore[method-assign]
    handler = tp_function.PrunerBox[tp.ops.OPTYPE.MHA].prune_out_channels
    for m, name, _ in holders:
        setattr(m, name, handler)
    _regrouping = 1
    try:
        yield
    finally:
        _regrouping = 0
        cls.prune_out_channels = cls.prune_in_channels = _MHA_PRUNE  # type: ignore[method-assign]
        for m, name, old in holders:
            setattr(m, name, old)


def _head_order(scores: list[float], removed: list[int], num_heads: int) -> list[int]:
    """Row order so that cutting the ``removed`` positions leaves each head's strongest rows, head by head."""
    embed = len(scores)
    head_dim, cut = embed // num_heads, len(removed) // num_heads
    gone = set(removed)
    kept_at = [p for p in range(embed) if p not in gone]
    order = [0] * embed
    for h in range(num_heads):
        rows = list(range(h * head_dim, (h + 1) * head_dim))
        ranked = sorted(rows, key=lambda r: (-scores[r], r))
        keep, drop = sorted(ranked[: head_dim - cut]), sorted(ranked[head_dim - cut :])
        for pos, row in zip(kept_at[h * (head_dim - cut) : (h + 1) * (head_dim - cut)], keep, strict=True):
            order[pos] = row
        for pos, row in zip(removed[h * cut : (h + 1) * cut], drop, strict=True):
            order[pos] = row
    return order


def _row_norms(*parts: torch.Tensor | None) -> torch.Tensor:
    """L2 norm of each row of the given (rows, ...) tensors side by side; ``None`` parts are skipped."""
    return torch.cat([p.detach().float().reshape(p.shape[0], -1) for p in parts if p is not None], dim=1).norm(dim=1)


def regroup_heads(fn: Any, layer: nn.MultiheadAttention, idxs: list[int]) -> None:
    """Reorder ``layer``'s inner rows so that removing the embedding indices ``idxs`` removes as many rows per head.

    Only valid right before torch-pruning's cut of the same ``idxs`` (inside :func:`pruning_session` that is
    automatic): on its own it mixes the heads and rescales q.

    Inside one head the q/k dimensions (paired: a score sums ``q_j * k_j``) and the v dimensions (paired with the
    output projection's input columns) can be reordered freely, and the two orders are independent. Each head
    drops its ``len(idxs) / num_heads`` weakest q/k pairs and v dimensions by magnitude: ``|q_j| * |k_j|`` and
    ``|v_j| * |out_j|``, each row with its bias and without the residual dimensions being cut. The rows are placed
    so that after torch-pruning removes the ``idxs`` rows the survivors of head 0 come first, then head 1's, ...
    Rows move through ``fn._prune_parameter_and_grad`` (with a permutation as its index list), so gradients move
    with them and the session's :class:`Lineage` records the move for the optimizer state. The q rows are scaled by
    ``sqrt(new head_dim / head_dim)``, because the layer divides its scores by ``sqrt(head_dim)``: what the
    surviving dimensions contribute to each score is unchanged. (q's carried optimizer moments are not rescaled.)

    Layers with separate q/k/v weights (``kdim``/``vdim`` other than ``embed_dim``) are not handled: torch-pruning
    1.6 cannot cut them (:class:`~lightning_green.pruning.ChannelPruner` refuses them).

    Example:
        >>> mha = nn.MultiheadAttention(8, 2)
        >>> k_before = mha.in_proj_weight[8:16].detach().clone()
        >>> regroup_heads(tp_function.MultiheadAttentionPruner(), mha, [0, 1, 2, 3])
        >>> k_after = mha.in_proj_weight[8:16].detach()
        >>> # rows 4..7 are what survives: two rows of head 0 (rows 0-3), then two of head 1 (rows 4-7)
        >>> [int((k_before == row).all(1).nonzero()) // 4 for row in k_after[4:]]
        [0, 0, 1, 1]
    """
    embed, heads = layer.embed_dim, layer.num_heads
    removed = sorted({int(i) for i in idxs})
    if not removed or layer.in_proj_weight is None:
        return
    if len(removed) % heads or len(removed) >= embed:
        log.warning(
            "nn.MultiheadAttention with %d heads: cutting %d of %d dimensions cannot keep the heads whole",
            heads,
            len(removed),
            embed,
        )
        return
    gone = set(removed)
    kept = torch.tensor([c for c in range(embed) if c not in gone], device=layer.in_proj_weight.device)
    with torch.no_grad():
        wq, wk, wv = layer.in_proj_weight[:, kept].split(embed)
        bq, bk, bv = layer.in_proj_bias.split(embed) if layer.in_proj_bias is not None else (None, None, None)
        bias_k = layer.bias_k.reshape(embed, 1) if layer.bias_k is not None else None
        bias_v = layer.bias_v.reshape(embed, 1) if layer.bias_v is not None else None
        qk_scores = _row_norms(wq, bq) * _row_norms(wk, bk, bias_k)
        v_scores = _row_norms(wv, bv, bias_v) * _row_norms(layer.out_proj.weight[kept].T)
        qk = _head_order(qk_scores.tolist(), removed, heads)
        v = _head_order(v_scores.tolist(), removed, heads)
    move = fn._prune_parameter_and_grad
    rows = qk + [embed + r for r in qk] + [2 * embed + r for r in v]
    layer.in_proj_weight = move(layer.in_proj_weight, rows, 0)
    if layer.in_proj_bias is not None:
        layer.in_proj_bias = move(layer.in_proj_bias, rows, 0)
    # Attention scores are scaled by 1/sqrt(head_dim): scale q so the surviving dimensions score as before.
    with torch.no_grad():
        scale = math.sqrt((embed - len(removed)) / embed)
        layer.in_proj_weight[:embed].mul_(scale)
        if layer.in_proj_bias is not None:
            layer.in_proj_bias[:embed].mul_(scale)
    if layer.bias_k is not None:
        layer.bias_k = move(layer.bias_k, qk, 2)
    if layer.bias_v is not None:
        layer.bias_v = move(layer.bias_v, v, 2)
    layer.out_proj.weight = move(layer.out_proj.weight, v, 1)
