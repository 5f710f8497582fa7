"""What a digits prediction costs: dense vs pruned (>= 3x fewer MACs), eager PyTorch vs ONNX Runtime, on CPU.

Trains the digits ``DigitsCNN`` twice with the same seed and epoch budget — dense, and with
``StructuredPruning(target_speedup=...)`` — then measures side by side in this process (``bench_inference``: the
models alternate within every round, the order rotating) latency (median, p90), throughput and energy per 1,000
predictions at batch 1 and 64, for eager fp32 PyTorch and ONNX Runtime. PyTorch and ONNX Runtime are pinned to the
same number of threads (``--threads``, default 1), so neither side gets more cores. Energy comes from the
``EnergyMeter`` EnergyMonitor uses: *estimated* on a machine without RAPL/NVML (process CPU time × W/core + RSS ×
W/GB), *measured* where a counter exists; the label is printed.

Goal: pruned + ONNX Runtime at <= 0.35x the dense eager energy per 1,000 predictions at batch 64, with the same
accuracy as the pruned eager model (held-out validation + test images).

    python benchmarks/inference.py                 # full run (~2-4 minutes on 1 thread)
    python benchmarks/inference.py --quick         # smoke run
    python benchmarks/inference.py --json out.json # writes energy_per_1k_ratio and accuracy_delta (and the rest)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import ConcatDataset, DataLoader

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_green import StructuredPruning  # noqa: E402
from lightning_green.demos import DigitsCNN, DigitsDataModule  # noqa: E402
from lightning_green.export import bench_inference  # noqa: E402
from lightning_green.export.bench import build_runner, format_bench  # noqa: E402
from lightning_green.pruning import count_macs_params  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few epochs, repeats and rounds: a smoke run")
    p.add_argument("--epochs", type=int, default=10, help="epoch budget of both runs")
    p.add_argument("--speedup", type=float, default=3.5, help="StructuredPruning target_speedup (MACs ratio)")
    p.add_argument("--threads", type=int, default=1, help="threads for PyTorch and ONNX Runtime alike")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per model per round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.rounds = 4, 10, 2
    return args


def fit(callbacks, epochs: int, root: Path) -> DigitsCNN:
    seed_everything(0, verbose=False)
    model = DigitsCNN()
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, DigitsDataModule(batch_size=64, seed=0))
    return model.eval()


def accuracy(run, loader) -> float:
    right = total = 0
    for x, y in loader:
        out = run(x)
        logits = out[0] if isinstance(out, tuple) else out
        right += int((logits.argmax(1) == y).sum())
        total += len(y)
    return 100.0 * right / total


def cpu_capabilities() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(
                        f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in have
                    )
                    break
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    return f"{model}; torch CPU capability {cap}; flags: {flags or 'n/a'}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"CPU: {cpu_capabilities()}")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, threads {args.threads} (both)")
    root = Path("benchmarks/results/_runs")
    start, end = 1, max(2, args.epochs // 2)
    dense = fit([], args.epochs, root)
    pruning = StructuredPruning(
        target_speedup=args.speedup, start_epoch=start, end_epoch=end, frequency=1, round_to=8, verbose=False
    )
    pruned = fit([pruning], args.epochs, root)
    example = dense.example_input_array
    (dense_macs, dense_params), (pruned_macs, pruned_params) = (count_macs_params(m, example) for m in (dense, pruned))
    print(
        f"MACs/sample: dense {dense_macs / 1e6:.2f} M, pruned {pruned_macs / 1e6:.2f} M "
        f"({dense_macs / pruned_macs:.2f}x fewer); params {dense_params:,} -> {pruned_params:,}"
    )

    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    held_out = DataLoader(ConcatDataset([dm.val_set, dm.test_set]), batch_size=64)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        acc = {
            "dense eager": accuracy(build_runner(dense, "eager", (example,), args.threads, d), held_out),
            "pruned eager": accuracy(build_runner(pruned, "eager", (example,), args.threads, d), held_out),
            "pruned onnx": accuracy(build_runner(pruned, "onnx", (example,), args.threads, d), held_out),
        }
    print("held-out accuracy (%): " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))

    result = bench_inference(
        {"dense": dense, "pruned": pruned},
        formats="eager,onnx",
        batch_sizes="1,64",
        repeats=args.repeats,
        warmup=5,
        rounds=args.rounds,
        threads=args.threads,
    )
    print(format_bench(result))
    goal = result.row("pruned", "onnx", 64).energy_per_1k_j / result.row("dense", "eager", 64).energy_per_1k_j
    latency = result.row("pruned", "onnx", 64).latency_ms_median / result.row("dense", "eager", 64).latency_ms_median
    delta = acc["pruned onnx"] - acc["pruned eager"]
    print(
        f"\npruned + ONNX Runtime vs dense eager, batch 64: energy/1k predictions {goal:.3f}x, latency {latency:.3f}x "
        f"({result.label}); accuracy pruned onnx - pruned eager = {delta:+.2f} points"
    )
    met = goal <= 0.35 and abs(delta) < 1e-9
    print(f"goal (<= 0.35x energy, same accuracy): {'met' if met else 'NOT met'}")
    if args.json:
        data = {
            "energy_per_1k_ratio": goal,
            "latency_ratio": latency,
            "accuracy_delta": delta,
            "accuracy": acc,
            "macs_reduction": dense_macs / pruned_macs,
            "macs": {"dense": dense_macs, "pruned": pruned_macs},
            "params": {"dense": dense_params, "pruned": pruned_params},
            "threads": args.threads,
            "cpu": cpu_capabilities(),
            "epochs": args.epochs,
            "bench": result.as_dict(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"written {args.json}")
    if args.quick:
        print("--quick is a smoke run: few epochs and repeats, so its figures are rough.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
