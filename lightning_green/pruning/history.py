"""Pruning history: what was cut, as plain lists, and how to cut a fresh model the same way.

An *entry* is torch-pruning's own record of one group prune, ``[module_name, is_output_channels, indices]``: the
root layer of the group, which side was cut and the channel indices. Replaying the entries in order on the dense
architecture reproduces the pruned one exactly, so a checkpoint only needs these lists (they load with
``torch.load(..., weights_only=True)``) next to the weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import move_data_to_device
from torch import nn

from lightning_green.pruning.graph import (
    WIDTH_ATTRIBUTES,
    Lineage,
    _meta_copy,
    build_graph,
    coupled_tensors,
    pruning_session,
)
from lightning_green.pruning.verify import ModelState, Probe, quiet_forward

__all__ = [
    "STATE_VERSION",
    "Architecture",
    "find_pruning_state",
    "flatten_entries",
    "load_pruned",
    "plain_entries",
    "rebuild_from_checkpoint",
    "replay",
    "shapes_differ",
]

#: ``"version"`` of the callback state that carries the history.
STATE_VERSION = 1

Entry = list  # [str, bool, list[int]]


def plain_entries(entries: Iterable[Sequence[Any]]) -> list[Entry]:
    """Entries as plain Python types (``str``, ``bool``, ``list[int]``), whatever torch-pruning handed out.

    Example:
        >>> plain_entries([("conv", 1, (3, torch.tensor(5)))])
        [['conv', True, [3, 5]]]
    """
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in entries]


def flatten_entries(events: Iterable[Mapping[str, Any]]) -> list[Entry]:
    """All entries of a list of prune events (each a dict with an ``"entries"`` list), in order."""
    return [list(e) for event in events for e in event.get("entries", [])]


def replay(module: nn.Module, example_inputs: Any, entries: Sequence[Sequence[Any]], forward_fn: Any = None) -> Lineage:
    """Cut ``module`` as ``entries`` say (in place) and return which indices of which parameter survived.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> lineage = replay(net, torch.zeros(1, 4), [["0", True, [1, 5]]])
        >>> tuple(net[0].weight.shape), tuple(net[2].weight.shape)
        ((6, 4), (2, 6))
    """
    if entries and _is_llm(entries[0]):
        from lightning_green.pruning.llm import replay_llm  # structure-aware: no tracing, no example input

        return replay_llm(module, entries)
    if entries:
        # A tensor a module makes on its first forward (Lightning's demo Transformer's positional encoding) must
        # exist before the session, which cuts such tensors with the width they carry, as in the run that pruned.
        quiet_forward(module, Probe(example_inputs, forward_fn, "the example input"))
    with pruning_session(module) as lineage:
        if entries:
            graph = build_graph(module, example_inputs, forward_fn)
            graph.load_pruning_history(plain_entries(entries))
    return lineage


class Architecture:
    """A module's architecture before its prunes, without weights: what lets a pruned module load an earlier checkpoint.

    A checkpoint's history replays on the architecture it started from, so a module cut further since (a fit's last
    prune, then ``trainer.test(ckpt_path="best")`` of an earlier epoch) is first put back to it: :meth:`restore`
    gives every tensor whose shape the prunes changed its old shape again (uninitialised, for the checkpoint to
    fill), brings back removed submodules (decoder layers) and the widths (``in_features``, an HF ``config``, ...).
    What the prunes did not change stays as it is: tensors of the same shape, floats, a LightningModule's own
    attributes, anything added since. Costs no memory for the weights (a copy on the ``meta`` device); kept as
    values are only the non-persistent buffers (a checkpoint does not hold them) and the tensors a prune may cut
    with a layer (:func:`~lightning_green.pruning.graph.coupled_tensors`, e.g. a positional encoding).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> arch = Architecture(net)
        >>> _ = replay(net, torch.zeros(1, 4), [["0", True, [1, 5]]])
        >>> arch.differs(net), tuple(net[2].weight.shape)
        (True, (2, 6))
        >>> arch.restore(net)
        >>> arch.differs(net), tuple(net[0].weight.shape), net[2].in_features
        (False, (8, 4), 8)
    """

    def __init__(self, module: nn.Module) -> None:
        # A LightningModule's own attributes (datasets, tokenizers, arrays) are the user's, not the architecture:
        # the copy refers to them instead of copying them.
        self._keep = [v for k, v in vars(module).items() if _users(module, k, v)]
        self._copy = _meta_copy(module, self._keep)
        self._shapes = {k: tuple(v.shape) for k, v in self._copy.state_dict().items() if hasattr(v, "shape")}
        self._values: dict[tuple[str, str], torch.Tensor] = {}
        coupled = {(id(m), k) for m, k, _ in coupled_tensors(module)}
        for path, m in module.named_modules():
            kept = [(k, b) for k, b in m._buffers.items() if b is not None and k in m._non_persistent_buffers_set]
            kept += [(k, v) for k, v in vars(m).items() if torch.is_tensor(v) and (id(m), k) in coupled]
            kept += [(k, b) for k, b in m._buffers.items() if b is not None and (id(m), k) in coupled]
            for k, t in kept:
                self._values[(path, k)] = t.detach().clone()

    def differs(self, module: nn.Module) -> bool:
        """Whether ``module``'s tensors (which ones, their shapes) are not this architecture's."""
        own = {k: tuple(v.shape) for k, v in module.state_dict().items() if hasattr(v, "shape")}
        return any(own.get(k) != shape for k, shape in self._shapes.items())

    def removed(self, module: nn.Module) -> set[str]:
        """State-dict keys of this architecture that ``module`` no longer has (decoder layers removed since)."""
        return set(self._shapes) - set(module.state_dict())

    def restore(self, module: nn.Module) -> None:
        """Put ``module`` (in place, the same object) back to this architecture; load a state dict afterwards.

        A new tensor is on the device and in the dtype of ``module``'s tensor of that name (else as captured).
        Tied parameters stay tied.
        """
        fresh = _meta_copy(self._copy, self._keep)
        live = dict(module.named_parameters(remove_duplicate=False))
        live.update(module.named_buffers(remove_duplicate=False))
        default = next((t.device for t in live.values()), torch.device("cpu"))
        made: dict[int, torch.Tensor] = {}

        def real(path: str, t: torch.Tensor) -> torch.Tensor:
            owner, _, key = path.rpartition(".")
            like = live.get(path)
            device = like.device if like is not None else default
            if (owner, key) in self._values:  # a value no checkpoint holds
                return self._values[(owner, key)].clone().to(device)
            if id(t) not in made:
                dtype = like.dtype if like is not None and t.is_floating_point() else t.dtype
                value = torch.empty(t.shape, device=device, dtype=dtype)
                made[id(t)] = (
                    nn.Parameter(value, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else value
                )
            return made[id(t)]

        _graft(module, fresh, "", real, self._values, root=isinstance(module, LightningModule))


def _users(module: nn.Module, key: str, value: Any) -> bool:
    """Whether attribute ``key`` of ``module`` is the user's data (kept by reference in an :class:`Architecture`)."""
    return (
        isinstance(module, LightningModule)
        and not key.startswith("_")
        and not isinstance(value, (nn.Module, torch.Tensor, int, float, str, bool, type(None)))
    )


