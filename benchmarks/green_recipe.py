"""The green recipe end to end: an fp32 baseline vs the green preset, side by side in one process.

For each task, two fits per round through the ``lightning-green`` CLI, with the same model, data, seed and epoch
budget — everything from the task's preset:

- ``digits``: ``examples/configs/green.yaml`` (DigitsCNN on scikit-learn's handwritten digits), metric ``val_acc``;
- ``lm``: ``examples/configs/green_gpt.yaml`` (TinyGPT on the standard library's source), metric ``val_loss``.

The *baseline* runs the preset with only its EnergyMonitor and GreenReport, in fp32; the *green* run is the preset
as written (EnergyMonitor + AMPScheduler + StructuredPruning + PowerLimitTuner + GreenReport; ``--no-power-tuner``
leaves the tuner out). Which variant goes first alternates by round, and each round has its own seed. Both runs are
read back from their log dirs and compared with :func:`lightning_green.report.compare_runs`: *energy-to-target* and
*time-to-target* (cumulative fit energy and elapsed fit time at the first validation that reaches the target), the
final metric and MACs per sample. The ratios green / baseline are taken per round; the table shows their median.

Energy is what the EnergyMonitor records: *estimated* on a CPU (process CPU seconds x 12 W per core, plus resident
memory x 0.3725 W/GB), *measured* by NVML for a GPU (its CPU share still estimated; label ``mixed``). On a CPU the
estimate follows CPU time, so the script runs torch on one thread by default (``--threads``): two threads on a
shared two-core machine spin in OpenMP and can take ten times longer, which says nothing about either recipe.

On a GPU where this process may set power limits (SYS_ADMIN or zeusd), the green runs' PowerLimitTuner does set them
(and restores the original limit afterwards); on a shared GPU pass ``--no-power-tuner``. Elsewhere it is off.

Goal (digits): energy-to-target <= 0.4x the baseline's, final accuracy within 1 point.

    PYTHONPATH=. python benchmarks/green_recipe.py                    # 3 rounds per task
    PYTHONPATH=. python benchmarks/green_recipe.py --tasks digits     # the digits demo only
    PYTHONPATH=. python benchmarks/green_recipe.py --quick            # smoke run: a few batches, 1 round
    benchmarks/gpu_check.sh runs it as: --quick --accelerator gpu --no-power-tuner --json FILE --runs-dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from lightning_green.precision.capability import cpu_bf16_supported  # noqa: E402
from lightning_green.report import Comparison, format_comparison, load_run, write_comparison  # noqa: E402
from lightning_green.report.run import metric_mode  # noqa: E402

#: Callbacks the baseline keeps from a preset: they measure and report, they do not change the training.
MEASURING = ("lightning_green.EnergyMonitor", "lightning_green.EnergyBudget", "lightning_green.GreenReport")
TUNER = "lightning_green.PowerLimitTuner"
VARIANTS = ("baseline", "green")


@dataclass(frozen=True)
class Task:
    """One workload of the benchmark: its preset, the metric it is judged on and the target."""

    name: str
    config: str
    metric: str
    target: float | None
    quick: tuple[str, ...]


TASKS = {
    "digits": Task(
        name="digits",
        config="examples/configs/green.yaml",
        metric="val_acc",
        target=0.97,
        quick=("--trainer.max_epochs=4", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2"),
    ),
    "lm": Task(
        name="lm",
        config="examples/configs/green_gpt.yaml",
        metric="val_loss",
        target=None,
        quick=(
            "--trainer.max_epochs=4",
            "--trainer.limit_train_batches=6",
            "--trainer.limit_val_batches=2",
            "--data.train_bytes=16384",
            "--data.val_bytes=4096",
        ),
    ),
}


# ------------------------------------------------------------------------------------------------- configs
def class_path(callback: Any) -> str:
    """The ``class_path`` of a callback entry in a LightningCLI config (a dict, or a bare class path string)."""
    return callback if isinstance(callback, str) else str(callback.get("class_path", ""))


def variant_configs(preset: dict[str, Any], power_tuner: bool = True) -> dict[str, dict[str, Any]]:
    """The baseline and green configs derived from a preset (a parsed LightningCLI YAML).

    The baseline keeps only the measuring callbacks (:data:`MEASURING`) and trains in fp32; the green config is
    the preset, without the PowerLimitTuner when ``power_tuner`` is false. The EnergyMonitor's summary table is
    turned off in both (the benchmark prints its own).

    Raises:
        ValueError: The preset has no EnergyMonitor or no GreenReport (the comparison reads their files).
    """
    callbacks = list(preset.get("trainer", {}).get("callbacks") or [])
    paths = [class_path(cb) for cb in callbacks]
    for needed in ("lightning_green.EnergyMonitor", "lightning_green.GreenReport"):
        if needed not in paths:
            raise ValueError(f"the preset has no {needed} in trainer.callbacks; the comparison reads its files.")
    out = {}
    for variant in VARIANTS:
        config = copy.deepcopy(preset)
        kept = []
        for cb in copy.deepcopy(callbacks):
            path = class_path(cb)
            if variant == "baseline" and path not in MEASURING:
                continue
            if variant == "green" and path == TUNER and not power_tuner:
                continue
            if path == "lightning_green.EnergyMonitor":
                cb = {"class_path": path} if isinstance(cb, str) else cb
                cb.setdefault("init_args", {})["print_summary"] = False
            kept.append(cb)
        config["trainer"]["callbacks"] = kept
        if variant == "baseline":
            config["trainer"]["precision"] = "32-true"
        out[variant] = config
    return out


def fit_args(config_path: Path, root: Path, seed: int, accelerator: str, extra: Sequence[str] = ()) -> list[str]:
    """``lightning-green fit`` arguments of one run: the config, where it writes, the seed, quiet output."""
    return [
        "fit",
        "--config",
        str(config_path),
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        *extra,
    ]


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Lightning's info lines and its known warnings off (unless ``verbose``); the CLI must not read our argv."""
    argv = sys.argv
    sys.argv = argv[:1]
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            if not verbose:
                for lg in loggers:
                    lg.setLevel(logging.WARNING)
                warnings.filterwarnings("ignore", message=r".*(LeafSpec|logging interval|does not have many workers)")
            yield
    finally:
        sys.argv = argv
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fit(config_path: Path, root: Path, seed: int, accelerator: str, extra: Sequence[str], verbose: bool) -> Path:
    """Run one fit through the CLI; returns its log dir."""
    from lightning_green.cli import cli

    with _quiet(verbose):
        result = cli(fit_args(config_path, root, seed, accelerator, extra))
    log_dir = result.trainer.log_dir
    assert log_dir is not None, "the run has no logger"
    return Path(log_dir)


