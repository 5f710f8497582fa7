"""Export a model to ONNX, ``torch.export`` (``.pt2``) or Hugging Face ``save_pretrained``, then check the export.

Every export is checked: the original (eager, fp32) and the exported model run on the example input and on the
check inputs (e.g. a datamodule batch), and the export fails when an output differs by more than
``atol + rtol * |reference|`` (the tolerance and the largest difference are printed). ONNX runs through ONNX Runtime,
``.pt2`` through ``torch.export.load``, a Hugging Face folder through ``from_pretrained``. Where the forward takes an
``attention_mask`` beside token ids, the outputs at its padding positions (0) are not compared (see :func:`_compare`).

``onnx``, ``onnxscript`` and ``onnxruntime`` (the ``[export]`` extra) and ``transformers`` are imported only here,
inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_green._internal.validation import InvalidArgumentError, check_choice, check_number, fail
from lightning_green.export.load import check_output_path, example_inputs_of

__all__ = [
    "FORMATS",
    "CheckResult",
    "ExportError",
    "ExportResult",
    "check_export_out",
    "check_opset",
    "export_model",
    "find_pretrained",
    "load_exported",
    "onnx_opsets",
    "onnx_session",
    "require_onnx",
    "tensor_outputs",
]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torch-export", "hf")
Format = Literal["onnx", "torch-export", "hf"]


class ExportError(InvalidArgumentError):
    """The model cannot be exported to the format, or the export's outputs differ from the model's."""


@dataclass(frozen=True)
class CheckResult:
    """One output check: which input, its batch size, the largest difference and the tolerance."""

    input: str
    batch_size: int
    max_abs_diff: float
    atol: float
    rtol: float
    ok: bool
    #: Padding positions (``attention_mask`` 0) of the input whose outputs were not compared: they mean nothing.
    padding_not_compared: int = 0


@dataclass
class ExportResult:
    """What an export wrote and how it checked out."""

    format: str
    path: str
    files: list[str]
    size_bytes: int
    params: int
    export_s: float
    checks: list[CheckResult] = field(default_factory=list)
    macs: float | None = None
    #: The one sequence length the export takes, when its token ids' time axis could not be made dynamic.
    fixed_seq_len: int | None = None
    #: The ONNX opset the file was written in (``None`` for other formats).
    opset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {**asdict(self), "checks": [asdict(c) for c in self.checks]}

    def summary(self) -> str:
        """Lines for the terminal: file (and ONNX opset), size, parameters, each check with its tolerance."""
        opset = f" (opset {self.opset})" if self.opset is not None else ""
        lines = [
            f"exported {self.format}{opset}: {self.path} ({_fmt_bytes(self.size_bytes)}, {self.params:,} parameters"
            + (f", {self.macs / 1e6:.3g} M MACs/sample" if self.macs else "")
            + f") in {self.export_s:.1f} s"
        ]
        if self.fixed_seq_len is not None:
            lines.append(
                f"  sequence length fixed at {self.fixed_seq_len} (the model cannot be traced with a dynamic one)"
            )
        for c in self.checks:
            padding = (
                f" ({c.padding_not_compared} padding position{'s' * (c.padding_not_compared != 1)} of the "
                "attention mask not compared)"
                if c.padding_not_compared
                else ""
            )
            lines.append(
                f"  check {c.input} (batch {c.batch_size}): max |diff| {c.max_abs_diff:.3g} "
                f"{'<=' if c.ok else '>'} atol {c.atol:g} + rtol {c.rtol:g}·|ref| — {'ok' if c.ok else 'FAILED'}"
                + padding
            )
        return "\n".join(lines)


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


# ------------------------------------------------------------------------------------------------ outputs
def _as_tensors(out: Any) -> tuple[torch.Tensor, ...]:
    """Tensors of a forward's output: a tensor, a tuple/list, or a mapping/ModelOutput (``logits`` first)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):  # transformers' ModelOutput is an OrderedDict
        if isinstance(out.get("logits"), torch.Tensor):
            return (out["logits"],)
        return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
    if isinstance(out, (tuple, list)):
        return tuple(t for o in out for t in _as_tensors(o))
    return ()


