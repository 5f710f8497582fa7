"""Check a prune by running the model: how to call it, what it returned before, and a forward without side effects.

Torch-pruning follows parameters, not buffers, attributes or Python-side shape logic (a ``view`` with a hard-coded
width), so no analysis foresees every coupling. :func:`prune_verified` therefore runs the pruned module once on the
example input and compares the structure and shapes of its output with the pre-prune output; on a failure it puts
the pre-prune model back exactly (:class:`ModelState`), finds the groups responsible by bisection, leaves them whole
and prunes again without them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelState",
    "Probe",
    "VerifiedPrune",
    "describe",
    "example_from_spec",
    "example_spec",
    "first_line",
    "has_own_forward",
    "probe_from_batch",
    "prune_verified",
    "quiet_forward",
    "tensors_in",
]

log = logging.getLogger(__name__)

#: ``forward_fn(module, example)`` → the module's output (it calls the module itself).
ForwardFn = Callable[[nn.Module, Any], Any]


def has_own_forward(module: nn.Module) -> bool:
    """Whether ``module``'s class defines a ``forward`` (``LightningModule`` and ``nn.Module`` do not)."""
    import lightning.pytorch as pl

    forward = getattr(type(module), "forward", None)
    return forward is not None and forward not in (nn.Module.forward, pl.LightningModule.forward)


@dataclass(frozen=True)
class Probe:
    """How to run the module being pruned.

    ``forward_fn(module, example)``, or ``module(*example)`` / ``module(**example)`` / ``module(example)`` as
    torch-pruning calls it.
    """

    example: Any
    forward_fn: ForwardFn | None = None
    #: Where the example came from, for messages ("example_input_array", "the first training batch", ...).
    source: str = "example_input_array"

    def __call__(self, module: nn.Module) -> Any:
        """Run ``module`` on the example; returns its output."""
        x = self.example
        if self.forward_fn is not None:
            return self.forward_fn(module, x)
        if isinstance(x, (tuple, list)):
            return module(*x)
        if isinstance(x, Mapping):
            return module(**x)
        return module(x)


def describe(output: Any) -> Any:
    """The structure and tensor shapes of ``output`` as plain values (what a prune must not change).

    Example:
        >>> describe((torch.zeros(2, 3), {"n": 1}))
        ('tuple', (('tensor', (2, 3), 'torch.float32'), ('dict', (('n', 'int'),))))
    """
    if torch.is_tensor(output):
        return ("tensor", tuple(output.shape), str(output.dtype))
    if isinstance(output, Mapping):
        return ("dict", tuple((str(k), describe(v)) for k, v in output.items()))
    if isinstance(output, (tuple, list)):
        return (type(output).__name__ if type(output) in (tuple, list) else "tuple", tuple(describe(v) for v in output))
    return type(output).__name__


def tensors_in(output: Any) -> list[torch.Tensor]:
    """Every tensor in a nested output (tuples, lists, mappings, dataclass-like ``ModelOutput``s)."""
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in tensors_in(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in tensors_in(v)]
    return []


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Put back the global random streams (torch CPU and CUDA, Python, NumPy) on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py = random.getstate()
    try:
        import numpy as np

        np_state: Any = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        np, np_state = None, None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        if np is not None:
            np.random.set_state(np_state)


def quiet_forward(module: nn.Module, probe: Probe) -> Any:
    """Run ``probe`` on ``module`` with no trace left.

    No grad, eval mode; afterwards the modes, every buffer's values (BatchNorm running statistics, custom norms'
    statistics) and the global random streams (torch CPU/CUDA, Python, NumPy) are exactly as before.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
        >>> mean, state = net[1].running_mean.clone(), torch.get_rng_state()
        >>> tuple(quiet_forward(net, Probe(torch.ones(8, 3))).shape)
        (8, 4)
        >>> net.training, torch.equal(net[1].running_mean, mean), torch.equal(torch.get_rng_state(), state)
        (True, True, True)
    """
    modes = {m: m.training for m in module.modules()}
    buffers = [
        (m, k, b, b._version, b.detach().clone())
        for m in module.modules()
        for k, b in m._buffers.items()
        if b is not None
    ]
    try:
        with _rng_kept(), torch.no_grad():
            module.eval()
            return probe(module)
    finally:
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for m, k, b, version, value in buffers:
                m._buffers[k] = b  # a forward that replaced a buffer gets the old one back
                if b._version != version and b.shape == value.shape:
                    b.copy_(value)


def _hf_config_type() -> type | None:
    """The config base class of transformers, if it is loaded (a model can hold a config only then)."""
    mod = sys.modules.get("transformers.configuration_utils")
    if mod is None:
        return None
    return getattr(mod, "PreTrainedConfig", None) or getattr(mod, "PretrainedConfig", None)


