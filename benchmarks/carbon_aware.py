"""Carbon-aware scheduling replayed on real grid traces with the simulated clock (no training, no sleeping).

    python benchmarks/carbon_aware.py                               # every trace in ../shared/data/carbon
    python benchmarks/carbon_aware.py --trace ../shared/data/carbon/us_caiso_2022_hourly_eia.csv \
        --forecast persistence --json carbon.json

A job of 8 hours of compute with a 24-hour deadline is started at every hour of the trace (from its second day,
so the persistence forecast has a previous day). The scheduler's own planner (lightning_green.carbon.CarbonPlanner,
what CarbonAwareScheduler calls between optimizer steps) decides at each hour boundary whether to run or pause,
re-planning every time; CO2 is the actual trace integrated over the hours it ran. Reported per trace and forecast:
median and worst CO2 ratio versus running immediately, deadline misses, the oracle's median ratio (the cleanest
feasible hours known in hindsight) and the share of the oracle's saving captured, sum over all starts of
(immediate - scheduled) / sum of (immediate - oracle).
Forecasts: "perfect" (the trace itself); "persistence" (the same hours of the previous day, shifted by how far
the intensity now is from yesterday's at this hour plus the trend of that gap over the last 3 hours, the correction
fading over 12 h); "persistence-week" (the mean of the same hours over the previous --persistence-days days,
default 7, shifted by the intensity now, fading over 48 h). Only intensities up to now are read: the planner
re-plans at every hour with what it has seen. Starts begin after the first week so every start has the history.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from _common import save_json  # noqa: E402

from lightning_green.carbon import CarbonPlanner, IntensityTrace, read_trace  # noqa: E402

JOB_S = 8 * 3600.0
DEADLINE_S = 24 * 3600.0
FORECAST_NAMES = {"perfect": "trace", "persistence": "persistence", "persistence-week": "persistence-week"}


def simulate(
    trace: IntensityTrace, start_s: float, forecast: str, safety_margin: float, days: int = 7
) -> tuple[float, bool]:
    """CO2 (g per kWh of job energy × hours, i.e. Σ intensity × run hours) of one job, and whether it missed."""
    deadline = start_s + DEADLINE_S
    planner = CarbonPlanner(
        trace, deadline, forecast=FORECAST_NAMES[forecast], safety_margin=safety_margin, persistence_days=days
    )
    t, done, gram_h = start_s, 0.0, 0.0
    while done < JOB_S - 1e-6:
        if t >= deadline - 1e-6:
            return gram_h + trace.mean(t, t + JOB_S - done) * (JOB_S - done) / 3600.0, True
        decision = planner.decide(t, JOB_S - done)
        if decision.run:
            boundary = (int(t // 3600.0) + 1) * 3600.0
            t1 = min(boundary, t + (JOB_S - done))
            gram_h += trace.mean(t, t1) * (t1 - t) / 3600.0
            done += t1 - t
            t = t1
        else:
            t += decision.pause_s
    return gram_h, t > deadline + 1e-6


def evaluate(
    trace: IntensityTrace, forecast: str, safety_margin: float, days: int = 7, stride: int = 1
) -> dict[str, float]:
    """Replay a job started at every hour; ratios against running immediately."""
    hourly = trace.hourly()
    vals = hourly.values
    ratios, oracle_ratios, saved, oracle_saved, misses = [], [], 0.0, 0.0, 0
    for h in range(24 * 7, len(vals) - 24, stride):
        start = hourly.start_s + h * 3600.0
        immediate = sum(vals[h : h + 8])
        oracle = sum(sorted(vals[h : h + 24])[:8])
        g, missed = simulate(hourly, start, forecast, safety_margin, days)
        misses += missed
        ratios.append(g / immediate)
        oracle_ratios.append(oracle / immediate)
        saved += immediate - g
        oracle_saved += immediate - oracle
    return {
        "starts": len(ratios),
        "median_ratio": statistics.median(ratios),
        "worst_ratio": max(ratios),
        "oracle_median_ratio": statistics.median(oracle_ratios),
        "oracle_share": saved / oracle_saved if oracle_saved > 0 else 1.0,
        "deadline_misses": misses,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the replay and print a table (and write --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", action="append", help="CSV trace (repeatable); default: all in ../shared/data/carbon")
    ap.add_argument("--forecast", choices=tuple(FORECAST_NAMES), action="append", help="default: all")
    ap.add_argument("--safety-margin", type=float, default=0.05, help="CarbonAwareScheduler's default is 0.05")
    ap.add_argument("--persistence-days", type=int, default=7, help="days averaged by persistence-week")
    ap.add_argument("--quick", action="store_true", help="every 7th start hour only")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    traces = args.trace or sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "carbon", "*.csv")))
    if not traces:
        ap.error("no trace given and none found in ../shared/data/carbon")
    forecasts = args.forecast or list(FORECAST_NAMES)
    out: dict[str, dict[str, dict[str, float]]] = {}
    print(
        f"job {JOB_S / 3600:g} h of compute, deadline {DEADLINE_S / 3600:g} h, safety margin {args.safety_margin}, "
        f"persistence-week over {args.persistence_days} day(s)"
    )
    print(f"{'trace':32} {'forecast':16} {'median':>7} {'worst':>7} {'oracle':>7} {'share':>7} {'misses':>6} {'s':>5}")
    for path in traces:
        trace = read_trace(path)
        name = os.path.basename(path)
        for fc in forecasts:
            t0 = time.perf_counter()
            r = evaluate(trace, fc, args.safety_margin, args.persistence_days, 7 if args.quick else 1)
            out.setdefault(name, {})[fc] = r
            print(
                f"{name:32} {fc:16} {r['median_ratio']:7.3f} {r['worst_ratio']:7.3f} {r['oracle_median_ratio']:7.3f} "
                f"{r['oracle_share']:7.1%} {r['deadline_misses']:6d} {time.perf_counter() - t0:5.0f}"
            )
    save_json(out, args.json)  # its folder created
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
