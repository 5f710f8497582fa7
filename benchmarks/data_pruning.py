"""DataPruning side by side: the same preset trained on all the data vs with DataPruning, in one process.

For each task, two fits per round through the ``lightning-green`` CLI with the same model, data, seed and epoch
budget (the task's preset, as in ``benchmarks/green_recipe.py``):

- ``digits``: ``examples/configs/green.yaml`` (DigitsCNN), metric ``val_acc``;
- ``lm``: ``examples/configs/green_gpt.yaml`` (TinyGPT), metric ``val_loss``.

The target of energy-to-target is set per round from the *full* run: its final-epoch metric minus the drop the goal
allows (digits: ``val_acc >= full_final - 0.003``; lm: ``val_loss <= full_final + 0.02``), i.e. "energy until the
run is as good as training on all the data, within the goal's tolerance". A fixed early target (e.g. 0.97, reached
around epoch 6 of 15, before pruning has saved much) measures the slower first epochs rather than the saving, and it
is crossed at a noisy point of the curve; ``--margin`` changes the tolerance. Validation runs every epoch in both arms.

``--on baseline`` (default) compares the preset's fp32 baseline (only EnergyMonitor + GreenReport) with the same plus
``DataPruning``; ``--on green`` compares the green preset as written (no PowerLimitTuner) with the green preset plus
``DataPruning`` — the combination. Any DataPruning already in the preset is removed from the *full* variant and its
arguments are used for the *pruned* one (else ``--prune-ratio``/``--anneal-fraction``). The order alternates by round,
each round has its own seed. Figures (median over rounds): samples processed (from DataPruning's report section),
energy-to-target, fit time, final metric; ratios are pruned / full. Also the *same-epoch* energy ratio: the pruned
run's energy through the epoch in which the full run reached the target, over the full run's energy-to-target — the
energy-to-target the pruned run would have had without losing any progress per epoch (see ``round_figures``).

Energy on a CPU is the EnergyMonitor's estimate (it follows process CPU time), so torch runs on one thread.

Goals: energy-to-target <= 0.7x, final accuracy within 0.3 pt (digits), final val_loss within 0.02 nats (lm).

    PYTHONPATH=. python benchmarks/data_pruning.py --json out.json               # 3 rounds, both tasks
    PYTHONPATH=. python benchmarks/data_pruning.py --on green --tasks digits     # combined with the green preset
    PYTHONPATH=. python benchmarks/data_pruning.py --keep-steps --tasks digits   # smaller batches, same steps
    PYTHONPATH=. python benchmarks/data_pruning.py --quick                       # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
import yaml  # noqa: E402
from green_recipe import (  # noqa: E402
    TASKS,
    _median,
    _num,
    announce,
    class_path,
    fit_round,
    median_counting_misses,
    variant_configs,
    write_configs,
    write_json,
)

from lightning_green.report import load_run, write_comparison  # noqa: E402

VARIANTS = ("full", "pruned")
CONTROL = "reordered"  # --control: the full run's data in another order (DataPruning with prune_ratio=0)
DATA_PRUNING = "lightning_green.DataPruning"
GOALS = {"digits": {"energy_to_target": 0.7, "max_drop": 0.003}, "lm": {"energy_to_target": 0.7, "max_drop": 0.02}}


def pruning_configs(
    preset: dict[str, Any],
    on: str,
    prune_ratio: float,
    anneal_fraction: float,
    keep_steps: bool = False,
    control: bool = False,
) -> dict[str, dict[str, Any]]:
    """The *full* and *pruned* configs of a preset: identical but for a DataPruning callback in the latter.

    With ``control``, also a *reordered* config: the full one plus ``DataPruning(prune_ratio=0.0)``, which keeps every
    sample and changes only the order they come in (DataPruning's sampler draws its own). It shares the model's
    initialisation and everything else with the other two, so its spread against the full run is what the data order
    alone moves the final metric: the noise floor of the goal's tolerance.

    Example:
        >>> preset = {"trainer": {"callbacks": ["lightning_green.EnergyMonitor", "lightning_green.GreenReport"]}}
        >>> cfg = pruning_configs(preset, "baseline", 0.5, 0.125)
        >>> [class_path(c) for c in cfg["pruned"]["trainer"]["callbacks"]][-2:]
        ['lightning_green.DataPruning', 'lightning_green.GreenReport']
    """
    given = [cb for cb in preset["trainer"]["callbacks"] if class_path(cb) == DATA_PRUNING]
    stripped = copy.deepcopy(preset)
    stripped["trainer"]["callbacks"] = [cb for cb in preset["trainer"]["callbacks"] if class_path(cb) != DATA_PRUNING]
    full = variant_configs(stripped, power_tuner=False)[on]
    pruned = copy.deepcopy(full)
    dp = copy.deepcopy(given[0]) if given else None
    if not isinstance(dp, dict):
        dp = {"class_path": DATA_PRUNING, "init_args": {"prune_ratio": prune_ratio, "anneal_fraction": anneal_fraction}}
    if keep_steps:
        dp.setdefault("init_args", {})["keep_steps"] = True
    callbacks = pruned["trainer"]["callbacks"]
    # Before the GreenReport (it reads the report sections at the end of the fit).
    at = next((i for i, cb in enumerate(callbacks) if class_path(cb) == "lightning_green.GreenReport"), len(callbacks))
    callbacks.insert(at, dp)
    out = {"full": full, "pruned": pruned}
    if control:
        reordered = copy.deepcopy(full)
        reordered["trainer"]["callbacks"].insert(at, {"class_path": DATA_PRUNING, "init_args": {"prune_ratio": 0.0}})
        out[CONTROL] = reordered
    return out


def target_from_full(full_final: float | None, sign: float, margin: float, quick: bool = False) -> float | None:
    """The round's target: the full run's final metric, worse by ``margin`` (``sign`` +1: higher is better).

    ``None`` (the comparison's own default) in a smoke run or when the full run logged no metric.

    Example:
        >>> target_from_full(0.985, 1.0, 0.003), target_from_full(2.0, -1.0, 0.02)
        (0.982, 2.02)
    """
    if quick or full_final is None:
        return None
    return round(full_final - sign * margin, 12)


def median_energy_to_target(rounds: Sequence[dict[str, Any]]) -> float | None:
    """Median energy-to-target ratio; a round whose pruned run never reached the target counts as infinitely worse.

    (Not as missing, so the median does not hide it.) ``None`` when the median round did not reach it.

    Example:
        >>> r = lambda ratio: {"energy_to_target_ratio": ratio, "runs": {"full": {"reached": True}}}
        >>> median_energy_to_target([r(0.6), r(None), r(0.7)]), median_energy_to_target([r(0.6), r(None), r(None)])
        (0.7, None)
    """
    return median_counting_misses(
        [r["energy_to_target_ratio"] for r in rounds], [bool(r["runs"]["full"]["reached"]) for r in rounds]
    )


def worse_rounds(deltas: Sequence[float | None], sign: float, margin: float) -> dict[str, int]:
    """How many rounds ended worse than the full run (``deltas``: variant - full), and worse by more than ``margin``.

    Example:
        >>> worse_rounds([-0.0037, 0.0, 0.0037, -0.0074, None], 1.0, 0.003)
        {'worse': 2, 'beyond_tolerance': 2}
        >>> worse_rounds([0.01, 0.03], -1.0, 0.02)
        {'worse': 2, 'beyond_tolerance': 1}
    """
    worse = [sign * d for d in deltas if d is not None and sign * d < -1e-9]
    return {"worse": len(worse), "beyond_tolerance": sum(w < -margin - 1e-9 for w in worse)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def energy_through_epoch(run: Any, epoch: int | None) -> float | None:
    """A run's cumulative energy at the end of ``epoch`` (validation included), ``None`` past its last epoch.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> run = NS(epoch_energy=lambda: [NS(epoch=0, cumulative_j=10.0), NS(epoch=1, cumulative_j=17.0)])
        >>> energy_through_epoch(run, 1), energy_through_epoch(run, 5), energy_through_epoch(run, None)
        (17.0, None, None)
    """
    if epoch is None:
        return None
    return next((e.cumulative_j for e in run.epoch_energy() if e.epoch == epoch), None)


def round_figures(runs: dict[str, Any], cmp: Any) -> dict[str, Any]:
    """One round: per variant its figures; ratios pruned / full; the final-metric delta pruned - full.

    ``same_epoch_energy_ratio`` is the energy-to-target the pruned run would have had if it reached the target in the
    *same epoch* as the full run: its energy through that epoch / the full run's energy-to-target. InfoBatch's rule is
    built so that an epoch of pruned data makes the progress of a full one (in expectation, under SGD; under Adam the
    fewer steps move less), so this is about the best energy-to-target the rule can give on the task: whatever the
    pruned run loses per epoch comes on top.
    """
    rows = dict(zip(runs, cmp.rows, strict=True))
    data = runs["pruned"].extra("data") or {}
    out: dict[str, Any] = {"runs": {}}
    for v, row in rows.items():
        out["runs"][v] = {
            "final": row.final,
            "reached": row.target.reached,
            "energy_to_target_j": row.target.energy_j,
            "energy_j": row.energy_j,
            "time_s": row.time_s,
        }
    out["runs"]["full"]["samples"] = data.get("samples_full_data")
    out["runs"]["pruned"]["samples"] = data.get("samples_seen")
    f, p = out["runs"]["full"], out["runs"]["pruned"]
    both = f["reached"] and p["reached"]
    out["energy_to_target_ratio"] = _ratio(p["energy_to_target_j"], f["energy_to_target_j"]) if both else None
    out["energy_ratio"] = _ratio(p["energy_j"], f["energy_j"])
    out["time_ratio"] = _ratio(p["time_s"], f["time_s"])
    out["samples_ratio"] = _ratio(p["samples"], f["samples"])
    out["final_metric_delta"] = p["final"] - f["final"] if p["final"] is not None and f["final"] is not None else None
    full_target = rows["full"].target
    same_epoch = energy_through_epoch(runs["pruned"], full_target.epoch) if full_target.reached else None
    out["same_epoch_energy_ratio"] = _ratio(same_epoch, f["energy_to_target_j"])
    out["target"] = cmp.target
    if CONTROL in rows:
        c = out["runs"][CONTROL]
        c["samples"] = (runs[CONTROL].extra("data") or {}).get("samples_seen")
        reached = f["reached"] and c["reached"]
        out["control"] = {
            "energy_to_target_ratio": _ratio(c["energy_to_target_j"], f["energy_to_target_j"]) if reached else None,
            "final_metric_delta": None if c["final"] is None or f["final"] is None else c["final"] - f["final"],
        }
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--on", choices=("baseline", "green"), default="baseline", help="the full variant (see above)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="target = the full run's final metric minus (acc) / plus (loss) this (default: the goal's tolerance)",
    )
    p.add_argument("--prune-ratio", type=float, default=0.5)
    p.add_argument("--anneal-fraction", type=float, default=0.125)
    p.add_argument("--keep-steps", action="store_true", help="DataPruning(keep_steps=True)")
    p.add_argument(
        "--control",
        action="store_true",
        help="also fit the full run's data in another order (DataPruning(prune_ratio=0)): the noise floor",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 4 short epochs, 1 round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", help="extra fit argument (repeatable)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if not 0 <= args.prune_ratio < 1:  # refused here, not by DataPruning after the first full fit
        p.error(f"--prune-ratio must be in [0, 1), got {args.prune_ratio}")
    if not 0 <= args.anneal_fraction <= 1:
        p.error(f"--anneal-fraction must be in [0, 1], got {args.anneal_fraction}")
    if args.quick:
        args.rounds = 1
    return args


def run_task(name: str, args: argparse.Namespace, runs_dir: Path) -> dict[str, Any]:
    task = TASKS[name]
    preset = yaml.safe_load((ROOT / task.config).read_text(encoding="utf-8"))
    configs = pruning_configs(preset, args.on, args.prune_ratio, args.anneal_fraction, args.keep_steps, args.control)
    variants = tuple(configs)
    task_dir = runs_dir / name
    paths = write_configs(configs, task_dir)
    goal = GOALS[name]
    margin = goal["max_drop"] if args.margin is None else args.margin
    sign = 1.0 if task.metric.endswith("acc") else -1.0  # higher accuracy / lower loss is better
    extra = [*(task.quick if args.quick else ()), *args.fit_arg]
    rounds = []
    for k in range(args.rounds):
        seed, order, dirs = fit_round(k, args, variants, paths, task_dir, extra, name)
        runs = {v: load_run(dirs[v], name=v) for v in variants}
        target = target_from_full(runs["full"].final_metric(task.metric), sign, margin, args.quick)
        cmp, _ = write_comparison(
            [runs[v] for v in variants], task_dir / f"comparison_round{k + 1}", metric=task.metric, target=target
        )
        fig = round_figures(runs, cmp)
        fig.update({"seed": seed, "order": list(order)})
        rounds.append(fig)
        print(
            f"  round {k + 1}: energy-to-target {_num(fig['energy_to_target_ratio'], '{:.2f}x')}, samples "
            f"{_num(fig['samples_ratio'], '{:.2f}x')}, fit energy {_num(fig['energy_ratio'], '{:.2f}x')}, final "
            f"{task.metric} {_num(fig['final_metric_delta'], '{:+.4f}')} (pruned vs full), target {_num(cmp.target)}"
            f"{f' ({cmp.target_source})' if target is None else ''}, "
            f"reached full/pruned {fig['runs']['full']['reached']}/{fig['runs']['pruned']['reached']} (full in "
            f"epoch {cmp.rows[0].target.epoch}; pruned energy through that epoch "
            f"{_num(fig['same_epoch_energy_ratio'], '{:.2f}x')})",
            flush=True,
        )
        if "control" in fig:
            print(
                f"    control (full data, another order): reached {fig['runs'][CONTROL]['reached']}, energy-to-target "
                f"{_num(fig['control']['energy_to_target_ratio'], '{:.2f}x')}, final {task.metric} "
                f"{_num(fig['control']['final_metric_delta'], '{:+.4f}')} vs full",
                flush=True,
            )
    keys = (
        "energy_to_target_ratio",
        "same_epoch_energy_ratio",
        "samples_ratio",
        "energy_ratio",
        "time_ratio",
        "final_metric_delta",
    )
    summary = {key: _median([r[key] for r in rounds]) for key in keys}
    summary["energy_to_target_ratio"] = median_energy_to_target(rounds)
    summary["reached"] = {v: sum(bool(r["runs"][v]["reached"]) for r in rounds) for v in variants}
    summary["final_worse"] = {"pruned": worse_rounds([r["final_metric_delta"] for r in rounds], sign, margin)}
    if args.control:
        deltas = [r["control"]["final_metric_delta"] for r in rounds]
        summary["control"] = {
            "final_metric_delta": _median(deltas),
            "energy_to_target_ratio": median_energy_to_target([r["control"] | {"runs": r["runs"]} for r in rounds]),
        }
        summary["final_worse"][CONTROL] = worse_rounds(deltas, sign, margin)
    e, d = summary["energy_to_target_ratio"], summary["final_metric_delta"]
    summary["goals"] = {
        "energy_to_target_max": goal["energy_to_target"],
        "energy_to_target_met": e is not None and e <= goal["energy_to_target"],
        "final_max_drop": goal["max_drop"],
        "final_met": d is not None and sign * d >= -goal["max_drop"] - 1e-9,
    }
    print(
        f"{name} ({args.on} vs {args.on} + DataPruning, median of {len(rounds)}): energy-to-target "
        f"{_num(e, '{:.2f}x')} (goal <= {goal['energy_to_target']}x: "
        f"{'met' if summary['goals']['energy_to_target_met'] else 'NOT met'}; had it reached the target in the full "
        f"run's epoch: {_num(summary['same_epoch_energy_ratio'], '{:.2f}x')}), samples "
        f"{_num(summary['samples_ratio'], '{:.2f}x')}, fit time {_num(summary['time_ratio'], '{:.2f}x')}, final "
        f"{task.metric} {_num(d, '{:+.4f}')} (goal within {goal['max_drop']}: "
        f"{'met' if summary['goals']['final_met'] else 'NOT met'})\n",
        flush=True,
    )
    for v, worse in summary["final_worse"].items():
        print(
            f"  {v}: reached the target in {summary['reached'][v]} of {len(rounds)} rounds; final {task.metric} worse "
            f"than the full run's in {worse['worse']}, by more than {margin:g} in {worse['beyond_tolerance']}",
            flush=True,
        )
    return {
        "preset": task.config,
        "metric": task.metric,
        "target": (
            f"full run's final {task.metric} {'-' if sign > 0 else '+'} {margin:g}"
            if not args.quick
            else f"smoke run: each round's comparison default ({cmp.target_source})"
        ),
        "margin": margin,
        **summary,
        "rounds": rounds,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what ``--json`` writes (per task: the three ratios/deltas and more)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        command, env = announce("benchmarks/data_pruning.py", argv, args.threads)
        results: dict[str, Any] = {"command": command, "environment": env, "on": args.on, "tasks": {}}
        with contextlib.ExitStack() as stack:
            if args.runs_dir:
                runs_dir = Path(args.runs_dir).resolve()
            else:
                runs_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="data_pruning_")))
            for name in args.tasks:
                results["tasks"][name] = run_task(name, args, runs_dir)
        if args.quick:
            print("--quick is a smoke run: its figures mean nothing.")
        write_json(results, args.json)
        return results
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