def _widthlike(value: Any) -> bool:
    """An attribute a prune may set: an int (a width, a head count), a tuple of ints, or a Hugging Face config."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int) or (isinstance(value, (tuple, list)) and value and all(type(v) is int for v in value)):
        return True
    return any(c.__name__ in ("PreTrainedConfig", "PretrainedConfig") for c in type(value).__mro__)  # transformers 5, 4


def _graft(live: nn.Module, fresh: nn.Module, path: str, real: Any, values: Mapping, root: bool = False) -> None:
    """Give ``live`` (kept, the same object) ``fresh``'s shapes, widths and submodules where they differ."""
    if type(live).__module__.startswith("torchmetrics."):
        return  # a metric's states are not the model's
    prefix = f"{path}." if path else ""
    for k, p in fresh._parameters.items():
        own = live._parameters.get(k)
        if p is not None and (own is None or own.shape != p.shape):
            live._parameters[k] = real(prefix + k, p)
    for k, b in fresh._buffers.items():
        own = live._buffers.get(k)
        if b is not None and (own is None or own.shape != b.shape):
            live._buffers[k] = real(prefix + k, b)
    for k, v in vars(fresh).items():
        if k.startswith("_") or k == "training" or k not in vars(live):
            continue
        own = vars(live)[k]
        if torch.is_tensor(own) and not isinstance(own, nn.Parameter):
            if (path, k) in values and own.shape != values[(path, k)].shape:
                vars(live)[k] = values[(path, k)].clone().to(own.device)  # a coupled tensor the prunes cut
            elif v is None and not root:
                vars(live)[k] = None  # made on the first forward since (cut with its layer): made again
        elif _widthlike(v) and (not root or k in WIDTH_ATTRIBUTES) and own != v:
            vars(live)[k] = v
    for k, child in fresh._modules.items():
        own = live._modules.get(k)
        if child is None:
            continue
        if own is not None and type(own) is type(child):
            _graft(own, child, prefix + k, real, values)
        else:  # removed by a prune (a decoder layer): the captured one, materialised
            _materialise(child, prefix + k, real)
            live._modules[k] = child