# ------------------------------------------------------------------------------------------------- figures
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def round_figures(cmp: Comparison) -> dict[str, Any]:
    """One round's figures from the comparison of [baseline, green]: both runs' and the ratios green / baseline."""
    base, green = cmp.rows
    runs = {}
    for variant, row in zip(VARIANTS, (base, green), strict=True):
        t = row.target
        runs[variant] = {
            "final": row.final,
            "best": row.best,
            "reached": t.reached,
            "target_epoch": t.epoch,
            "energy_to_target_j": t.energy_j,
            "time_to_target_s": t.time_s,
            "energy_j": row.energy_j,
            "time_s": row.time_s,
            "macs": row.macs,
            "dense_macs": row.dense_macs,
            "label": row.label,
        }
    both = base.target.reached and green.target.reached
    ratios = {
        "energy_to_target": _ratio(green.target.energy_j, base.target.energy_j) if both else None,
        "time_to_target": _ratio(green.target.time_s, base.target.time_s) if both else None,
        "energy": _ratio(green.energy_j, base.energy_j),
        "time": _ratio(green.time_s, base.time_s),
        "macs": _ratio(green.macs, base.macs),
    }
    delta = green.final - base.final if green.final is not None and base.final is not None else None
    return {"target": cmp.target, "runs": runs, "ratios": ratios, "final_delta": delta}


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(statistics.median(kept)) if kept else None


