"""Carbon-aware training on the digits demo, replayed on a real grid trace with a simulated clock.

The job is told it needs ``--hours`` of compute and must finish within ``--deadline``; each training step is taken to
last ``hours / steps`` of simulated time, so a day of California's 2022 grid replays in seconds. The scheduler pauses
between optimizer steps in the dirty hours; the EnergyMonitor integrates CO₂ per window on the same clock, and the
green report shows the plan against the intensity curve::

    PYTHONPATH=. python examples/carbon_aware_example.py --start 2022-06-03T08:00

On a real run drop the clock: ``CarbonAwareScheduler(intensity="forecast.csv", deadline="2026-12-01T08:00")``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Sequence

from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from lightning_green import CarbonAwareScheduler, EnergyMonitor
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.report import write_report
from lightning_green.testing import SimClock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACE = os.path.join(ROOT, "tests", "data", "carbon", "us_caiso_2022-06-01_14_eia.csv")


class SimulatedStepTime(Callback):
    """Each training step takes ``step_s`` seconds of simulated time."""

    def __init__(self, clock: SimClock, step_s: float) -> None:
        self.clock, self.step_s = clock, step_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self.clock.advance(self.step_s)


def main(argv: Sequence[str] | None = None) -> CarbonAwareScheduler:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=TRACE, help="intensity CSV (default: the CAISO test excerpt)")
    parser.add_argument("--start", default="2022-06-03T08:00", help="simulated start time (UTC)")
    parser.add_argument("--hours", type=float, default=6.0, help="compute the job needs, hours")
    parser.add_argument("--deadline", default="24h")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--root", default=None, help="default_root_dir")
    args = parser.parse_args(argv)

    seed_everything(0)
    start = dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.timezone.utc)
    clock = SimClock(start.timestamp())
    scheduler = CarbonAwareScheduler(
        intensity=args.trace, deadline=args.deadline, expected_duration=args.hours * 3600, clock=clock
    )
    monitor = EnergyMonitor(carbon_intensity=args.trace, clock=clock, log_every_n_steps=4, min_window_s=0.0)
    root = args.root or os.path.join(os.getcwd(), "carbon_aware_example")
    trainer = Trainer(
        default_root_dir=root,
        max_steps=args.steps,
        logger=CSVLogger(root),
        callbacks=[SimulatedStepTime(clock, args.hours * 3600 / args.steps), scheduler, monitor],
        enable_progress_bar=False,
    )
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
    files = write_report(trainer.log_dir)
    print(f"paused {scheduler.paused_s / 3600:.1f} h; {monitor.total_gco2e():.3g} gCO2e; report: {files.markdown}")
    return scheduler


if __name__ == "__main__":
    main()
