"""StructuredPruning vs the dense model vs Lightning's ModelPruning, on the digits demo (CPU, one process).

For each model (the demo ``DigitsCNN`` and the small ResNet-style ``DigitsResNet``), three runs with the same epoch
budget and seed:

- ``dense``: plain training;
- ``structured``: ``StructuredPruning(target_speedup=...)``, gradual prunes, then fine-tuning;
- ``masked``: Lightning's ``ModelPruning`` (global L1, unstructured) at the same epochs and the same final
  parameter sparsity as ``structured``.

Printed per model: held-out accuracy (validation + test images, never trained on), MACs and parameters
(torch-pruning's counter), and two ratios measured side by side in this process — inference latency at batch 64 and
the time of one training epoch — taken alternately over several rounds, the median reported. Ratios are pruned /
dense: below 1 is faster. Goals: >= 2x fewer MACs, <= 1 point accuracy drop, latency ratio <= 0.55.

    python benchmarks/pruning.py            # full run (a few minutes)
    python benchmarks/pruning.py --quick    # smoke run (a minute)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelPruning
from torch.utils.data import ConcatDataset, DataLoader

from lightning_green import StructuredPruning
from lightning_green.demos import DigitsCNN, DigitsDataModule, DigitsResNet
from lightning_green.pruning import count_macs_params, prune_points

MODELS = {"DigitsCNN": DigitsCNN, "DigitsResNet": DigitsResNet}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few epochs and rounds: a smoke run")
    p.add_argument("--epochs", type=int, default=12, help="epoch budget of every run")
    p.add_argument("--speedup", type=float, default=2.5, help="StructuredPruning target_speedup")
    p.add_argument("--round-to", type=int, default=8, help="StructuredPruning round_to (channel multiples)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per run (accuracy is their mean)")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds")
    p.add_argument("--batches", type=int, default=None, help="training batches per epoch (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/pruning.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.rounds, args.batches = 3, 1, 3, 4
    return args


def schedule(epochs: int) -> tuple[int, int, int]:
    """Prune from 1/8 to 1/2 of the budget, every ~1/10 of it; the second half fine-tunes."""
    start = max(1, epochs // 8)
    end = max(start, epochs // 2 - 1)
    frequency = max(1, (end - start) // 3)
    return start, end, frequency


def fit(model_cls, callbacks, epochs: int, seed: int, root: Path, batches: int | None, channels_last: bool = True):
    seed_everything(seed, verbose=False)
    model = model_cls(channels_last=channels_last)
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        limit_train_batches=batches,
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
    if not channels_last:  # trained in the default layout (ModelPruning cannot flatten channels-last weights)
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model.eval()


@torch.no_grad()
def accuracy(model, loader) -> float:
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * right / total


def nonzero_params(model) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def alternate(fns: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median seconds of each fn, run in rotating order, round after round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def latency(models: dict, rounds: int, repeats: int) -> dict[str, float]:
    x = torch.randn(64, 1, 24, 24)

    def runner(m):
        def run():
            with torch.no_grad():
                for _ in range(repeats):
                    m(x)

        return run

    for m in models.values():  # warm-up: oneDNN builds its kernels per shape
        runner(m)()
    return alternate({k: runner(m) for k, m in models.items()}, rounds)


def train_epoch(models: dict, loader, rounds: int, batches: int | None) -> dict[str, float]:
    data = list(loader)[:batches]

    def runner(m):
        def run():
            model = copy.deepcopy(m).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for x, y in data:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

        return run

    for m in models.values():
        runner(m)()
    return alternate({k: runner(m) for k, m in models.items()}, rounds)


def bench_model(name: str, args: argparse.Namespace, root: Path) -> dict:
    model_cls = MODELS[name]
    start, end, frequency = schedule(args.epochs)
    points = prune_points(start, end, frequency)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    held_out = DataLoader(ConcatDataset([dm.val_set, dm.test_set]), batch_size=256)
    example = model_cls().example_input_array
    runs: dict[str, list] = {"dense": [], "structured": [], "masked": []}
    for seed in range(args.seeds):
        dense = fit(model_cls, [], args.epochs, seed, root, args.batches)
        pruning = StructuredPruning(
            target_speedup=args.speedup,
            start_epoch=start,
            end_epoch=end,
            frequency=frequency,
            round_to=args.round_to,
            # No layer loses more than half its channels: besides keeping the comparison tame, this keeps the
            # ResNet's 1x1 stride-2 shortcut convs at >= 16 input channels. torch 2.13's CPU backward of such a
            # conv in channels-last with < 16 input channels corrupts the heap (seen here: "corrupted size vs.
            # prev_size", SIGFPE, segfaults) — a torch bug, reproducible without any pruning.
            max_layer_ratio=0.5,
            verbose=False,
        )
        structured = fit(model_cls, [pruning], args.epochs, seed, root, args.batches)
        dense_params = count_macs_params(dense, example)[1]
        sparsity = 1.0 - count_macs_params(structured, example)[1] / dense_params
        prunable = sum(m.weight.numel() for m in dense.modules() if hasattr(m, "weight") and m.weight is not None)
        final = min(0.99, sparsity * dense_params / prunable)
        # ModelPruning prunes at the *end* of an epoch a share of what is left; follow the same linear schedule.
        amounts = {}
        for k, p in enumerate(points, start=1):
            before, after = final * (k - 1) / len(points), final * k / len(points)
            amounts[p - 1] = 1.0 - (1.0 - after) / (1.0 - before)
        masking = ModelPruning(
            "l1_unstructured",
            amount=lambda epoch, amounts=amounts: amounts.get(epoch, 0.0),
            use_global_unstructured=True,
            make_pruning_permanent=True,
            verbose=0,
        )
        masked = fit(model_cls, [masking], args.epochs, seed, root, args.batches, channels_last=False)
        for key, model in (("dense", dense), ("structured", structured), ("masked", masked)):
            macs, params = count_macs_params(model, example)
            runs[key].append(
                {
                    "model": model,
                    "acc": accuracy(model, held_out),
                    "macs": macs,
                    "params": params,
                    "nonzero": nonzero_params(model),
                }
            )
    models = {k: v[0]["model"] for k, v in runs.items()}
    repeats = 5 if args.quick else 20
    lat = latency(models, args.rounds, repeats)
    epoch = train_epoch(models, dm.train_dataloader(), args.rounds, args.batches)
    result = {"model": name, "epochs": args.epochs, "prune_epochs": points, "seeds": args.seeds, "runs": {}}
    for key, rs in runs.items():
        result["runs"][key] = {
            "accuracy": statistics.mean(r["acc"] for r in rs),
            "accuracy_per_seed": [r["acc"] for r in rs],
            "macs": rs[0]["macs"],
            "params": rs[0]["params"],
            "nonzero_params": rs[0]["nonzero"],
            "latency_ms_b64": 1000 * lat[key] / repeats,
            "train_epoch_s": epoch[key],
        }
    d = result["runs"]["dense"]
    for key in ("structured", "masked"):
        r = result["runs"][key]
        r["macs_reduction"] = d["macs"] / r["macs"]
        r["accuracy_drop_points"] = d["accuracy"] - r["accuracy"]
        r["latency_ratio"] = r["latency_ms_b64"] / d["latency_ms_b64"]
        r["train_epoch_ratio"] = r["train_epoch_s"] / d["train_epoch_s"]
        r["param_sparsity"] = 1.0 - r["nonzero_params"] / d["nonzero_params"]
    return result


def print_table(result: dict) -> None:
    print(
        f"\n{result['model']}: {result['epochs']} epochs, prunes at epochs {result['prune_epochs']}, "
        f"{result['seeds']} seed(s)"
    )
    print(
        f"{'run':<11}{'acc %':>8}{'drop pt':>9}{'MACs':>12}{'MACs x':>8}{'params':>9}{'sparsity':>9}"
        f"{'lat ms':>9}{'lat ratio':>10}{'epoch s':>9}{'epoch ratio':>12}"
    )
    for key, r in result["runs"].items():
        print(
            f"{key:<11}{r['accuracy']:>8.2f}{r.get('accuracy_drop_points', 0.0):>9.2f}{r['macs'] / 1e6:>11.2f}M"
            f"{r.get('macs_reduction', 1.0):>8.2f}{r['nonzero_params'] / 1e3:>8.1f}k"
            f"{r.get('param_sparsity', 0.0):>9.2f}"
            f"{r['latency_ms_b64']:>9.2f}{r.get('latency_ratio', 1.0):>10.2f}{r['train_epoch_s']:>9.3f}"
            f"{r.get('train_epoch_ratio', 1.0):>12.2f}"
        )
    s = result["runs"]["structured"]
    goals = [
        ("MACs reduction >= 2", s["macs_reduction"] >= 2.0),
        ("accuracy drop <= 1 point", s["accuracy_drop_points"] <= 1.0),
        ("latency ratio <= 0.55", s["latency_ratio"] <= 0.55),
    ]
    print("goals: " + ", ".join(f"{g}: {'met' if ok else 'NOT met'}" for g, ok in goals))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path("benchmarks/results/_runs")
    results = []
    for name in args.models:
        result = bench_model(name, args, root)
        print_table(result)
        results.append(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    print(f"\nthreads={torch.get_num_threads()}; written {args.json}")
    if args.quick:
        print("--quick is a smoke run: a dozen training steps, so its accuracies mean nothing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