class _TensorOutputs(nn.Module):
    """Wrap a model whose forward returns a ModelOutput/dict so that it returns plain tensors (``logits`` alone)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> Any:
        out = _as_tensors(self.model(*args))
        return out[0] if len(out) == 1 else out


def tensor_outputs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> nn.Module:
    """``model`` itself when its forward returns tensors, else a wrapper returning them (for export and ORT)."""
    with torch.no_grad():
        out = model(*example)
    if isinstance(out, torch.Tensor) or (
        isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out)
    ):
        return model
    if not _as_tensors(out):
        raise ExportError(
            f"export(model={type(model).__name__}): the forward returns {type(out).__name__} with no tensor; "
            "export needs a forward that returns tensors (or a dict/ModelOutput holding them)."
        )
    return _TensorOutputs(model).eval()


def find_pretrained(model: nn.Module) -> nn.Module | None:
    """The Hugging Face ``PreTrainedModel`` that ``model`` is or holds, else ``None``.

    The rule :class:`~lightning_green.callbacks.StructuredPruning` prunes by
    (:func:`~lightning_green.pruning.llm.find_hf_model`): among the outermost HF models inside ``model``, the one with
    trainable parameters, so a frozen teacher beside the (pruned) student is not the one saved.

    Raises:
        ExportError: Several HF models could be the one (several trainable, or none trainable and several).
    """
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    if isinstance(model, PreTrainedModel):
        return model
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, PreTrainedModel) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, m))
    if len(found) <= 1:
        return found[0][1] if found else None
    trainable = [(name, m) for name, m in found if any(p.requires_grad for p in m.parameters())]
    if len(trainable) == 1:
        return trainable[0][1]
    names = [name for name, _ in trainable or found]
    which = "trainable " if trainable else ""
    raise ExportError(
        f"export(format='hf'): {type(model).__name__} holds {len(names)} {which}Hugging Face models "
        f"({', '.join(map(repr, names))}), so which one to save is ambiguous (the one saved is the only trainable "
        f"one, as StructuredPruning prunes); pass that model itself, e.g. export_model(model.{names[-1]}, ...)."
    )


# ------------------------------------------------------------------------------------------------ blockers
_OP = re.compile(r"(aten[.:]{1,2}[A-Za-z0-9_.]+|<OpOverload\(op='[^']+'[^>]*>)")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(err: BaseException) -> str:
    text = " ".join(_ANSI.sub("", str(err)).split())
    return (text[:300] + "...") if len(text) > 300 else text


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Any:
    """Put ``models`` in eval mode, then each submodule back in its own mode (as Lightning does around validation).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> net[0].eval()  # doctest: +ELLIPSIS
        Linear(...)
        >>> with eval_mode(net):
        ...     print(net.training, net[1].training)
        False False
        >>> net.training, net[0].training, net[1].training
        (True, False, True)
    """
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def quiet() -> Any:
    """Keep the exporters' progress prints and graph dumps off stdout (``LIGHTNING_GREEN_DEBUG=1`` shows them)."""
    if os.environ.get("LIGHTNING_GREEN_DEBUG"):
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


_PLAIN = (torch.Tensor, type(None), bool, int, float, str)


def _blocking_module(
    model: nn.Module, example: tuple[torch.Tensor, ...], fails: Callable[..., bool], budget_s: float = 30.0
) -> str | None:
    """The deepest submodule whose own export fails too (``fails(module, args, kwargs)``), as ``name (Class)``.

    Records every submodule's inputs in one eager forward, then walks down from the root through children that fail
    on their own (children called with other than tensors and plain values are skipped), for at most ``budget_s``.
    """
    inputs: dict[nn.Module, tuple[tuple, dict]] = {}

    def record(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.setdefault(mod, (args, kwargs))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(*example)
    except Exception:  # the eager forward itself fails: no smaller culprit to name
        return None
    finally:
        for h in hooks:
            h.remove()
    names = {m: n for n, m in model.named_modules()}
    current, found = model, None
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline:
        nxt = None
        for child in current.children():
            args, kwargs = inputs.get(child, (None, None))
            if args is None or not all(isinstance(a, _PLAIN) for a in (*args, *kwargs.values())):
                continue
            if not any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())):
                continue
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                failed = fails(child, args, kwargs)
            if failed:
                nxt = child
                break
            if time.perf_counter() >= deadline:
                break
        if nxt is None:
            break
        current = found = nxt
    return f"{names.get(found, '?')} ({type(found).__name__})" if found is not None else None


def _blocked(fmt: str, model: nn.Module, example: tuple, err: BaseException, owner: str | None = None) -> ExportError:
    """The one-line error for a model ``fmt`` cannot take, naming the op and the deepest failing submodule.

    ``owner`` starts the message (default ``export(format=...)``).
    """
    op = _OP.search(str(err))
    # ONNX export's first step is torch.export: a failure there is found faster by torch.export alone.
    step1 = fmt != "onnx" or "torch.export" in str(err).split("\n", 1)[0] or type(err).__name__ == "TorchExportError"
    where = _blocking_module(model, example, _export_fails if step1 else _onnx_fails)
    what = []
    if where:
        what.append(f"blocked in module {where}")
    if op:
        what.append(f"op {op.group(0)}")
    detail = "; ".join(what) or "see the error"
    name = type(model.model if isinstance(model, _TensorOutputs) else model).__name__
    return ExportError(
        f"{owner or f'export(format={fmt!r})'}: {name} cannot be exported to {fmt!r} ({detail}): "
        f"{type(err).__name__}: {_one_line(err)}"
    )


# ------------------------------------------------------------------------------------------------ exporters
def is_token_ids(x: torch.Tensor) -> bool:
    """An integer ``(batch, time)`` input: token ids (or their mask), whose time axis varies between calls.

    Only 2-D: an integer image ``(batch, channels, h, w)`` (uint8 pixels) has no time axis.
    """
    return x.dim() == 2 and not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def _batch_spec(
    model: nn.Module, example: tuple[torch.Tensor, ...], dynamic_seq: bool = False, inferred_batch: bool = False
) -> tuple[tuple[torch.Tensor, ...], tuple[Any, ...]]:
    """Inputs with batch 2 and a dynamic batch axis per input (a batch of 1 would be specialised by the tracer).

    With ``dynamic_seq`` the time axis (dim 1) of token-id inputs is dynamic too (``Dim.AUTO``: the exporter infers
    its range and that ids and mask share it), so a language model's export takes any sequence length.
    ``inferred_batch``: the batch axis is ``Dim.DYNAMIC`` (range inferred, an error if the model fixes it) instead of
    any batch size >= 1 (see :func:`_with_inferred_batch`).
    """
    batch = torch.export.Dim.DYNAMIC if inferred_batch else torch.export.Dim("batch", min=1)
    traced = tuple(torch.cat([x[:1]] * 2) if x.shape[0] != 2 else x for x in example)
    dynamic: tuple[Any, ...] = tuple(
        {0: batch, 1: torch.export.Dim.AUTO} if dynamic_seq and is_token_ids(x) else {0: batch} for x in traced
    )
    if isinstance(model, _TensorOutputs):  # forward(*args): the specs of all inputs are one entry, as a tuple
        dynamic = (dynamic,)
    return traced, dynamic