def median_counting_misses(ratios: Sequence[float | None], baseline_reached: Sequence[bool]) -> float | None:
    """Median of a to-target ratio over the rounds whose baseline reached the target, a round whose other run did not
    reach it counting as infinitely worse (not as missing, so the median does not hide it); ``None`` when the median
    round did not reach it.

    Example:
        >>> median_counting_misses([0.6, None, 0.7], [True] * 3), median_counting_misses([0.6, None, None], [True] * 3)
        (0.7, None)
    """
    kept = [math.inf if r is None else r for r, ok in zip(ratios, baseline_reached, strict=True) if ok]
    median = float(statistics.median(kept)) if kept else None
    return None if median is None or math.isinf(median) else median


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds: each variant's figures, the ratios green / baseline and the final-metric difference."""
    runs = {}
    for variant in VARIANTS:
        rows = [r["runs"][variant] for r in rounds]
        runs[variant] = {
            key: _median([row[key] for row in rows])
            for key in ("final", "best", "energy_to_target_j", "time_to_target_s", "energy_j", "time_s", "macs")
        }
        runs[variant]["reached"] = sum(bool(row["reached"]) for row in rows)
        runs[variant]["label"] = rows[-1]["label"]
    ratios = {key: _median([r["ratios"][key] for r in rounds]) for key in rounds[0]["ratios"]}
    reached = [bool(r["runs"]["baseline"]["reached"]) for r in rounds]
    for key in ("energy_to_target", "time_to_target"):  # a round green never reached the target in counts
        ratios[key] = median_counting_misses([r["ratios"][key] for r in rounds], reached)
    return {
        "rounds": len(rounds),
        "runs": runs,
        "ratios": ratios,
        "final_delta": _median([r["final_delta"] for r in rounds]),
    }


def goals(summary: dict[str, Any], max_energy_ratio: float = 0.4, max_drop: float = 0.01) -> dict[str, Any]:
    """The digits goal: energy-to-target <= ``max_energy_ratio`` x baseline, final metric within ``max_drop``."""
    ratio = summary["ratios"]["energy_to_target"]
    delta = summary["final_delta"]
    return {
        "energy_to_target_ratio_max": max_energy_ratio,
        "energy_to_target_met": ratio is not None and ratio <= max_energy_ratio,
        "final_drop_max": max_drop,
        "final_met": delta is not None and delta >= -max_drop - 1e-9,  # 1e-9: float rounding of "exactly 1 point"
    }


# ------------------------------------------------------------------------------------------------- output
def _num(x: float | None, fmt: str = "{:.4g}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _j(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1000:.3g} kJ" if x >= 1000 else f"{x:.3g} J"


def format_summary(task: Task, summary: dict[str, Any], targets: Sequence[float], given: bool, label: str) -> str:
    """The task's table: each variant's medians, then the ratios green / baseline.

    ``targets`` are the rounds' targets; ``given``: a fixed target, else each round's worse best value.
    """
    sign = ">=" if metric_mode(task.metric) == "max" else "<="
    runs, ratios = summary["runs"], summary["ratios"]
    n = summary["rounds"]
    header = [
        "",
        f"final {task.metric}",
        "energy-to-target",
        "time-to-target",
        "fit energy",
        "fit time",
        "MACs/sample",
        "reached",
    ]
    rows = []
    for variant in VARIANTS:
        r = runs[variant]
        rows.append(
            [
                "fp32 baseline" if variant == "baseline" else "green preset",
                _num(r["final"]),
                _j(r["energy_to_target_j"]),
                _num(r["time_to_target_s"], "{:.1f} s"),
                _j(r["energy_j"]),
                _num(r["time_s"], "{:.1f} s"),
                _num(r["macs"] and r["macs"] / 1e6, "{:.2f} M"),
                f"{r['reached']}/{n}",
            ]
        )
    delta = summary["final_delta"]
    scale, unit = (100.0, " pt") if task.metric.endswith("acc") else (1.0, "")
    rows.append(
        [
            "green / baseline",
            "n/a" if delta is None else f"{scale * delta:+.2f}{unit}",
            _num(ratios["energy_to_target"], "{:.2f}x"),
            _num(ratios["time_to_target"], "{:.2f}x"),
            _num(ratios["energy"], "{:.2f}x"),
            _num(ratios["time"], "{:.2f}x"),
            _num(ratios["macs"], "{:.2f}x"),
            "",
        ]
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    if given:
        what = f"{targets[0]:.4g}"
    else:
        what = f"the worse of the two runs' best values ({', '.join(f'{t:.4g}' for t in targets)})"
    lines = [f"{task.name}: {task.config}, target {task.metric} {sign} {what}, energy {label}, median of {n} round(s)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def announce(script: str, argv: Sequence[str] | None, threads: int | None) -> tuple[str, dict[str, Any]]:
    """Print and return the command line and :func:`environment` of a benchmark run."""
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [script, *argv])])
    env = environment(threads)
    print("command:", command)
    print(
        f"torch {env['torch']}, {env['torch_threads']} thread(s) on {env['cpu_count']} CPU(s), GPU: {env['gpu']}, "
        f"load average {env['load_average']}"
    )
    print(
        f"CPU native bf16 (AVX-512-BF16/AMX): {env['cpu_bf16']}"
        + (
            ""
            if env["cpu_bf16"] or env["gpu"]
            else " -- the green preset's AMPScheduler(policy='auto') stays in fp32 here"
        )
    )
    return command, env


