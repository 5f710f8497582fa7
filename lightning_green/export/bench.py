"""What a prediction costs: latency, throughput and energy per 1,000 predictions (or tokens) per format and batch.

Each model (e.g. the pruned one and its dense baseline) runs in each format — ``eager`` (fp32 PyTorch), ``bf16``
(PyTorch under ``torch.autocast``), ``onnx`` (ONNX Runtime), ``torch-export`` (the ``torch.export`` program) — at
each batch size. The models of one (format, batch size) run side by side in rounds, their order rotating every
round, so a busy neighbour or a clock change hits both alike. Latency is the median and 90th percentile of single
calls after warm-up; energy is metered over each round by :class:`~lightning_green.energy.EnergyMeter` (the meter
EnergyMonitor uses): *measured* where a hardware counter exists, *estimated* otherwise, and every figure carries
that label.

PyTorch and ONNX Runtime threads are pinned to the same number (``threads``) so that neither side gets more cores.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lightning_green._internal.validation import InvalidArgumentError, check_choice, check_number, fail
from lightning_green.export.formats import eval_mode, is_token_ids
from lightning_green.export.load import example_inputs_of

__all__ = [
    "BENCH_FORMATS",
    "REPORT_ROW_FIELDS",
    "BenchResult",
    "BenchRow",
    "bench_inference",
    "build_runner",
    "format_bench",
    "format_ratio",
    "parse_batch_sizes",
    "parse_formats",
]

log = logging.getLogger(__name__)

BENCH_FORMATS = ("eager", "bf16", "onnx", "torch-export")
#: The fields of a result row that the green report and ``lightning-green report`` comparisons read.
REPORT_ROW_FIELDS = (
    "model",
    "format",
    "batch_size",
    "latency_ms_median",
    "latency_ms_p90",
    "throughput_per_s",
    "energy_per_1k_j",
    "label",
)
BENCH_VERSION = 1


@dataclass(frozen=True)
class BenchRow:
    """One model in one format at one batch size."""

    model: str
    format: str
    batch_size: int
    calls: int
    latency_ms_median: float
    latency_ms_p90: float
    throughput_per_s: float
    energy_j: float
    energy_per_1k_j: float
    label: str
    unit: str


@dataclass
class BenchResult:
    """All rows, the models' sizes, the ratios against the baseline and how it was measured."""

    rows: list[BenchRow]
    models: dict[str, dict[str, Any]]
    unit: str
    threads: int
    device: str
    baseline: str | None = None
    subject: str | None = None
    meter: dict[str, Any] = field(default_factory=dict)
    input_shapes: list[list[int]] = field(default_factory=list)  # one sample's shape per input (batch axis off)

    def row(self, model: str, fmt: str, batch_size: int) -> BenchRow | None:
        """The row of ``model`` in ``fmt`` at ``batch_size``."""
        return next((r for r in self.rows if (r.model, r.format, r.batch_size) == (model, fmt, batch_size)), None)

    def ratios(self) -> list[dict[str, Any]]:
        """Subject / baseline per (format, batch size) — energy per 1k and median latency — and vs baseline eager."""
        if not self.baseline or not self.subject:
            return []
        out = []
        for r in self.rows:
            if r.model != self.subject:
                continue
            same = self.row(self.baseline, r.format, r.batch_size)
            eager = self.row(self.baseline, "eager", r.batch_size)
            out.append(
                {
                    "format": r.format,
                    "batch_size": r.batch_size,
                    "energy_per_1k_ratio": _div(r.energy_per_1k_j, same.energy_per_1k_j if same else None),
                    "latency_ratio": _div(r.latency_ms_median, same.latency_ms_median if same else None),
                    "energy_per_1k_ratio_vs_baseline_eager": _div(
                        r.energy_per_1k_j, eager.energy_per_1k_j if eager else None
                    ),
                    "latency_ratio_vs_baseline_eager": _div(
                        r.latency_ms_median, eager.latency_ms_median if eager else None
                    ),
                }
            )
        return out

    @property
    def label(self) -> str:
        """``measured``, ``estimated`` or ``mixed`` over all rows."""
        labels = {r.label for r in self.rows}
        return labels.pop() if len(labels) == 1 else "mixed"

    def as_dict(self) -> dict[str, Any]:
        """Plain data (the JSON written by ``--json`` and stored in the run's report as ``inference_cost``)."""
        return {
            "version": BENCH_VERSION,
            "kind": "inference_cost",
            "unit": self.unit,
            "per": f"1,000 {self.unit}s",
            "threads": self.threads,
            "device": self.device,
            "label": self.label,
            "subject": self.subject,
            "baseline": self.baseline,
            "models": self.models,
            "rows": [asdict(r) for r in self.rows],
            "ratios": self.ratios(),
            "meter": self.meter,
            "input_shapes": [list(s) for s in self.input_shapes],
            "measures": input_basis(self.unit, self.input_shapes),
        }


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def parse_batch_sizes(value: str | Sequence[int], owner: str = "bench_inference") -> list[int]:
    """Batch sizes from ``"1,64"`` or a list; each must be an int >= 1.

    Example:
        >>> parse_batch_sizes("1, 64")
        [1, 64]
    """
    items: list[Any] = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            n = int(str(item).strip()) if isinstance(item, str) else item
        except ValueError:
            n = item
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            fail(owner, "batch_sizes", value, "a comma-separated list of ints >= 1 (e.g. '1,64')")
        out.append(n)
    if not out:
        fail(owner, "batch_sizes", value, "a non-empty list of ints >= 1")
    return out