def _user_inputs(program: Any) -> list[Any]:
    """The traced values (fake tensors with symbolic shapes) of a ``torch.export`` program's user inputs, in order."""
    from torch.export.graph_signature import InputKind

    vals = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    return [vals.get(s.arg.name) for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]


def _seq_is_symbolic(program: Any, example: tuple[torch.Tensor, ...]) -> bool:
    """Whether ``program`` (a ``torch.export`` program) still has a symbolic time axis on every token-id input.

    With ``Dim.AUTO`` torch.export does not raise for a model that fixes the length (``math.sqrt(x.shape[1])``,
    ``torch.tensor(range(x.shape[1]))``): it specialises the axis to the traced length, and the program then takes
    only that length. Only the shapes of the program's inputs tell the two apart.
    """
    from torch.fx.experimental.symbolic_shapes import free_symbols

    users = _user_inputs(program)
    if len(users) != len(example):  # inputs we cannot match to the example: claim nothing
        return False
    # A symbol the exporter later found equal to the traced length stays a SymInt whose expression is that number
    # (no free symbol), so the axis counts as dynamic only when its size has a symbol the program's ranges constrain.
    symbols = {str(s) for s in program.range_constraints}

    def symbolic(v: Any) -> bool:
        if not isinstance(v, torch.Tensor) or v.dim() < 2:
            return False
        return bool({str(s) for s in free_symbols(v.shape[1])} & symbols)

    return all(symbolic(v) for v, x in zip(users, example, strict=True) if is_token_ids(x))


#: The smallest batch bound accepted from an inferred range: CUDA's grid limit, which pooling and normalisation
#: kernels impose. A lower bound comes from the model itself (a `torch._check`, a branch on the batch size): that
#: export is refused as before, with the exporter's own suggested fix.
KERNEL_BATCH_BOUND = 65535


def _with_inferred_batch(export: Callable[[bool], Any], example: tuple[torch.Tensor, ...]) -> Any:
    """``export(inferred_batch)``: first with any batch size, then, if a kernel bounds it, with the inferred range.

    Some kernels only take batches up to a limit and say so in a guard (CUDA's pooling and normalisation kernels:
    batch <= 65535, a grid dimension's limit): an export for *every* batch size then fails with "Constraints
    violated (batch)". The program for the batches those kernels take is what a user wants (the exporter's own
    suggested fix is ``Dim('batch', max=65535)``); ``Dim.DYNAMIC`` still fails for a model that fixes the batch, and a
    range that ends below :data:`KERNEL_BATCH_BOUND` (a bound of the model's own) is refused with the first error.
    """
    try:
        return export(False)
    except Exception as err:
        if "Constraints violated" not in str(err) or not hasattr(torch.export.Dim, "DYNAMIC"):
            raise
        try:
            program = export(True)
        except Exception:
            raise err from None
        if _batch_bound(program, example) < KERNEL_BATCH_BOUND:
            raise err from None
        return program


def _batch_bound(program: Any, example: tuple[torch.Tensor, ...]) -> float:
    """The largest batch every input of ``program`` (a ``torch.export`` program) takes (0 if any is fixed)."""
    import math

    from torch.fx.experimental.symbolic_shapes import free_symbols

    users = _user_inputs(program)
    ranges = {str(sym): r for sym, r in program.range_constraints.items()}
    bound = math.inf
    for v in users[: len(example)]:
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            return 0.0
        symbols = [str(sym) for sym in free_symbols(v.shape[0])]
        if not symbols or any(sym not in ranges for sym in symbols):
            return 0.0
        for sym in symbols:
            bound = min(bound, float(ranges[sym].upper))  # int_oo -> inf
    return bound


def _export_program(model: nn.Module, example: tuple[torch.Tensor, ...], dynamic_seq: bool) -> Any:
    def export(inferred_batch: bool) -> Any:
        traced, dynamic = _batch_spec(model, example, dynamic_seq, inferred_batch)
        return torch.export.export(copy.deepcopy(model), traced, dynamic_shapes=dynamic)

    return _with_inferred_batch(export, example)


def _dynamic_seq_program(model: nn.Module, example: tuple[torch.Tensor, ...], dynamic_seq: bool | None) -> Any:
    """The ``torch.export`` program of ``model`` with a symbolic time axis for its token ids, or ``None``.

    ``None`` where the caller asked for a fixed length (``dynamic_seq=False``), the inputs have no token ids, this
    torch lacks ``Dim.AUTO`` (2.6+), the export with a dynamic axis fails (e.g. a mask cached per sequence length) or
    the exporter specialised the axis to the traced length.
    """
    if dynamic_seq is False or not any(is_token_ids(x) for x in example) or not hasattr(torch.export.Dim, "AUTO"):
        return None
    try:
        program = _export_program(model, example, True)
    except Exception:
        log.debug("export with a dynamic sequence axis failed; exporting at the example's length", exc_info=True)
        return None
    if not _seq_is_symbolic(program, example):
        log.debug("torch.export specialised the sequence axis of %s; exporting at the example's length", model)
        return None
    return program


