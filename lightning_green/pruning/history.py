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
from lightning.pytorch.utilities import move_data_to_device
from torch import nn

from lightning_green.pruning.graph import Lineage, build_graph, pruning_session

__all__ = [
    "STATE_VERSION",
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
    with pruning_session(module) as lineage:
        if entries:
            graph = build_graph(module, example_inputs, forward_fn)
            graph.load_pruning_history(plain_entries(entries))
    return lineage


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
) -> bool:
    """Cut ``module`` to the shapes of ``checkpoint["state_dict"]`` by replaying its pruning history.

    Args:
        module: The model as its constructor builds it.
        checkpoint: A loaded Lightning checkpoint.
        example_inputs: An input for tracing; ``None`` uses ``module.example_input_array``.
        state: The :class:`~lightning_green.StructuredPruning` state; ``None`` looks it up in ``checkpoint``.
        owner: Who is asking, for error messages.
        forward_fn: ``forward_fn(module, example_inputs)`` when the pruned module is not called with the inputs.

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
    if not shapes_differ(module, weights, keys=bool(under), under=under or ("",)):
        return False
    if not state:
        raise ValueError(
            f"{owner}: the checkpoint has weights of other shapes than the module but no StructuredPruning history "
            "(was it saved with `save_weights_only=True`?); it cannot be rebuilt."
        )
    if example_inputs is None:
        example_inputs = getattr(module, "example_input_array", None)
    llm = bool(entries) and _is_llm(entries[0])  # structure-aware replay: no tracing, no example input
    if example_inputs is None and state.get("example") and not llm:
        from lightning_green.pruning.verify import example_from_spec

        example_inputs = example_from_spec(state["example"])  # the first batch's shapes, as zeros
    if example_inputs is None and not llm:
        raise ValueError(f"{owner}: the module has no `example_input_array`; pass `example_inputs` to trace it.")
    device = next(module.parameters()).device
    replay(module, move_data_to_device(example_inputs, device), entries, forward_fn)
    if shapes_differ(module, weights):
        raise ValueError(
            f"{owner}: replaying the checkpoint's pruning history did not give its shapes; was the module built "
            "with other hyperparameters than in training?"
        )
    return True


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
    checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    rebuild_from_checkpoint(module, checkpoint, example_inputs, forward_fn=forward_fn)
    module.load_state_dict(checkpoint.get("state_dict", checkpoint), strict=strict)
    return module