def write_json(results: dict[str, Any], path: str | None) -> None:
    """Write ``results`` to ``path`` (if given), creating its folder."""
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"written {out}")


def environment(threads: int | None) -> dict[str, Any]:
    """What the figures were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "machine": platform.machine(),
        "gpu": gpu,
        # AMPScheduler(policy="auto") trains in bf16 on a CPU only with native bf16: the green figures depend on it.
        "cpu_bf16": cpu_bf16_supported(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="workloads (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per task (default 3; --quick: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first round (round k uses seed + k)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 epochs of 6 batches, 1 round")
    p.add_argument("--accelerator", default="auto", help="Trainer accelerator: auto (default), cpu, gpu")
    p.add_argument("--no-power-tuner", action="store_true", help="leave the PowerLimitTuner out of the green runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's own choice)")
    p.add_argument("--digits-target", type=float, default=None, help="val_acc target (default 0.97)")
    p.add_argument(
        "--lm-target", type=float, default=None, help="val_loss target (default: the worse of the two best values)"
    )
    for name, task in TASKS.items():
        p.add_argument(f"--{name}-preset", default=None, help=f"preset of the {name} task (default {task.config})")
    p.add_argument("--runs-dir", default=None, help="keep the runs (and comparisons) here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra lightning-green fit argument for every run, e.g. --fit-arg=--trainer.max_epochs=10 (repeatable)",
    )
    p.add_argument("--verbose", action="store_true", help="show Lightning's and the callbacks' messages")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.quick:
        args.rounds = 1
    return args


def write_configs(configs: dict[str, dict[str, Any]], task_dir: Path) -> dict[str, Path]:
    """Write each variant's config to ``task_dir/<variant>.yaml``; returns the paths by variant."""
    task_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for variant, config in configs.items():
        paths[variant] = task_dir / f"{variant}.yaml"
        paths[variant].write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return paths


def fit_round(
    k: int,
    args: argparse.Namespace,
    variants: tuple[str, ...],
    paths: dict[str, Path],
    task_dir: Path,
    extra: Sequence[str],
    label: str,
) -> tuple[int, tuple[str, ...], dict[str, Path]]:
    """Round ``k``: every variant fitted once with seed ``args.seed + k``, the order alternating by round.

    Before the first round, a short warm-up fit of every variant (the task's ``--quick`` arguments, results thrown
    away): the first fit in a process pays one-time costs (lazy imports, oneDNN building its kernels per shape) that
    would otherwise land in round 1's first variant only (measured on the digits preset: 45 s vs 31 s for the same fit).

    Returns the seed, the order and each variant's log dir.
    """
    seed = args.seed + k
    order = variants if k % 2 == 0 else variants[::-1]
    if k == 0 and not getattr(args, "quick", False):
        for variant in order:
            short = [*extra, *TASKS[label].quick]  # the quick arguments last: they win over --fit-arg's
            fit(paths[variant], task_dir / "warm-up" / variant, seed, args.accelerator, short, False)
    dirs = {}
    for variant in order:
        t0 = time.perf_counter()
        dirs[variant] = fit(paths[variant], task_dir / variant, seed, args.accelerator, extra, args.verbose)
        took = time.perf_counter() - t0
        print(f"  {label} round {k + 1}/{args.rounds} (seed {seed}): {variant} {took:.0f} s", flush=True)
    return seed, order, dirs