def parse_formats(value: str | Sequence[str], owner: str = "bench_inference") -> list[str]:
    """Formats from ``"eager,bf16,onnx"`` or a list, each one of :data:`BENCH_FORMATS`."""
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    if not items:
        fail(owner, "formats", value, f"a non-empty list of {BENCH_FORMATS!r}")
    for item in items:
        if item not in BENCH_FORMATS:
            fail(owner, "formats", value, f"a comma-separated list of {BENCH_FORMATS!r} (got {item!r})")
    return list(dict.fromkeys(items))


def resolve_device(value: str | torch.device, owner: str = "bench_inference") -> torch.device:
    """The device to benchmark on: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (a visible CUDA GPU, else the CPU).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        lightning_green._internal.validation.InvalidArgumentError: bench_inference(device='tpu'): `device` must be \
'auto', 'cpu', 'cuda' or 'cuda:N' (N a visible GPU's index).
    """
    allowed = "'auto', 'cpu', 'cuda' or 'cuda:N' (N a visible GPU's index)"
    text = str(value).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        fail(owner, "device", value, allowed)
    if device.type == "cpu":
        return torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        fail(owner, "device", value, f"'cpu' or 'auto' here: no CUDA GPU is visible to torch {torch.__version__}")
    index = device.index if device.index is not None else 0
    if index >= n:
        fail(owner, "device", value, f"'cuda' or 'cuda:N' with N < {n} ({n} visible GPU(s))")
    return torch.device("cuda", index)


def default_formats(device: torch.device) -> list[str]:
    """The formats benchmarked when none are named.

    ``eager, bf16, onnx`` on the CPU; ``eager, bf16, torch-export`` on a GPU (ONNX Runtime runs on its CPU provider).
    """
    return ["eager", "bf16", "onnx"] if device.type == "cpu" else ["eager", "bf16", "torch-export"]


