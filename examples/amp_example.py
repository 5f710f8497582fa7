"""Scheduled mixed precision on the digits demo, in plain Python.

fp32 for a warm-up epoch, the device's best low precision (``policy="auto"``) in between, fp32 for the last
epoch; a NaN/inf loss or an fp16 overflow storm falls back to fp32 instead of ruining the weights::

    PYTHONPATH=. python examples/amp_example.py --epochs 6

The YAML twin of this script is ``examples/configs/amp.yaml`` (``python -m lightning_green fit --config ...``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning.pytorch import Trainer, seed_everything

from lightning_green import AMPScheduler, EnergyMonitor
from lightning_green.demos import DigitsCNN, DigitsDataModule


def main(argv: Sequence[str] | None = None) -> AMPScheduler:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="max_epochs (at least 3: warm-up, low, final)")
    parser.add_argument("--policy", default="auto", choices=["auto", "bf16-mixed", "16-mixed"])
    parser.add_argument("--limit-train-batches", type=int, default=None, help="for a quick smoke run")
    parser.add_argument("--root", default=None, help="default_root_dir (logs, checkpoints, energy report)")
    args = parser.parse_args(argv)

    seed_everything(0)
    amp = AMPScheduler(policy=args.policy, warmup_epochs=1, final_fp32_epochs=1)
    trainer = Trainer(
        max_epochs=args.epochs,
        callbacks=[EnergyMonitor(), amp],
        limit_train_batches=args.limit_train_batches,
        default_root_dir=args.root,
        enable_progress_bar=False,
    )
    trainer.fit(DigitsCNN(), DigitsDataModule())

    print(f"policy {args.policy!r} picked {amp.choice.mode} ({amp.choice.reason})")
    for s in amp.switches:
        print(f"  epoch {s['epoch']}, step {s['step']}: {s['from']} -> {s['to']} ({s['cause']})")
    print(f"fallbacks: {amp.fallbacks}, skipped steps: {amp.skipped_steps}")
    print(f"val_acc: {float(trainer.callback_metrics['val_acc']):.4f}")
    return amp


if __name__ == "__main__":
    main()
