"""Power-limit tuning on the calibrated simulated V100: default (max) limit vs tuner-chosen vs oracle.

Everything runs on a *simulated clock* (``lightning_green.testing.SimClock``), so the script is fast and
deterministic: the GPU is ``SimulatedGPU(curve="v100-resnet50")`` — throughput and draw per power limit from the
Zeus NSDI'23 V100 trace (ResNet-50/ImageNet, batch 256) — and one training step is 0.70 s of GPU work at 250 W
(3515 s per 5005-step epoch in that trace), with seeded ±2 % step-to-step jitter so profiling sees noise.

The tuned run drives the same pieces ``PowerLimitTuner`` uses — ``PowerLimitSearch`` over ``ZeusWindows`` on a
``ZeusMonitor`` — with its defaults (wait 1, warm-up 10, profile 40 steps per limit, 25 W stride), pausing at
every epoch end as the callback does. The oracle is an exhaustive search over every settable limit (1 W apart)
on the noise-free model, run at that limit from the first step. Cost is Zeus's:
``eta·energy + (1−eta)·max_limit·time``.

Run: ``PYTHONPATH=. python benchmarks/power_limit.py`` (10 epochs × 1000 steps, 5 seeds) or ``--quick``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

import _common  # noqa: F401 - puts the repository root on sys.path
from _common import environment, save_json
from zeus.monitor import ZeusMonitor
from zeus.utils.metric import zeus_cost

from lightning_green.power import PowerLimitSearch, ZeusWindows, limit_grid, make_selector
from lightning_green.testing import SimClock, simulated_gpus

STEP_WORK_S = 3514.986666666666 / 5005  # V100 @ 250 W, ResNet-50 b256: seconds per step
JITTER = 0.02


def _run(objective: str, eta: float, epochs: int, steps: int, seed: int, tune: bool, fixed_w: int | None = None):
    """One simulated training run; returns (energy J, time s, profiling steps, chosen W)."""
    clock = SimClock()
    rng = random.Random(seed)
    with simulated_gpus(1, curve="v100-resnet50", clock=clock) as gpus:
        gpu = gpus.gpus[0]
        min_mw, max_mw = gpu.get_power_management_limit_constraints()
        if fixed_w is not None:
            gpu.set_power_management_limit(fixed_w * 1000)
        monitor = ZeusMonitor(gpu_indices=[0], cpu_indices=[])
        search = None
        if tune:
            search = PowerLimitSearch(
                limit_grid(min_mw, max_mw, 25),
                lambda mw: gpu.set_power_management_limit(mw),
                ZeusWindows(monitor, 0, clock=clock),
                make_selector(objective, eta, None, world_size=1),
                warmup_steps=10,
                profile_steps=40,
                wait_steps=1,
            )
        monitor.begin_window("run", sync_execution=False)
        t0 = clock()
        for _ in range(epochs):
            for _ in range(steps):
                if search is not None and search.state not in ("done", "off"):
                    window = search.step_begin()
                    if window is not None and search.record(window.energy_j, window.time_s):
                        search.finish(search.select())
                gpu.run(STEP_WORK_S * rng.gauss(1.0, JITTER))
            if search is not None:
                search.pause(step_completed=True)
        energy = monitor.end_window("run", sync_execution=False).gpu_energy[0]
        elapsed = clock() - t0
    chosen = (search.chosen_mw // 1000) if search is not None and search.chosen_mw else fixed_w
    return energy, elapsed, (search.profiling_steps if search else 0), chosen


def _model_cost(limit_w: float, eta: float, objective: str, total_steps: int, max_w: float) -> tuple[float, float]:
    """Noise-free energy and time of the whole run at ``limit_w``."""
    from lightning_green.testing import SimulatedGPU

    gpu = SimulatedGPU(curve="v100-resnet50", clock=SimClock())
    t = STEP_WORK_S / gpu.throughput(limit_w) * total_steps
    return gpu.busy_draw_w(limit_w) * t, t


def _objective_value(objective: str, eta: float, energy: float, time_s: float, max_w: float) -> float:
    if objective == "energy":
        return energy
    if objective == "time":
        return time_s
    return zeus_cost(energy, time_s, eta, max_w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs x 600 steps, 1 seed (smoke run)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per epoch")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for flag in ("epochs", "steps", "seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.quick:
        args.epochs, args.steps, args.seeds = 2, 600, 1
    total = args.epochs * args.steps
    max_w = 250.0
    print(
        f"simulated V100 (Zeus NSDI'23 trace, ResNet-50 b256), {args.epochs} epochs x {args.steps} steps, "
        f"{args.seeds} seed(s), simulated clock; ratios are medians over seeds (worst in brackets)\n"
    )
    header = (
        f"{'objective':<16}{'chosen W':>9}{'oracle W':>9}{'E/default':>11}{'T/default':>11}{'cost/default':>14}"
        f"{'cost/oracle':>14}{'profiling':>12}"
    )
    print(header)
    ok = True
    runs: dict[tuple[int, int], tuple] = {}
    table: list[dict] = []

    def fixed(seed: int, limit_w: int) -> tuple:
        if (seed, limit_w) not in runs:
            runs[seed, limit_w] = _run("energy", 1.0, args.epochs, args.steps, seed, tune=False, fixed_w=limit_w)
        return runs[seed, limit_w]

    for objective, eta in (("zeus-cost", 0.5), ("zeus-cost", 0.8), ("energy", 1.0), ("time", 0.0)):
        oracle_w = min(
            range(100, 251),
            key=lambda w: _objective_value(objective, eta, *_model_cost(w, eta, objective, total, max_w), max_w),
        )
        rows = []
        for seed in range(args.seeds):
            de, dt, _, _ = fixed(seed, 250)
            te, tt, prof, chosen = _run(objective, eta, args.epochs, args.steps, seed, tune=True)
            # the oracle gets the same jitter: run it at its limit with the same seed
            oe_s, ot_s, _, _ = fixed(seed, oracle_w)
            value = _objective_value(objective, eta, te, tt, max_w)
            rows.append(
                (
                    chosen,
                    te / de,
                    tt / dt,
                    value / _objective_value(objective, eta, de, dt, max_w),
                    value / _objective_value(objective, eta, oe_s, ot_s, max_w),
                    prof / total,
                )
            )
        med = [statistics.median(r[i] for r in rows) for i in range(1, 6)]
        worst_oracle = max(r[4] for r in rows)
        chosen = statistics.mode(r[0] for r in rows)
        name = f"{objective}" + (f" η={eta}" if objective == "zeus-cost" else "")
        print(
            f"{name:<16}{chosen:>9}{oracle_w:>9}{med[0]:>11.3f}{med[1]:>11.3f}{med[2]:>14.3f}"
            f"{med[3]:>8.4f} [{worst_oracle:.4f}]{med[4]:>11.1%}"
        )
        table.append(
            {
                "objective": objective,
                "eta": eta,
                "chosen_w": chosen,
                "oracle_w": oracle_w,
                "energy_vs_default": med[0],
                "time_vs_default": med[1],
                "cost_vs_default": med[2],
                "cost_vs_oracle": med[3],
                "cost_vs_oracle_worst": worst_oracle,
                "profiling_share": med[4],
            }
        )
        if objective == "zeus-cost" and eta == 0.5:
            ok = worst_oracle <= 1.01 and med[4] <= 0.05
    print(
        "\ngoals (zeus-cost η=0.5): cost within 1 % of the oracle, profiling <= 5 % of steps: "
        + ("met" if ok else "NOT met")
        + ("" if not args.quick else " (--quick: the run is too short for the profiling goal)")
    )
    save_json(
        {
            "benchmark": "power_limit",
            "epochs": args.epochs,
            "steps": args.steps,
            "seeds": args.seeds,
            "objectives": table,
            "goals_met": ok,
            "environment": environment(),
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
