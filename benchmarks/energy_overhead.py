"""Overhead of EnergyMonitor on the demo's training: with vs without, one process, alternating rounds.

    python benchmarks/energy_overhead.py            # 10 rounds
    python benchmarks/energy_overhead.py --quick    # 3 rounds
    python benchmarks/energy_overhead.py --accelerator gpu   # on a GPU: NVML reads and the CUDA syncs at windows
    (torch on one thread by default: --threads)

Each round trains the digits demo (DigitsCNN, 24x24, batch 64) for 3 epochs without and 3 epochs with an
EnergyMonitor (order alternating between rounds), timing epochs 2-3 from epoch start to epoch end, so the monitor's
per-batch hook and its epoch-end flush are inside the timed region. Two monitor settings are measured: the
default (step logs every 50 batches) and a busy one (step logs every 5 batches). Goal: median ratio <= 1.005.
Reported: the wall-time ratio, the process-CPU-time ratio (steadier on a shared machine) and the share of the
timed epochs spent inside the monitor's hooks (the most direct view of the overhead).
"""

from __future__ import annotations

import time

import _common  # noqa: F401 - puts the repository root on sys.path
import torch
from _common import EpochTimer, emit, environment, median, parser
from lightning.pytorch import Trainer, seed_everything

from lightning_green import EnergyMonitor
from lightning_green.demos import DigitsCNN, DigitsDataModule

HOOKS = ("on_train_batch_end", "on_train_epoch_end")


def time_hooks(monitor: EnergyMonitor, spent: list[float]) -> EnergyMonitor:
    """Wrap the monitor's per-epoch hooks; time spent in them during the timed epochs (2, 3) goes to ``spent``."""
    for name in HOOKS:
        original = getattr(monitor, name)

        def timed(trainer, *args, _original=original, **kwargs):
            t0 = time.perf_counter()
            try:
                return _original(trainer, *args, **kwargs)
            finally:
                if trainer.current_epoch >= 1:
                    spent.append(time.perf_counter() - t0)

        setattr(monitor, name, timed)
    return monitor


def epoch_times(
    monitor: EnergyMonitor | None, epochs: int, accelerator: str = "cpu"
) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each training epoch after the first (which carries start-up costs)."""
    seed_everything(0)
    timer = EpochTimer()
    callbacks = ([monitor] if monitor else []) + [timer]
    trainer = Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(DigitsCNN(), DigitsDataModule())
    return timer.epoch_s[1:], timer.epoch_cpu_s[1:]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's own choice)")
    p.add_argument("--accelerator", default="cpu", help="Trainer accelerator: cpu (default) or gpu")
    args = p.parse_args()
    if args.threads:
        # One thread: two OpenMP threads on a shared two-core machine spin and make epoch times swing by +-30 %.
        torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 10
    epochs = 3
    settings = {"default": {}, "every_5_batches": {"log_every_n_steps": 5, "min_window_s": 0.0}}
    ratios: dict[str, list[float]] = {k: [] for k in settings}
    cpu_ratios: dict[str, list[float]] = {k: [] for k in settings}
    hook_share: dict[str, list[float]] = {k: [] for k in settings}
    acc = args.accelerator
    for r in range(rounds):
        for name, kwargs in settings.items():
            spent: list[float] = []
            monitor = time_hooks(EnergyMonitor(print_summary=False, report_filename=None, **kwargs), spent)
            if r % 2 == 0:
                base, with_monitor = epoch_times(None, epochs, acc), epoch_times(monitor, epochs, acc)
            else:
                with_monitor, base = epoch_times(monitor, epochs, acc), epoch_times(None, epochs, acc)
            ratios[name].append(sum(with_monitor[0]) / sum(base[0]))
            cpu_ratios[name].append(sum(with_monitor[1]) / sum(base[1]))
            # Time spent inside the monitor's hooks in the timed epochs: a direct, far less noisy view of the
            # same overhead.
            hook_share[name].append(sum(spent) / sum(with_monitor[0]))
            print(
                f"round {r + 1}/{rounds} {name}: ratio {ratios[name][-1]:.4f} (CPU time {cpu_ratios[name][-1]:.4f}) "
                f"hook share {hook_share[name][-1]:.5f}",
                flush=True,
            )
    results = {
        "benchmark": "energy_overhead",
        "rounds": rounds,
        "median_time_ratio": {k: round(median(v), 4) for k, v in ratios.items()},
        "median_cpu_time_ratio": {k: round(median(v), 4) for k, v in cpu_ratios.items()},
        "all_ratios": {k: [round(x, 4) for x in v] for k, v in ratios.items()},
        "all_cpu_time_ratios": {k: [round(x, 4) for x in v] for k, v in cpu_ratios.items()},
        "median_hook_time_share": {k: round(median(v), 5) for k, v in hook_share.items()},
        "accelerator": acc,
        "goal": "median_time_ratio <= 1.005",
        "environment": environment(),
    }
    emit(results, args.json)


if __name__ == "__main__":
    main()