def _torch_export(
    model: nn.Module, example: tuple[torch.Tensor, ...], dynamic_seq: bool | None = None
) -> tuple[Any, bool]:
    """The ``torch.export`` program of ``model`` and whether its token ids' time axis is dynamic.

    ``dynamic_seq``: ``None`` makes the time axis dynamic where the model allows it, ``False`` fixes it at the
    example's length.
    """
    program = _dynamic_seq_program(model, example, dynamic_seq)
    if program is not None:
        return program, True
    return _export_program(model, example, False), False


def require_onnx() -> None:
    """Raise a one-line :class:`ExportError` with the install command when the ``[export]`` extra is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"export(format='onnx'): `format` 'onnx' needs {', '.join(missing)} (not installed); install the extra: "
            "pip install 'lightning-green[export]'."
        )


def _onnx_program(
    model: nn.Module, example: tuple[torch.Tensor, ...], opset: int | None, dynamic_seq: bool | None = None
) -> tuple[Any, bool]:
    """The ``ONNXProgram`` of ``model`` (not yet written) and whether its token ids' time axis is dynamic.

    ``dynamic_seq`` as for :func:`_torch_export`. The program is saved by the caller, so that a file that cannot be
    written is not taken for a model that cannot be exported.
    """
    require_onnx()
    names = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["input"]

    def export(dynamic_seq: bool) -> Any:
        # torch.onnx does not raise for a batch bound (it keeps the axis dynamic and drops the guard); the output
        # checks at batch 1 and at the datamodule's batch are what catch a program wrong at other batch sizes.
        traced, dynamic = _batch_spec(model, example, dynamic_seq)
        kwargs: dict[str, Any] = {"dynamo": True, "dynamic_shapes": dynamic, "input_names": names, "verbose": False}
        if opset is not None:
            kwargs["opset_version"] = opset
        # The exporter logs progress through the "torch.onnx" logger and prints; keep both quiet unless debugging.
        return torch.onnx.export(copy.deepcopy(model), traced, None, **kwargs)

    # The ONNX exporter keeps the axis symbolic in its graph even where the model fixes the length (it defers the
    # guard to a runtime assert it then drops), so a length baked in passes as dynamic; a plain torch.export says
    # whether the axis really is.
    if _dynamic_seq_program(model, example, dynamic_seq) is not None:
        try:
            return export(True), True
        except Exception:
            log.debug("ONNX export with a dynamic sequence axis failed; exporting at a fixed length", exc_info=True)
    return export(False), False


def _write(owner: str, path: Path, write: Callable[[], Any]) -> None:
    """Run ``write`` (saving to ``out``); an ``OSError`` (disk full, a path that went away) names ``out``."""
    try:
        write()
    except OSError as err:
        raise InvalidArgumentError(
            f"{owner}(out={os.fspath(path)!r}): writing `out` failed ({type(err).__name__}: {_one_line(err)})."
        ) from None


def _onnx_fails(child: nn.Module, args: tuple, kwargs: dict) -> bool:
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            torch.onnx.export(
                copy.deepcopy(child), args, os.path.join(d, "m.onnx"), kwargs=kwargs, dynamo=True, verbose=False
            )
        return False
    except Exception:
        return True


def _export_fails(child: nn.Module, args: tuple, kwargs: dict) -> bool:
    try:
        torch.export.export(copy.deepcopy(child), args, kwargs)
        return False
    except Exception:
        return True


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (``None``: ORT's default).

    Inter-op parallelism is off (one thread), so ``threads`` is the whole pool: pin it to the same number as
    ``torch.get_num_threads()`` for a fair comparison with eager PyTorch.
    """
    require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # e.g. NOT_IMPLEMENTED: no CPU kernel for an op in this dtype (bf16 Gemm)
        raise ExportError(
            f"onnx_session(path={os.fspath(path)!r}): `path` must be an ONNX model that ONNX Runtime's CPU provider "
            f"can load; it refused it ({type(err).__name__}: {_one_line(err)})"
            + (
                ". bf16/fp16 ops lack CPU kernels: export the model in float32 (model.float())."
                if "NOT_IMPLEMENTED" in str(err)
                else "."
            )
        ) from None


