"""fp32 vs scheduled bf16 on the digits demo, side by side in one process on CPU.

Trains :class:`~lightning_green.demos.DigitsCNN` (channels_last, 24×24) twice per round — plain fp32, and with
``AMPScheduler(policy="bf16-mixed", warmup_epochs=1)`` (one fp32 warm-up epoch, bf16 after) — alternating which
goes first, with the same seed within a round and a new seed each round. Prints epoch-time ratios (scheduled /
fp32; an epoch is its training batches plus the validation run at its end) for the bulk bf16 epochs, the warm-up
epoch and the whole run, each the median over rounds, and the final validation accuracy of both.

Goal (issue 3): bulk epoch-time ratio <= 0.55 with final accuracy within 0.5 points of fp32.

    PYTHONPATH=. python benchmarks/amp_schedule.py            # 3 rounds of 10 epochs
    PYTHONPATH=. python benchmarks/amp_schedule.py --quick    # smoke run: 1 round, 3 short epochs
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile

import _common  # noqa: F401 - puts the repository root on sys.path
import torch
from _common import EpochTimer, environment, save_json
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_green import AMPScheduler
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.precision.capability import cpu_bf16_supported


def run(variant: str, args: argparse.Namespace, seed: int) -> tuple[EpochTimer, float, AMPScheduler | None]:
    seed_everything(seed, verbose=False)
    timer = EpochTimer()
    callbacks: list[Callback] = [timer]
    amp = None
    if variant == "scheduled":
        amp = AMPScheduler(policy="bf16-mixed", warmup_epochs=1)
        callbacks.append(amp)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(
            default_root_dir=root,
            accelerator="cpu",
            devices=1,
            max_epochs=args.epochs,
            limit_train_batches=args.limit_train_batches,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(DigitsCNN(), DigitsDataModule(batch_size=args.batch_size, seed=seed))
    return timer, float(trainer.callback_metrics["val_acc"]), amp


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="fp32 vs scheduled bf16 epoch time on the digits demo (CPU).")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 3 epochs of 5 batches")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds, args.limit_train_batches = 3, 1, 5
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (one fp32 warm-up epoch, then bf16)")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)

    print("command:", shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU native bf16 "
        f"(AVX-512-BF16/AMX): {cpu_bf16_supported()}; DigitsCNN channels_last 24x24, batch {args.batch_size}, "
        f"{args.epochs} epochs x {args.rounds} round(s)"
    )
    keys = ("bulk", "warm", "whole", "bulk_cpu", "warm_cpu", "whole_cpu")
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    acc: dict[str, list[float]] = {"fp32": [], "scheduled": []}
    for r in range(args.rounds):
        seed = args.seed + r
        order = ["fp32", "scheduled"] if r % 2 == 0 else ["scheduled", "fp32"]
        timers: dict[str, EpochTimer] = {}
        for variant in order:
            timers[variant], val_acc, amp = run(variant, args, seed)
            acc[variant].append(val_acc)
            if amp is not None:
                assert amp.fallbacks == 0, "a fallback would make the timing meaningless"
        f, s = timers["fp32"], timers["scheduled"]
        ratios["bulk"].append(statistics.fmean(s.epoch_s[1:]) / statistics.fmean(f.epoch_s[1:]))
        ratios["warm"].append(s.epoch_s[0] / f.epoch_s[0])
        ratios["whole"].append(sum(s.epoch_s) / sum(f.epoch_s))
        ratios["bulk_cpu"].append(statistics.fmean(s.epoch_cpu_s[1:]) / statistics.fmean(f.epoch_cpu_s[1:]))
        ratios["warm_cpu"].append(s.epoch_cpu_s[0] / f.epoch_cpu_s[0])
        ratios["whole_cpu"].append(sum(s.epoch_cpu_s) / sum(f.epoch_cpu_s))
        print(
            f"round {r + 1} (seed {seed}, {' then '.join(order)}): wall s per epoch: fp32 "
            f"{' '.join(f'{t:.2f}' for t in f.epoch_s)} | scheduled {' '.join(f'{t:.2f}' for t in s.epoch_s)}; "
            f"bulk ratio {ratios['bulk'][-1]:.3f} (CPU time {ratios['bulk_cpu'][-1]:.3f}), "
            f"whole-run {ratios['whole'][-1]:.3f} (CPU time {ratios['whole_cpu'][-1]:.3f})"
        )

    med = {k: statistics.median(v) for k, v in ratios.items()}
    result = {
        "bulk_bf16_epoch_ratio": med["bulk"],
        "bulk_bf16_epoch_cpu_ratio": med["bulk_cpu"],
        "warmup_epoch_ratio": med["warm"],
        "whole_run_ratio": med["whole"],
        "whole_run_cpu_ratio": med["whole_cpu"],
        "fp32_val_acc": statistics.fmean(acc["fp32"]),
        "scheduled_val_acc": statistics.fmean(acc["scheduled"]),
    }
    points = 100 * (result["scheduled_val_acc"] - result["fp32_val_acc"])
    n = args.rounds
    print()
    rows = [
        (
            f"bulk bf16 epochs (2-{args.epochs}), per epoch",
            med["bulk"],
            med["bulk_cpu"],
            f"goal <= 0.55: {'met' if med['bulk'] <= 0.55 else 'NOT met'}"
            + ("" if cpu_bf16_supported() else " (this CPU has no native bf16: the goal needs AVX-512-BF16/AMX)"),
        ),
        ("epoch 1 (fp32 in both: callback overhead)", med["warm"], med["warm_cpu"], ""),
        (f"whole run ({args.epochs} epochs)", med["whole"], med["whole_cpu"], ""),
    ]
    print(f"{'scheduled / fp32, median of ' + str(n) + ' round(s)':<46} {'wall':>6} {'CPU time':>9}")
    for label, wall, cpu, goal in rows:
        print(f"  {label:<44} {wall:>6.3f} {cpu:>9.3f}   {goal}".rstrip())
    print(
        f"final val_acc (mean of {n}): fp32 {100 * result['fp32_val_acc']:.2f} %, scheduled "
        f"{100 * result['scheduled_val_acc']:.2f} %, difference {points:+.2f} points    goal within 0.5"
    )
    save_json({"benchmark": "amp_schedule", "rounds": n, **result, "environment": environment()}, args.json)
    return result


if __name__ == "__main__":
    main()