def _batch(example: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """The example input repeated to ``n`` samples (the first sample, so every call does the same work)."""
    return tuple(x[:1].expand(n, *x.shape[1:]).contiguous() for x in example)


def build_runner(
    model: nn.Module, fmt: str, example: tuple[torch.Tensor, ...], threads: int, workdir: str
) -> Callable[..., Any]:
    """A callable ``f(*inputs)`` running ``model`` in ``fmt`` (exporting it into ``workdir`` first if needed)."""
    device = next(model.parameters()).device
    if fmt == "eager":

        def eager(*x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return model(*x)

        return eager
    if fmt == "bf16":

        def bf16(*x: torch.Tensor) -> Any:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                return model(*x)

        return bf16
    from lightning_green.export.formats import (
        ExportError,
        _blocked,
        _onnx_program,
        _torch_export,
        load_exported,
        quiet,
        tensor_outputs,
    )

    if fmt == "onnx" and device.type != "cpu":
        raise InvalidArgumentError(
            f"bench_inference(formats=['onnx']): `formats` 'onnx' runs on ONNX Runtime's CPU provider; the model "
            f"is on {device}. Benchmark it on the CPU (device 'cpu') or drop 'onnx' (on a GPU: eager, bf16, "
            f"torch-export)."
        )
    net = tensor_outputs(model, example)
    path = os.path.join(workdir, f"{id(model)}.{'onnx' if fmt == 'onnx' else 'pt2'}")
    # The same one-line error as `export` for a model the format cannot take (naming the blocking module/op).
    owner = f"bench_inference(formats=[{fmt!r}])"
    try:
        with quiet():
            program = _onnx_program(net, example, None)[0] if fmt == "onnx" else _torch_export(net, example)[0]
    except ExportError:
        raise
    except Exception as err:
        raise _blocked(fmt, net, example, err, owner) from None
    if fmt == "onnx":
        program.save(path, external_data=True)
    else:
        torch.export.save(program, path)
    return load_exported(fmt, path, threads=threads)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_basis(unit: str, input_shapes: Sequence[Sequence[int]] | None) -> str:
    """What one timed call is: a forward pass over inputs of these per-sample shapes (not token-by-token generation).

    Example:
        >>> input_basis("token", [[64]])
        'one forward pass over 64-token inputs (not token-by-token generation)'
        >>> input_basis("prediction", [[1, 24, 24]])
        'one forward pass over inputs (1, 24, 24) a sample'
        >>> input_basis("prediction", None)
        'one forward pass'
    """
    if not input_shapes:
        return "one forward pass"
    first = list(input_shapes[0])
    if unit == "token":
        return f"one forward pass over {math.prod(first)}-token inputs (not token-by-token generation)"
    shapes = ", ".join(str(tuple(s)) for s in input_shapes)
    return f"one forward pass over inputs {shapes} a sample"


def _tokens_per_sample(example: tuple[torch.Tensor, ...]) -> int:
    """Tokens in one sample of an integer (token id) input: its size beyond the batch axis."""
    x = example[0]
    return int(x[:1].numel()) if x.dim() >= 2 else 1


def check_bench_settings(owner: str, repeats: Any, warmup: Any, rounds: Any, threads: Any, per: Any) -> None:
    """Refuse bad benchmark settings (the CLI checks them before it loads any checkpoint)."""
    check_number(owner, "repeats", repeats, integer=True, ge=1)
    check_number(owner, "warmup", warmup, integer=True, ge=0)
    check_number(owner, "rounds", rounds, integer=True, ge=1)
    if threads is not None:
        check_number(owner, "threads", threads, integer=True, ge=1)
    check_choice(owner, "per", per, ("auto", "prediction", "token"))


def bench_inference(
    models: Mapping[str, nn.Module],
    example_inputs: Any = None,
    formats: str | Sequence[str] = ("eager", "onnx"),
    batch_sizes: str | Sequence[int] = (1, 64),
    repeats: int = 50,
    warmup: int = 5,
    rounds: int = 3,
    threads: int | None = 1,
    per: Literal["auto", "prediction", "token"] = "auto",
    baseline: str | None = None,
    meter: Any = None,
    verbose: bool = False,
) -> BenchResult:
    """Benchmark ``models`` side by side per format and batch size (see the module doc).

    Args:
        models: Name → model (eval mode). With two, the second is compared against the first named ``baseline``.
        example_inputs: One sample's forward inputs (batch on dim 0); ``None``: the first model's
            ``example_input_array``. Batches repeat its first sample.
        formats: Any of ``eager``, ``bf16``, ``onnx``, ``torch-export`` (a list or ``"eager,onnx"``).
        batch_sizes: Batch sizes (ints >= 1; a list or ``"1,64"``).
        repeats: Timed calls per model per round.
        warmup: Untimed calls per model before the first round (kernels are built per shape).
        rounds: Rounds, the models' order rotating each round.
        threads: PyTorch and ONNX Runtime threads, pinned equal; ``None`` keeps torch's current number for both.
        per: Count energy per 1,000 ``prediction``s (samples) or ``token``s (only for a first input of integer token
            ids, exactly ``(batch, time)``: a 4-D uint8 image is not); ``auto``: tokens for such an input.
        baseline: Name of the model the others are compared with (``None``: the first of two, else no ratios).
        meter: An :class:`~lightning_green.energy.EnergyMeter` (``None``: one on the model's GPU, or CPU only).
        verbose: Print the table at the end.

    Raises:
        ValueError: A bad argument: no models, unknown format, batch size <= 0, repeats/rounds < 1, threads < 1,
            ``per="token"`` for a model without token-id input.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 4)).eval()
        >>> res = bench_inference({"net": net}, torch.zeros(1, 8), formats="eager", batch_sizes="1,4",
        ...                       repeats=3, warmup=1, rounds=1)
        >>> [(r.format, r.batch_size, r.label) for r in res.rows]
        [('eager', 1, 'estimated'), ('eager', 4, 'estimated')]
    """
    owner = "bench_inference"
    if not isinstance(models, Mapping) or not models or not all(isinstance(m, nn.Module) for m in models.values()):
        fail(owner, "models", models, "a non-empty mapping of name → nn.Module")
    fmts = parse_formats(formats, owner)
    sizes = parse_batch_sizes(batch_sizes, owner)
    check_bench_settings(owner, repeats, warmup, rounds, threads, per)
    names = list(models)
    if baseline is not None and baseline not in models:
        fail(owner, "baseline", baseline, f"one of the model names {tuple(names)!r}")
    if baseline is None and len(names) == 2:
        baseline = names[0]
    subject = next((n for n in names if n != baseline), None) if baseline else None
    first = models[names[0]]
    example = example_inputs_of(owner, first, example_inputs)
    device = next(first.parameters()).device
    example = tuple(x.to(device) for x in example)
    token_ids = is_token_ids(example[0])  # exactly (batch, time) integers: a uint8 image has no tokens
    if per == "token" and not token_ids:
        fail(
            owner,
            "per",
            per,
            f"'auto' or 'prediction' for a model whose first input is not integer token ids of shape (batch, time) "
            f"(it is {str(example[0].dtype).removeprefix('torch.')} {tuple(example[0].shape)})",
        )
    token = per == "token" or (per == "auto" and token_ids)
    unit = "token" if token else "prediction"
    per_sample = _tokens_per_sample(example) if token else 1
    n_threads = threads if threads is not None else torch.get_num_threads()

    if meter is None:
        from lightning_green.energy.meter import EnergyMeter

        meter = EnergyMeter(gpu_indices=[device.index or 0] if device.type == "cuda" else [])
    own_meter = not meter.started
    rows: list[BenchRow] = []
    with (
        eval_mode(*models.values()),  # each model back in its own mode after (a bench in the middle of a fit)
        _torch_threads(n_threads),
        tempfile.TemporaryDirectory(prefix="lg-bench-") as workdir,
    ):
        info = {name: _model_info(m, example) for name, m in models.items()}  # in eval mode: no BatchNorm update
        runners = {(n, f): build_runner(models[n], f, example, n_threads, workdir) for f in fmts for n in names}
        if own_meter:
            meter.start()
        try:
            for fmt in fmts:
                for bs in sizes:
                    x = _batch(example, bs)
                    if fmt in ("onnx",):
                        x = tuple(t.cpu() for t in x)
                    for n in names:
                        for _ in range(warmup):
                            runners[(n, fmt)](*x)
                    _sync(device)
                    lat: dict[str, list[float]] = {n: [] for n in names}
                    energy: dict[str, float] = dict.fromkeys(names, 0.0)
                    label: dict[str, str] = dict.fromkeys(names, "none")
                    for r in range(rounds):
                        for n in names[r % len(names) :] + names[: r % len(names)]:
                            run = runners[(n, fmt)]
                            before = meter.read()
                            for _ in range(repeats):
                                t = time.perf_counter()
                                run(*x)
                                _sync(device)
                                lat[n].append(time.perf_counter() - t)
                            window = meter.read() - before
                            energy[n] += window.total_j
                            label[n] = window.label
                    for n in names:
                        calls = len(lat[n])
                        total_s = sum(lat[n])
                        units = calls * bs * per_sample
                        rows.append(
                            BenchRow(
                                model=n,
                                format=fmt,
                                batch_size=bs,
                                calls=calls,
                                latency_ms_median=1000 * statistics.median(lat[n]),
                                latency_ms_p90=1000 * _quantile(lat[n], 0.9),
                                throughput_per_s=units / total_s if total_s > 0 else math.inf,
                                energy_j=energy[n],
                                energy_per_1k_j=1000 * energy[n] / units,
                                label=label[n],
                                unit=unit,
                            )
                        )
        finally:
            if own_meter:
                meter.stop()
    result = BenchResult(
        rows=rows,
        models=info,
        unit=unit,
        threads=n_threads,
        device=str(device),
        baseline=baseline,
        subject=subject,
        meter=meter.describe() if hasattr(meter, "describe") else {},
        input_shapes=[list(x.shape[1:]) for x in example],
    )
    if verbose:
        print(format_bench(result))
    return result


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _model_info(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    info: dict[str, Any] = {"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters())}
    try:
        from lightning_green.pruning.graph import count_macs_params

        info["macs"] = count_macs_params(model, example[0] if len(example) == 1 else example)[0]
    except Exception:  # a courtesy figure
        info["macs"] = None
    return info


def format_bench(result: BenchResult | Mapping[str, Any]) -> str:
    """The benchmark as a plain-text table (rows, then the ratios against the baseline)."""
    data = result.as_dict() if isinstance(result, BenchResult) else dict(result)
    unit = data.get("unit", "prediction")
    head = ["model", "format", "batch", "median ms", "p90 ms", f"{unit}s/s", f"J/1k {unit}s", "label"]
    rows = [
        [
            str(r["model"]),
            str(r["format"]),
            str(r["batch_size"]),
            f"{r['latency_ms_median']:.3f}",
            f"{r['latency_ms_p90']:.3f}",
            f"{r['throughput_per_s']:.4g}",
            f"{r['energy_per_1k_j']:.4g}",
            str(r["label"]),
        ]
        for r in data.get("rows", [])
    ]
    lines = [
        f"inference cost per 1,000 {unit}s ({data.get('device', '?')}, {data.get('threads', '?')} thread(s) for "
        f"PyTorch and ONNX Runtime; energy {data.get('label', '?')}; each call is "
        f"{input_basis(unit, data.get('input_shapes'))})"
    ]
    lines += _table(head, rows)
    ratios = data.get("ratios") or []
    if ratios:
        lines.append(
            f"{data.get('subject')} vs {data.get('baseline')} (same format; and vs {data.get('baseline')} eager)"
        )
        lines += _table(
            ["format", "batch", "energy ratio", "latency ratio", "energy vs eager", "latency vs eager"],
            [
                [
                    str(q["format"]),
                    str(q["batch_size"]),
                    format_ratio(q.get("energy_per_1k_ratio")),
                    format_ratio(q.get("latency_ratio")),
                    format_ratio(q.get("energy_per_1k_ratio_vs_baseline_eager")),
                    format_ratio(q.get("latency_ratio_vs_baseline_eager")),
                ]
                for q in ratios
            ],
        )
    return "\n".join(lines)


def format_ratio(x: float | None) -> str:
    """A ratio as ``0.42×``; ``n/a`` for ``None``."""
    return "n/a" if x is None else f"{x:.2f}×"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