def load_exported(fmt: str, path: str | os.PathLike, threads: int | None = None) -> Callable[..., tuple]:
    """A callable running the export at ``path``: positional CPU tensors in, a tuple of CPU tensors out."""
    if fmt == "onnx":
        sess = onnx_session(path, threads)
        names = [i.name for i in sess.get_inputs()]

        def run_onnx(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feeds = {n: a.detach().cpu().contiguous().numpy() for n, a in zip(names, args, strict=True)}
            return tuple(torch.from_numpy(o) for o in sess.run(None, feeds))

        return run_onnx
    if fmt == "torch-export":
        try:
            program = torch.export.load(os.fspath(path)).module()
        except Exception as err:
            raise ExportError(
                f"load_exported(path={os.fspath(path)!r}): `path` must be a torch.export program (.pt2) this torch "
                f"can load; loading it failed ({type(err).__name__}: {_one_line(err)})."
            ) from None

        def run_pt2(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return _as_tensors(program(*args))

        return run_pt2
    raise InvalidArgumentError(f"load_exported(fmt={fmt!r}): `fmt` must be one of ('onnx', 'torch-export').")


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    extra = [Path(str(path) + ".data")] if Path(str(path) + ".data").exists() else []
    return [path, *extra]


def _compare(
    name: str,
    ref: tuple[torch.Tensor, ...],
    got: tuple[torch.Tensor, ...],
    atol: float,
    rtol: float,
    padding: torch.Tensor | None = None,
) -> CheckResult:
    """Compare outputs within ``atol + rtol * |ref|``; equal non-finite values (``-inf`` of a mask, NaN) match.

    A non-finite value on one side only, or of the other sign, is a mismatch of infinite size (so the printed largest
    difference shows it, where NaN would compare as 0). ``padding`` (``(batch, time)``, ``True`` at padding, see
    :func:`_padding_of`) leaves out those positions of every output of three or more axes whose leading axes are
    ``(batch, time)`` (logits, hidden states): what a
    model computes for a padding query is never used, and exporters need not reproduce it.
    """
    if len(ref) != len(got):
        return CheckResult(name, int(ref[0].shape[0]) if ref else 0, float("inf"), atol, rtol, False)
    worst, ok, skipped = 0.0, True, 0
    for r, g in zip(ref, got, strict=True):
        r, g = r.detach().float().cpu(), g.detach().float().cpu()
        if r.shape != g.shape:
            return CheckResult(name, int(r.shape[0]) if r.dim() else 1, float("inf"), atol, rtol, False)
        # (batch, time, features...): a (batch, classes) output whose classes happen to equal the length is compared.
        if padding is not None and r.dim() >= 3 and tuple(r.shape[:2]) == tuple(padding.shape):
            r, g, skipped = r[~padding], g[~padding], int(padding.sum())
        finite = torch.isfinite(r) & torch.isfinite(g)
        same = (r == g) | (torch.isnan(r) & torch.isnan(g))
        diff = torch.where(finite, (r - g).abs(), torch.where(same, 0.0, float("inf")))
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        ok = ok and bool((diff <= atol + rtol * torch.where(finite, r.abs(), 0.0)).all())
    return CheckResult(name, int(ref[0].shape[0]) if ref[0].dim() else 1, worst, atol, rtol, ok, skipped)


def _attention_mask_index(model: nn.Module) -> int | None:
    """The position of the forward's ``attention_mask`` argument, or ``None`` when it has none by that name."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature (a C extension): no name to go by
        return None
    for i, p in enumerate(params):
        if p.kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            return None  # *args: the positions of the inputs after it are unknown
        if p.name == "attention_mask":
            return i
    return None


def _padding_of(model: nn.Module, x: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """Where the attention mask among inputs ``x`` marks padding (``True``), or ``None`` (no mask, or no padding).

    An input counts as the attention mask only when it clearly is one: the forward names it ``attention_mask``
    (the Hugging Face convention, 1 a real token and 0 padding; PyTorch's ``key_padding_mask`` means the opposite, and
    segment ids ``token_type_ids`` are also 0/1), it is an integer or bool tensor of the ``(batch, time)`` shape of
    another input that is token ids (:func:`is_token_ids`), and it holds only 0 and 1.
    """
    index = _attention_mask_index(model)
    if index is None or index >= len(x):
        return None
    mask = x[index]
    if mask.dim() != 2 or mask.is_floating_point() or mask.is_complex():
        return None
    if not any(i != index and is_token_ids(t) and t.shape == mask.shape for i, t in enumerate(x)):
        return None
    if not bool(((mask == 0) | (mask == 1)).all()):
        return None
    padding = (mask == 0).cpu()
    return padding if bool(padding.any()) else None


def _shapes(x: tuple[torch.Tensor, ...]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in x)


def _example_check(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[str, tuple[torch.Tensor, ...]]:
    """The example-input check: the example itself, or for token ids the example's shape with seeded, varied ids.

    An ``example_input_array`` of token ids is often all zeros: every position then sees the same token and a broken
    positional encoding or causal mask gives the same logits as the model's. Ids are drawn (seed 0) below the smallest
    embedding table, so every table the ids might index takes them; a model that still refuses them is checked on
    its own example.
    """
    x = example[0]
    tables = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or not tables:
        return "example input", example
    ids = torch.randint(0, min(tables), x.shape, generator=torch.Generator().manual_seed(0))
    varied = (ids.to(dtype=x.dtype, device=x.device), *example[1:])
    try:
        with torch.no_grad():
            model(*varied)
    except Exception:  # the ids index something else too: keep the user's example
        log.debug("%s does not take seeded token ids; checking on its example", type(model).__name__, exc_info=True)
        return "example input", example
    return "example input with seeded token ids", varied


def _shorter_check(
    model: nn.Module, check: tuple[str, tuple[torch.Tensor, ...]]
) -> tuple[str, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None:
    """The example check cut to half its sequence length, with the model's outputs (``None``: no such check).

    A time axis the exporter marked dynamic could still hold a length it traced with (a constant mask); only a run at
    another length shows it.
    """
    name, x = check
    lengths = {int(t.shape[1]) for t in x if is_token_ids(t)}
    if len(lengths) != 1 or max(lengths) < 3:
        return None
    n = max(lengths) // 2
    cut = tuple(t[:, :n] if is_token_ids(t) else t for t in x)
    try:
        with torch.no_grad():
            ref = _as_tensors(model(*cut))
    except Exception:  # another input follows the length too: the example's own length is all we can check
        log.debug("%s does not take its example cut to length %d", type(model).__name__, n, exc_info=True)
        return None
    return f"{name}, length {n}", cut, ref


def _reference(model: nn.Module, fmt: str, name: str, x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The model's outputs on check input ``x``; a one-line error when the model itself does not take it."""
    try:
        with torch.no_grad():
            return _as_tensors(model(*x))
    except Exception as err:
        raise ExportError(
            f"export(format={fmt!r}): {type(model).__name__} itself fails on the {name} (shapes {_shapes(x)}), so it "
            f"cannot be checked there: {type(err).__name__}: {_one_line(err)}"
        ) from None


#: The file name endings each file format's readers expect.
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}


def check_export_out(
    owner: str,
    out: str | os.PathLike,
    format: str,  # noqa: A002 - as the CLI flag
    keep: Sequence[tuple[Any, str]] = (),
) -> Path:
    """``out`` checked for an export to ``format`` before any work (see :func:`check_output_path`).

    A file format's ``out`` must end in its suffix (``.onnx``, ``.pt2``): the file's readers know it by that, and a
    name such as ``last.ckpt`` would pass an ONNX model off as a checkpoint. ``hf`` writes a folder. ONNX writes its
    weights to ``<out>.data`` beside it, which is checked against ``keep`` too.
    """
    path = check_output_path(
        owner,
        out,
        kind="dir" if format == "hf" else "file",
        keep=keep,
        sidecars=(".data",) if format == "onnx" else (),
    )
    suffix = SUFFIXES.get(format)
    given = path.suffix.lower() if format == "onnx" else path.suffix  # ONNX tools take `.ONNX` too
    if suffix is not None and given != suffix:
        reader = "torch.export.load reads only such files" if format == "torch-export" else "ONNX tools know it by it"
        raise InvalidArgumentError(
            f"{owner}(out={os.fspath(out)!r}): `out` must end in {suffix!r} for format {format!r} ({reader})."
        )
    return path


def onnx_opsets() -> tuple[int, int]:
    """The ONNX opsets (lowest, highest) torch's ONNX exporter writes here as asked.

    It builds the graph at its own opset (18) and converts it to the one asked for with onnxscript's version converter
    (18 to 25 with onnxscript 0.7); outside that range it falls back to onnx's C converter, which fails for common
    models (a CNN at 17, a transformer at 26) and then keeps opset 18 with only a logged warning.
    """
    import onnx

    lowest, highest = 18, onnx.defs.onnx_opset_version()
    try:  # the converter's own range, where this onnxscript says it (it widens with new releases)
        from onnxscript.version_converter import _version_converter as converter

        lowest = int(getattr(converter, "SUPPORTED_MIN_ONNX_OPSET", lowest))
        highest = min(highest, int(getattr(converter, "SUPPORTED_MAX_ONNX_OPSET", highest)))
    except ImportError:
        pass
    return lowest, highest


def check_opset(owner: str, opset: Any, format: str) -> int | None:  # noqa: A002 - as the CLI flag
    """``opset`` if ``None`` or an opset :func:`onnx_opsets` allows for format ``onnx``; else a one-line error."""
    if opset is None:
        return None
    if format != "onnx":
        fail(owner, "opset", opset, f"None for format {format!r} (only 'onnx' has opsets)")
    check_number(owner, "opset", opset, integer=True)
    require_onnx()
    lowest, highest = onnx_opsets()
    if not lowest <= opset <= highest:
        fail(
            owner,
            "opset",
            opset,
            f"an int from {lowest} to {highest} (the opsets torch's ONNX exporter converts to here; for others it "
            "often writes opset 18 with only a logged warning) or None for the exporter's default",
        )
    return opset


def _written_opset(path: Path) -> int | None:
    """The default-domain opset the ONNX file at ``path`` imports (its weights are not read)."""
    import onnx

    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # the check that loads it for the output comparison says what is wrong with it
        log.debug("reading the opset of %s failed", path, exc_info=True)
        return None
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def export_model(
    model: nn.Module,
    out: str | os.PathLike,
    format: Format = "onnx",  # noqa: A002 - the word users know from the CLI flag
    example_inputs: Any = None,
    check_inputs: Sequence[tuple[str, Any]] = (),
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int | None = None,
    verbose: bool = True,
) -> ExportResult:
    """Export ``model`` (a module in eval mode, on CPU) and check the export's outputs against it.

    Args:
        model: The trained model (e.g. from :func:`~lightning_green.export.load_checkpoint_module`).
        out: File to write (``.onnx`` / ``.pt2``), or for ``"hf"`` a folder (created; its parent must exist).
        format: ``"onnx"`` (``torch.onnx.export(..., dynamo=True)``), ``"torch-export"`` (``torch.export``
            program saved as ``.pt2``) or ``"hf"`` (``save_pretrained`` of the Hugging Face model the module holds).
            ``onnx`` and ``torch-export`` have a dynamic batch axis and, for integer token-id inputs
            ``(batch, time)``, a dynamic time axis where the model can be traced so (else ``fixed_seq_len`` says
            the one length the export takes).
        example_inputs: Forward inputs with the batch on dim 0; ``None`` uses ``model.example_input_array``.
        check_inputs: More ``(name, inputs)`` to compare on, e.g. ``("datamodule batch", x)``.
        atol: Absolute tolerance of the output check.
        rtol: Relative tolerance of the output check.
        opset: ONNX opset, within :func:`onnx_opsets` (``None``: the exporter's default); the opset written is
            ``ExportResult.opset``.
        verbose: Print the summary (file, size, parameters, checks with their tolerance).

    Returns:
        What was written, its size and parameter count, and each check.

    Raises:
        ValueError: A bad argument (unknown format, missing output directory, an ``out`` without the format's suffix,
            negative tolerance, an opset the exporter does not write), a check input the model itself does not take,
            a model that cannot be exported to ``format`` (the message names the blocking module/op), or an export
            written in another opset than ``opset``, that fails to run on a check input or whose outputs differ beyond
            the tolerance (:class:`ExportError`; such a file is left for inspection and the message says it failed).

    Example:
        >>> import tempfile, pathlib
        >>> net = nn.Sequential(nn.Linear(4, 3)).eval()
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.pt2"
        >>> res = export_model(net, path, "torch-export", example_inputs=torch.randn(1, 4), verbose=False)
        >>> res.params, all(c.ok for c in res.checks), path.exists()
        (15, True, True)
    """
    owner = "export"
    check_choice(owner, "format", format, FORMATS)
    check_number(owner, "atol", atol, ge=0)
    check_number(owner, "rtol", rtol, ge=0)
    check_opset(owner, opset, format)
    path = check_export_out(owner, out, format)
    with eval_mode(model), _staged(path) as work:
        result = _export(owner, model, work.target, format, example_inputs, check_inputs, atol, rtol, opset)
        result = work.commit(result)
    if verbose:
        print(result.summary())
    bad = [c for c in result.checks if not c.ok]
    if bad:
        c = bad[0]
        raise ExportError(
            f"export(format={format!r}): the export's outputs differ from the model's on the {c.input} "
            f"(max |diff| {c.max_abs_diff:.3g} > atol {c.atol:g} + rtol {c.rtol:g}·|ref|); it failed its check and is "
            f"left at {result.path!r} only for inspection{work.kept}."
        )
    return result


class _staged:
    """Where an export is written and checked before it takes ``path``'s place.

    With nothing at ``path`` the export is written there (a failed one is left there for inspection). Over an earlier
    export it is written in a hidden folder beside it and moved into place once it passed its checks; one that fails
    goes to ``<out>.failed/`` and the earlier export is kept: a failed re-export must not destroy a good file.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.stage, self.kept = path, None, ""
        self.target = path

    def __enter__(self) -> _staged:
        if self.path.exists():
            import tempfile

            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
            self.target = self.stage / self.path.name
        return self

    def commit(self, result: ExportResult) -> ExportResult:
        """Move a staged export into place if it passed its checks, else aside; the result with its final files."""
        if self.stage is None:
            return result
        final = self.path if all(c.ok for c in result.checks) else self._aside()
        if final == self.path:
            old = self.stage / (self.path.name + ".old")
            os.replace(self.path, old)  # a folder (hf) too; the earlier sidecar goes with the earlier file
            if Path(str(self.path) + ".data").exists():
                os.replace(str(self.path) + ".data", str(old) + ".data")
            for f in [self.target, *([Path(str(self.target) + ".data")] if self.target.is_file() else [])]:
                if f.exists():
                    os.replace(f, self.path.parent / f.name)
        files = _files_of(final)
        return dataclasses.replace(result, path=os.fspath(final), files=[os.fspath(f) for f in files])

    def _aside(self) -> Path:
        assert self.stage is not None
        failed = self.path.parent / f"{self.path.name}.failed"
        if failed.is_dir():
            shutil.rmtree(failed)
        elif failed.exists():
            failed.unlink()
        os.replace(self.stage, failed)
        mask = os.umask(0)  # mkdtemp made the stage 700: the folder left for inspection gets a plain folder's mode
        os.umask(mask)
        os.chmod(failed, 0o777 & ~mask)
        self.stage = None
        self.kept = f"; the earlier export at {os.fspath(self.path)!r} is kept"
        return failed / self.path.name

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        if self.stage is not None and isinstance(err, ExportError) and os.fspath(self.target) in str(err):
            # A staged export that failed before its checks (it cannot be loaded, another opset): aside, and said.
            staged = os.fspath(self.target)
            moved = os.fspath(self._aside())
            raise ExportError(str(err).replace(staged, moved).removesuffix(".") + self.kept + ".") from None
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)


def _export(
    owner: str,
    model: nn.Module,
    path: Path,
    format: str,  # noqa: A002
    example_inputs: Any,
    check_inputs: Sequence[tuple[str, Any]],
    atol: float,
    rtol: float,
    opset: int | None,
) -> ExportResult:
    """:func:`export_model` on a model in eval mode, writing ``path``; the checks are in the result, not raised."""
    example = example_inputs_of(owner, model, example_inputs)
    checks_in = [_example_check(model, example)]
    for name, x in check_inputs:
        checks_in.append((name, example_inputs_of(owner, model, x)))
    # The model's own outputs first: a check input it cannot take is the caller's error, found before any export.
    refs = [_reference(model, format, name, x) for name, x in checks_in]
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    length = next((int(x.shape[1]) for x in example if is_token_ids(x)), None)  # of the token ids, if any
    fixed_seq = None
    if format == "hf":
        runner = _export_hf(model, path)
        saved = find_pretrained(model)
        params = sum(p.numel() for p in saved.parameters()) if saved is not None else params  # what was written
    else:
        net = tensor_outputs(model, example)
        runner, dynamic_seq = _export_and_load(format, net, example, path, opset, None)
        fixed_seq = None if dynamic_seq else length
    shorter = _shorter_check(model, checks_in[0]) if fixed_seq is None else None
    if shorter is not None and format != "hf" and not _runs_alike(runner, *shorter[1:], atol, rtol, model):
        # The exporter claimed a dynamic axis but baked a length in (it missed a specialisation): the model
        # exports only as a fixed one, which the summary then says, rather than being refused.
        log.debug("the %s export is wrong on the %s; exporting at the example's length", format, shorter[0])
        runner, _ = _export_and_load(format, net, example, path, opset, False)
        fixed_seq, shorter = length, None
    if shorter is not None:  # a dynamic time axis is claimed: check it at another length than the traced one
        checks_in.insert(1, shorter[:2])
        refs.insert(1, shorter[2])
    export_s = time.perf_counter() - t0
    written_opset = _written_opset(path) if format == "onnx" else None
    if opset is not None and written_opset != opset:  # torch only logs it when it cannot write the opset asked for
        raise ExportError(
            f"{owner}(opset={opset!r}): `opset` must be one torch's ONNX exporter can write "
            f"{type(model).__name__} in; it wrote opset {written_opset} instead (a failed version conversion); the "
            f"file is left at {os.fspath(path)!r} only for inspection."
        )
    files = _files_of(path)
    checks = []
    for (name, x), ref in zip(checks_in, refs, strict=True):
        try:
            got = runner(*x)
        except Exception as err:  # e.g. a fixed sequence length: a one-line error, and the file is not passed as good
            seq = f" (its sequence length is fixed at {fixed_seq})" if fixed_seq is not None else ""
            raise ExportError(
                f"export(format={format!r}): the export{seq} cannot run on the {name} (shapes {_shapes(x)}; "
                f"traced on {_shapes(example)}): {type(err).__name__}: {_one_line(err)}; it failed its check and is "
                f"left at {os.fspath(path)!r} only for inspection."
            ) from None
        checks.append(_compare(name, ref, got, atol, rtol, _padding_of(model, x)))
    macs = None
    try:
        from lightning_green.pruning.graph import count_macs_params

        macs = count_macs_params(model, example[0] if len(example) == 1 else example)[0]
    except Exception:  # MACs are a courtesy figure: a model torch-pruning cannot trace still exports
        log.debug("MAC count failed for %s", type(model).__name__, exc_info=True)
    result = ExportResult(
        format=format,
        path=os.fspath(path),
        files=[os.fspath(f) for f in files],
        size_bytes=sum(f.stat().st_size for f in files),
        params=params,
        export_s=export_s,
        checks=checks,
        macs=macs,
        fixed_seq_len=fixed_seq,
        opset=written_opset,
    )
    return result


def _export_and_load(
    fmt: str, net: nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int | None, dynamic_seq: bool | None
) -> tuple[Callable[..., tuple], bool]:
    """Export ``net`` to ``path`` and load it back: the runner and whether its time axis is dynamic."""
    try:
        with quiet():
            if fmt == "onnx":
                program, dynamic = _onnx_program(net, example, opset, dynamic_seq)
            else:
                program, dynamic = _torch_export(net, example, dynamic_seq)
    except ExportError:
        raise
    except ImportError as err:
        if fmt != "onnx" or (err.name or "").split(".")[0] not in ("onnx", "onnxscript", "onnx_ir", "onnxruntime"):
            raise _blocked(fmt, net, example, err) from None
        # torch's ONNX exporter imports onnxscript/onnx_ir modules of its own era: older packages fail here for every
        # model alike (not the model's fault, so no submodule is searched for a culprit).
        raise ExportError(
            f"export(format='onnx'): torch {torch.__version__}'s ONNX exporter needs newer ONNX packages than those "
            f"installed ({type(err).__name__}: {_one_line(err)}); update them: "
            "pip install -U 'lightning-green[export]'."
        ) from None
    except Exception as err:
        raise _blocked(fmt, net, example, err) from None
    if fmt == "onnx":
        _write("export", path, lambda: program.save(os.fspath(path), external_data=True))  # as export(f=...) wrote
    else:
        _write("export", path, lambda: torch.export.save(program, os.fspath(path)))
    try:
        return load_exported(fmt, path, threads=torch.get_num_threads()), dynamic
    except ExportError as err:
        raise ExportError(
            f"export(format={fmt!r}): the export cannot be loaded to check it; it is left at "
            f"{os.fspath(path)!r} only for inspection: {err}"
        ) from None


def _runs_alike(
    runner: Callable[..., tuple],
    x: tuple[torch.Tensor, ...],
    ref: tuple[torch.Tensor, ...],
    atol: float,
    rtol: float,
    model: nn.Module,
) -> bool:
    """Whether the export runs on ``x`` and matches ``model``'s outputs ``ref`` there (padding positions aside)."""
    try:
        got = runner(*x)
    except Exception:
        log.debug("the export does not run on shapes %s", _shapes(x), exc_info=True)
        return False
    return _compare("", ref, got, atol, rtol, _padding_of(model, x)).ok


def _export_hf(model: nn.Module, path: Path) -> Callable[..., tuple]:
    hf = find_pretrained(model)
    if hf is None:
        raise ExportError(
            f"export(format='hf'): `format` 'hf' needs a module that is or holds a transformers PreTrainedModel; "
            f"{type(model).__name__} holds none. Use 'onnx' or 'torch-export'."
        )
    _write("export", path, lambda: hf.save_pretrained(os.fspath(path)))
    loaded = type(hf).from_pretrained(os.fspath(path)).eval()
    if hf is model:
        reloaded = loaded
    else:  # the holder's forward around the reloaded HF model: the same code path the user's module runs
        reloaded = copy.deepcopy(model)
        owner_name = next(n for n, m in model.named_modules() if m is hf)
        parent_name, _, attr = owner_name.rpartition(".")
        setattr(reloaded.get_submodule(parent_name) if parent_name else reloaded, attr, loaded)

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return _as_tensors(reloaded(*args))

    return run