def _materialise(module: nn.Module, path: str, real: Any) -> None:
    for name, m in module.named_modules(remove_duplicate=False):
        prefix = f"{path}.{name}." if name else f"{path}."
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = real(prefix + k, p)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = real(prefix + k, b)


def _is_llm(entry: Sequence[Any]) -> bool:
    # Entries of the Hugging Face LLM pruner name "<model path>::<kind>::<layer>" (lightning_green.pruning.llm).
    return "::" in str(entry[0])


def find_pruning_state(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The :class:`~lightning_green.StructuredPruning` state stored in a Lightning checkpoint dict, if any."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("StructuredPruning") and isinstance(state, Mapping) and "history" in state:
            return dict(state)
    return None


def shapes_differ(
    module: nn.Module, state_dict: Mapping[str, Any], keys: bool = False, under: Sequence[str] = ("",)
) -> bool:
    """Whether some tensor of ``state_dict`` has another shape than the same entry of ``module``.

    With ``keys``, a tensor under one of the prefixes ``under`` that only one of them has counts as well (decoder
    layers removed by the pruning leave their weights out of the checkpoint; weights left out elsewhere, say a frozen
    teacher's, do not count). Non-persistent buffers are in neither, so they never count.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
        >>> shapes_differ(net, {"0.weight": torch.zeros(6, 4)})
        True
        >>> same = {"0.weight": torch.zeros(8, 4)}  # the other tensors are missing
        >>> shapes_differ(net, same), shapes_differ(net, same, keys=True), shapes_differ(net, same, True, ["2."])
        (False, True, False)
    """
    own = {k: v for k, v in module.state_dict().items() if hasattr(v, "shape")}
    theirs = {k: v for k, v in state_dict.items() if hasattr(v, "shape")}
    if keys and any(k.startswith(tuple(under)) for k in own.keys() ^ theirs.keys()):
        return True
    return any(k in own and own[k].shape != v.shape for k, v in theirs.items())


def rebuild_from_checkpoint(
    module: nn.Module,
    checkpoint: Mapping[str, Any],
    example_inputs: Any = None,
    state: Mapping[str, Any] | None = None,
    owner: str = "load_pruned",
    forward_fn: Any = None,
    architecture: Architecture | None = None,
) -> bool:
    """Cut ``module`` to the shapes of ``checkpoint["state_dict"]`` by replaying its pruning history.

    The module is left exactly as it was when this raises.

    Args:
        module: The model as its constructor builds it, or cut since from ``architecture``.
        checkpoint: A loaded Lightning checkpoint.
        example_inputs: An input for tracing; ``None`` uses ``module.example_input_array``.
        state: The :class:`~lightning_green.StructuredPruning` state; ``None`` looks it up in ``checkpoint``.
        owner: Who is asking, for error messages.
        forward_fn: ``forward_fn(module, example_inputs)`` when the pruned module is not called with the inputs.
        architecture: The :class:`Architecture` the checkpoint's history starts from, if ``module`` may have been
            cut since (it is put back to it first); ``None`` when ``module`` is as its constructor builds it.

    Returns:
        Whether anything was cut (``False`` when the module already has the checkpoint's tensors and shapes).

    Raises:
        ValueError: The shapes differ and there is no history (a ``save_weights_only=True`` checkpoint), the module
            has no example input, or the replay does not give the checkpoint's shapes (other hyperparameters).
    """
    weights = checkpoint.get("state_dict", checkpoint)
    state = state if state is not None else find_pruning_state(checkpoint)
    name = (state or {}).get("module")
    if name:  # StructuredPruning(module=...) pruned a submodule: its entries and weights are relative to it
        module = module.get_submodule(name)
        prefix = name + "."
        weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    entries = flatten_entries((state or {}).get("history", []))
    # Decoder layers a recorded history removed leave whole tensors out, not only other shapes: tensors that only one
    # side has count inside those HF models. Elsewhere only shapes count, so a checkpoint that leaves some weights out
    # on purpose (a frozen teacher, strict_loading=False) still loads.
    dropped_in = [str(e[0]).split("::", 1)[0] for e in entries if _is_llm(e) and str(e[0]).endswith("::layers::")]
    under = [f"{path}." if path else "" for path in dropped_in]
    removed = architecture.removed(module) if architecture is not None else set()
    if not shapes_differ(module, weights, keys=bool(under), under=under or ("",)) and removed.isdisjoint(weights):
        return False  # (a checkpoint holding layers the module's own prunes removed since differs too)
    if not state:
        raise ValueError(
            f"{owner}: the checkpoint has weights of other shapes than the module but no StructuredPruning history "
            "(was it saved with `save_weights_only=True`?); it cannot be rebuilt."
        )
    if example_inputs is None:
        example_inputs = getattr(module, "example_input_array", None)
    # A structure-aware (LLM) replay needs no tracing, no example input; nor does an empty history.
    traced = bool(entries) and not _is_llm(entries[0])
    if example_inputs is None and state.get("example") and traced:
        from lightning_green.pruning.verify import example_from_spec

        example_inputs = example_from_spec(state["example"])  # the first batch's shapes, as zeros
    if example_inputs is None and traced:
        raise ValueError(
            f"{owner}: the module has no `example_input_array`; rebuilding the pruned shapes traces the module: set "
            "`example_input_array` (an input of its forward) or pass `example_inputs`."
        )
    device = next(module.parameters()).device
    saved = ModelState(module)  # by reference: no copy of the weights
    try:
        if architecture is not None and architecture.differs(module):
            architecture.restore(module)  # cut since the history's start (a fit's later prunes): back to it first
        replay(module, move_data_to_device(example_inputs, device), entries, forward_fn)
        if shapes_differ(module, weights):
            raise ValueError(
                f"{owner}: replaying the checkpoint's pruning history did not give its shapes; was the module built "
                "with other hyperparameters than in training? The module was left as it was."
            )
    except BaseException:
        saved.restore()
        raise
    return True


_COMPILED = "_orig_mod"  # torch.compile's OptimizedModule holds the module it compiled under this name


def _strip_compiled(name: str) -> str:
    return ".".join(part for part in name.split(".") if part != _COMPILED)


def uncompiled_names(module: nn.Module, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` named as ``module`` names its tensors, when only the checkpoint's had a compiled submodule.

    A ``torch.compile``'d submodule names them ``net._orig_mod.0.weight``, the module built without compiling (it
    compiles in ``configure_model``) ``net.0.weight``. The weights and the StructuredPruning history's layer names are
    renamed; a module compiled the same way, or a checkpoint without such names, is left as it is.

    Example:
        >>> ck = {"state_dict": {"net._orig_mod.0.weight": 1}}
        >>> uncompiled_names(nn.Sequential(), ck)["state_dict"]
        {'net.0.weight': 1}
    """
    weights = checkpoint.get("state_dict", checkpoint)
    marker = f"{_COMPILED}."
    if not any(marker in k for k in weights) or any(marker in k for k in module.state_dict()):
        return checkpoint
    renamed = {_strip_compiled(k): v for k, v in weights.items()}
    if "state_dict" in checkpoint:
        checkpoint["state_dict"] = renamed
    else:
        checkpoint = renamed

    def strip(value: Any) -> Any:
        if isinstance(value, str):
            return _strip_compiled(value) if _COMPILED in value.split(".") else value
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        return value

    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("StructuredPruning") and isinstance(state, dict):
            for name in ("history", "module"):
                if name in state:
                    state[name] = strip(state[name])
    return checkpoint


class LoadsPrunedCheckpoints:
    """LightningModule mixin: checkpoints written under StructuredPruning load without the callback.

    Lightning's own loading builds the module as its constructor does (dense) and then fails with torch's size
    mismatch on a pruned checkpoint: ``MyModule.load_from_checkpoint(path)`` and ``Trainer.validate/test/predict(model,
    ckpt_path=path)`` without :class:`~lightning_green.StructuredPruning` in the callbacks. With this mixin listed
    first, the module's ``on_load_checkpoint`` (which Lightning calls before it loads the weights) rebuilds the pruned
    architecture from the checkpoint's pruning history, as :func:`load_pruned` does::

        class MyModule(LoadsPrunedCheckpoints, LightningModule): ...

        model = MyModule.load_from_checkpoint("epoch=9.ckpt")  # the pruned shapes, the checkpoint's weights

    The rebuild traces the module on its ``example_input_array`` (a Hugging Face causal LM needs none). The demo
    modules have the mixin. With StructuredPruning in the callbacks it does nothing more (the callback rebuilds
    first). A checkpoint without pruning history loads as before.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if find_pruning_state(checkpoint) is not None:
            rebuild_from_checkpoint(self, checkpoint, owner=f"{type(self).__name__}.on_load_checkpoint")  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


def load_pruned(
    module: nn.Module,
    ckpt_path: str | os.PathLike,
    example_inputs: Any = None,
    map_location: Any = "cpu",
    strict: bool = True,
    forward_fn: Any = None,
) -> nn.Module:
    """Rebuild the pruned architecture recorded in a checkpoint on a freshly built ``module``, then load its weights.

    Use it for inference on a model trained with :class:`~lightning_green.StructuredPruning`::

        model = load_pruned(DigitsCNN(), "epoch=9.ckpt").eval()

    The checkpoint is read with ``torch.load(..., weights_only=True)``. A module that already has the pruned
    shapes is not cut again.

    Args:
        module: The model as its constructor builds it (dense), e.g. the same ``LightningModule`` class and
            hyperparameters as in training.
        ckpt_path: A checkpoint written by Lightning while :class:`~lightning_green.StructuredPruning` was active.
        example_inputs: An input for tracing; ``None`` uses ``module.example_input_array``.
        map_location: Passed to ``torch.load``.
        strict: Passed to ``load_state_dict``.
        forward_fn: ``forward_fn(module, example_inputs)``, as given to the callback, when the pruned module is not
            called with the inputs.

    Returns:
        ``module``, pruned and with the checkpoint's weights.

    Raises:
        ValueError: See :func:`rebuild_from_checkpoint`.
    """
    checkpoint = uncompiled_names(module, torch.load(ckpt_path, map_location=map_location, weights_only=True))
    rebuild_from_checkpoint(module, checkpoint, example_inputs, forward_fn=forward_fn)
    module.load_state_dict(checkpoint.get("state_dict", checkpoint), strict=strict)
    return module