class ModelState:
    """The exact pre-prune model, by reference.

    Undoing a prune that just failed its check puts back the very same parameter, buffer and gradient objects, so
    the optimizers (which hold those parameters) need no rebuild and the model is bit-identical. Costs no memory:
    torch-pruning creates new tensors and leaves the old ones alone. A Hugging Face config held by a module (which a
    cut writes its widths into) gets its fields back too.
    """

    def __init__(self, module: nn.Module) -> None:
        self._modules: list[tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        config_type = _hf_config_type()
        #: HF configs by id → (config, its fields): a cut replaces fields (``intermediate_size``, ``layer_types``).
        self._configs: dict[int, tuple[Any, dict[str, Any]]] = {}
        for m in module.modules():
            # A registered ``None`` (``Linear(bias=False)``) stays registered: its layer reads ``self.bias``.
            params = {k: None if p is None else (p, p.data, p.grad) for k, p in m._parameters.items()}
            buffers = dict(m._buffers)
            children = dict(m._modules)
            attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
            self._modules.append((m, params, buffers, children, attrs))
            if config_type is not None:
                for v in attrs.values():
                    if isinstance(v, config_type) and id(v) not in self._configs:
                        self._configs[id(v)] = (v, dict(vars(v)))

    def restore(self) -> None:
        """Put every module back as it was at capture."""
        for config, fields in self._configs.values():
            vars(config).clear()
            vars(config).update(fields)
        for m, params, buffers, children, attrs in self._modules:
            for k in [k for k in vars(m) if not k.startswith("_") and k != "training" and k not in attrs]:
                delattr(m, k)  # attributes set since (e.g. a cut copy of a coupled tensor)
            vars(m).update(attrs)
            m._buffers.clear()
            m._buffers.update(buffers)
            m._modules.clear()
            m._modules.update(children)
            m._parameters.clear()
            for k, saved in params.items():
                if saved is None:
                    m._parameters[k] = None
                    continue
                p, data, grad = saved
                if p.data.data_ptr() != data.data_ptr() or p.data.shape != data.shape:
                    p.data = data
                p.grad = grad
                m._parameters[k] = p
                if isinstance(m, nn.RNNBase):
                    setattr(m, k, p)  # an RNN runs on its own list of its weights, which only setattr updates


@dataclass
class VerifiedPrune:
    """What :func:`prune_verified` did."""

    #: The prune that passed its check; ``None`` when every try failed (the model is as before).
    result: Any = None
    #: Module names newly left whole → why (the first line of the failure).
    left_whole: dict[str, str] = field(default_factory=dict)
    #: Check forwards run and their total time.
    checks: int = 0
    check_s: float = 0.0
    #: Prunes tried (1 when the first passed).
    attempts: int = 0
    #: Why the last failed try failed (its first line), when no prune passed.
    error: str | None = None


def prune_verified(
    module: nn.Module,
    probe: Probe,
    prune: Callable[[frozenset[str]], Any],
    roots: Callable[[Any], Sequence[str]],
    expected: Any = None,
    max_rounds: int = 4,
) -> VerifiedPrune:
    """Prune ``module`` with ``prune(ignored_names)``, check it with one forward, undo and bisect on failure.

    Args:
        module: The model being pruned (in place).
        probe: How to run it.
        prune: Cuts ``module`` in place, leaving the given module names whole; returns a result.
        roots: The root module names of the groups a result cut.
        expected: :func:`describe` of the pre-prune output; ``None`` runs the model once more to get it.
        max_rounds: Prunes again without the culprits at most this often before giving up.

    Returns:
        The passing prune and the modules left whole; ``result=None`` (the model exactly as before) when no group
        can be cut safely.
    """
    out = VerifiedPrune()
    if expected is None:
        expected = describe(quiet_forward(module, probe))
    state = ModelState(module)

    def attempt(ignored: frozenset[str]) -> tuple[Any, str | None]:
        out.attempts += 1
        try:
            result = prune(ignored)
        except BaseException:  # also KeyboardInterrupt: never leave a half-made cut
            state.restore()
            raise
        error = getattr(result, "error", None)  # the cut model already failed (e.g. in the MAC count)
        if error is None:
            t0 = time.perf_counter()
            try:
                got = describe(quiet_forward(module, probe))
                if got != expected:
                    error = f"the output changed from {_short(expected)} to {_short(got)}"
            except Exception as exc:  # any failure of the pruned model is what this check is for
                error = first_line(exc)
            except BaseException:  # KeyboardInterrupt in the check: the cut is not verified, undo it
                state.restore()
                raise
            out.checks += 1
            out.check_s += time.perf_counter() - t0
        if error is not None:
            state.restore()
        return result, error

    def culprits(cands: list[str], others: frozenset[str], error: str) -> dict[str, str]:
        """Roots among ``cands`` whose cut fails (pruning all of ``cands`` failed with ``error``)."""
        if len(cands) == 1:
            return {cands[0]: error}
        half = len(cands) // 2
        found: dict[str, str] = {}
        for part in (cands[:half], cands[half:]):
            rest = frozenset(cands) - frozenset(part)
            _, err = attempt(others | rest)
            if err is None:
                state.restore()
            else:
                found.update(culprits(part, others | rest, err))
        return found or dict.fromkeys(cands, error)  # only together do they fail: leave them all whole

    ignored: frozenset[str] = frozenset()
    for _ in range(max_rounds):
        result, error = attempt(ignored)
        if error is None:  # passed (it may have cut nothing: a target already met, everything left whole)
            out.result = result
            out.error = None
            return out
        blame = getattr(result, "blame", None)  # the group whose cut itself raised
        cut = [r for r in dict.fromkeys(roots(result)) if r not in ignored]
        out.error = error
        if blame is None and not cut:
            break
        if blame is not None:
            found = {blame: error}
        else:
            log.debug("prune failed its check (%s); bisecting over %d groups", error, len(cut))
            found = culprits(cut, ignored, error)
        out.left_whole.update(found)
        ignored = ignored | frozenset(found)
        state.restore()
    return out


def _short(desc: Any, limit: int = 160) -> str:
    text = repr(desc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe_from_batch(module: nn.Module, batch: Any, forward_fn: ForwardFn | None = None) -> tuple[Probe, str]:
    """A :class:`Probe` built from a training batch, and which part of it was used (for the message).

    With ``forward_fn`` the batch is passed as is. Otherwise the first of these that ``module`` accepts: the batch's
    first element (``(x, y)`` batches), the batch itself (a tensor, a tuple of arguments, a mapping of keyword
    arguments such as a ``BatchEncoding``), a mapping as one argument (``forward(self, batch: dict)``).

    Raises:
        ValueError: ``module`` takes none of them (the message holds each failure's first line).
    """
    if forward_fn is not None:
        return Probe(batch, forward_fn, "the first training batch"), "the batch through `forward_fn`"
    candidates: list[tuple[Any, str]] = []
    if isinstance(batch, (tuple, list)) and batch:
        candidates.append(((batch[0],), "batch[0]"))
    if isinstance(batch, Mapping):
        candidates.append((dict(batch), "the batch as keyword arguments"))
        candidates.append(((dict(batch),), "the batch as one argument"))
    else:
        candidates.append((batch, "the batch"))
    errors = []
    for example, what in candidates:
        probe = Probe(example, None, f"the first training batch ({what})")
        try:
            quiet_forward(module, probe)
        except Exception as exc:
            errors.append(f"{what}: {first_line(exc)}")
            continue
        return probe, what
    raise ValueError("; ".join(errors))


def example_spec(example: Any) -> Any:
    """Shapes and dtypes of an example input as plain values (what a checkpoint keeps to trace the model again).

    Example:
        >>> spec = example_spec((torch.zeros(2, 3, dtype=torch.long), {"mask": torch.ones(2)}))
        >>> spec
        ['tuple', [['tensor', [2, 3], 'int64'], ['dict', [['mask', ['tensor', [2], 'float32']]]]]]
        >>> example_from_spec(spec)[0].dtype
        torch.int64
    """
    if torch.is_tensor(example):
        return ["tensor", list(example.shape), str(example.dtype).removeprefix("torch.")]
    if isinstance(example, Mapping):
        return ["dict", [[str(k), example_spec(v)] for k, v in example.items()]]
    if isinstance(example, (tuple, list)):
        return ["tuple" if isinstance(example, tuple) else "list", [example_spec(v) for v in example]]
    return ["value", example if isinstance(example, (int, float, bool, str, type(None))) else None]


def example_from_spec(spec: Any, device: Any = None) -> Any:
    """Zeros with the shapes and dtypes :func:`example_spec` recorded (enough to trace the model's structure)."""
    kind, value = spec[0], spec[1]
    if kind == "tensor":
        return torch.zeros(value, dtype=getattr(torch, spec[2]), device=device)
    if kind == "dict":
        return {k: example_from_spec(v, device) for k, v in value}
    if kind in ("tuple", "list"):
        items = [example_from_spec(v, device) for v in value]
        return tuple(items) if kind == "tuple" else items
    return value