def run_task(task: Task, args: argparse.Namespace, runs_dir: Path) -> dict[str, Any]:
    """All rounds of one task; returns its results (rounds, summary, goals)."""
    with open(ROOT / task.config, encoding="utf-8") as f:  # ROOT / an absolute path is that path
        preset = yaml.safe_load(f)
    configs = variant_configs(preset, power_tuner=not args.no_power_tuner)
    task_dir = runs_dir / task.name
    paths = write_configs(configs, task_dir)
    target = args.digits_target if task.name == "digits" else args.lm_target
    if target is None and not args.quick:
        target = task.target
    extra = [*(task.quick if args.quick else ()), *args.fit_arg]
    rounds = []
    for k in range(args.rounds):
        seed, order, dirs = fit_round(k, args, VARIANTS, paths, task_dir, extra, task.name)
        runs = [load_run(dirs["baseline"], name="fp32 baseline"), load_run(dirs["green"], name="green preset")]
        out = task_dir / f"comparison_round{k + 1}"
        cmp, _ = write_comparison(runs, out, metric=task.metric, target=target)
        if args.verbose:
            print(format_comparison(cmp))
        figures = round_figures(cmp)
        figures.update({"seed": seed, "order": list(order), "comparison": cmp.as_dict()})
        rounds.append(figures)
        ratios, delta = figures["ratios"], figures["final_delta"]
        scale, unit = (100.0, " pt") if task.metric.endswith("acc") else (1.0, "")
        print(
            f"  round {k + 1}: energy-to-target {_num(ratios['energy_to_target'], '{:.2f}x')}, fit energy "
            f"{_num(ratios['energy'], '{:.2f}x')}, final {task.metric} "
            f"{'n/a' if delta is None else f'{scale * delta:+.2f}{unit}'} (green vs baseline)",
            flush=True,
        )
    summary = summarize(rounds)
    label = rounds[-1]["runs"]["green"]["label"]
    targets = [r["target"] for r in rounds]
    result = {"preset": task.config, "metric": task.metric, "targets": targets, "target_given": target is not None}
    result["label"] = label
    result.update({"summary": summary, "rounds": rounds})
    if task.name == "digits":
        result["goals"] = goals(summary)
    print(format_summary(task, summary, targets, target is not None, label))
    if "goals" in result and not args.quick:
        g = result["goals"]
        ratio, delta = summary["ratios"]["energy_to_target"], summary["final_delta"]
        print(
            f"goal: energy-to-target <= {g['energy_to_target_ratio_max']}x baseline: "
            f"{'met' if g['energy_to_target_met'] else 'NOT met'} ({_num(ratio, '{:.2f}x')}); "
            f"final {task.metric} within 1 point: {'met' if g['final_met'] else 'NOT met'} "
            f"({'n/a' if delta is None else f'{100 * delta:+.2f} pt'})"
        )
    print()
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what ``--json`` writes. torch's thread count is restored afterwards."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    command, env = announce("benchmarks/green_recipe.py", argv, args.threads)
    results: dict[str, Any] = {"command": command, "environment": env, "quick": args.quick, "tasks": {}}
    with contextlib.ExitStack() as stack:
        if args.runs_dir:
            runs_dir = Path(args.runs_dir).resolve()
        else:
            runs_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="green_recipe_")))
        runs_dir.mkdir(parents=True, exist_ok=True)
        for name in args.tasks:
            task = TASKS[name]
            preset = getattr(args, f"{name}_preset")
            if preset is not None:
                task = dataclasses.replace(task, config=os.path.abspath(preset))
            results["tasks"][name] = run_task(task, args, runs_dir)
    results["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.quick:
        print("--quick is a smoke run: a few dozen training steps, so its figures mean nothing.")
    write_json(results, args.json)
    if args.runs_dir:
        print(f"runs and comparisons kept in {runs_dir}")
    return results


if __name__ == "__main__":
    main()
