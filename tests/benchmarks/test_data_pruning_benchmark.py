"""benchmarks/data_pruning.py: the two variants differ only by the DataPruning callback."""

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("data_pruning_benchmark", ROOT / "benchmarks" / "data_pruning.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def preset(name):
    return yaml.safe_load((ROOT / "examples" / "configs" / name).read_text())


def paths(config):
    return [bench.class_path(cb) for cb in config["trainer"]["callbacks"]]


@pytest.mark.parametrize("name", ["green.yaml", "green_gpt.yaml"])
@pytest.mark.parametrize("on", ["baseline", "green"])
def test_pruned_variant_is_the_full_one_plus_data_pruning(name, on):
    configs = bench.pruning_configs(preset(name), on, 0.4, 0.25)
    full, pruned = paths(configs["full"]), paths(configs["pruned"])
    assert bench.DATA_PRUNING not in full
    assert [p for p in pruned if p != bench.DATA_PRUNING] == full and pruned.count(bench.DATA_PRUNING) == 1
    assert pruned.index(bench.DATA_PRUNING) < pruned.index("lightning_green.GreenReport")
    assert (
        configs["full"]["model"] == configs["pruned"]["model"] and configs["full"]["data"] == configs["pruned"]["data"]
    )
    assert configs["full"]["trainer"].get("precision") == configs["pruned"]["trainer"].get("precision")
    assert ("lightning_green.AMPScheduler" in full) == (on == "green")
    dp = next(cb for cb in configs["pruned"]["trainer"]["callbacks"] if bench.class_path(cb) == bench.DATA_PRUNING)
    if bench.DATA_PRUNING not in paths(preset(name)):
        assert dp["init_args"] == {"prune_ratio": 0.4, "anneal_fraction": 0.25}
    kept = bench.pruning_configs(preset(name), on, 0.4, 0.25, keep_steps=True)["pruned"]["trainer"]["callbacks"]
    assert next(cb for cb in kept if bench.class_path(cb) == bench.DATA_PRUNING)["init_args"]["keep_steps"] is True


def test_target_is_the_full_runs_final_metric_within_the_goals_tolerance():
    assert bench.target_from_full(0.985, 1.0, bench.GOALS["digits"]["max_drop"]) == pytest.approx(0.982)
    assert bench.target_from_full(1.9, -1.0, bench.GOALS["lm"]["max_drop"]) == pytest.approx(1.92)
    assert bench.target_from_full(None, 1.0, 0.003) is None
    assert bench.target_from_full(0.985, 1.0, 0.003, quick=True) is None


def test_a_round_whose_pruned_run_misses_the_target_is_not_dropped_from_the_median():
    def r(ratio):
        return {"energy_to_target_ratio": ratio, "runs": {"full": {"reached": True}}}

    assert bench.median_energy_to_target([r(0.5), r(None), r(None)]) is None
    assert bench.median_energy_to_target([r(0.5), r(0.9), r(None)]) == pytest.approx(0.9)


def test_same_epoch_energy_ratio_is_the_pruned_energy_through_the_full_runs_target_epoch():
    from types import SimpleNamespace as NS

    def run(per_epoch, data=None):
        cumulative = [sum(per_epoch[: i + 1]) for i in range(len(per_epoch))]
        epochs = [NS(epoch=i, cumulative_j=c) for i, c in enumerate(cumulative)]
        return NS(epoch_energy=lambda: epochs, extra=lambda name: data)

    def row(final, reached, epoch, energy_j, total_j):
        return NS(final=final, target=NS(reached=reached, epoch=epoch, energy_j=energy_j), energy_j=total_j, time_s=1.0)

    runs = {"full": run([10.0] * 6), "pruned": run([10.0] + [6.0] * 5, {"samples_seen": 70, "samples_full_data": 100})}
    # The full run reaches the target in epoch 2 (30 J), the pruned one only in epoch 4 (34 J).
    cmp = NS(rows=[row(0.98, True, 2, 30.0, 60.0), row(0.98, True, 4, 34.0, 40.0)], target=0.97)
    fig = bench.round_figures(runs, cmp)
    assert fig["energy_to_target_ratio"] == pytest.approx(34.0 / 30.0)
    assert fig["same_epoch_energy_ratio"] == pytest.approx(22.0 / 30.0)  # 10 + 6 + 6 J through epoch 2
    assert fig["samples_ratio"] == pytest.approx(0.7)
    cmp_missed = NS(rows=[row(0.98, False, None, None, 60.0), row(0.98, True, 4, 34.0, 40.0)], target=0.99)
    assert bench.round_figures(runs, cmp_missed)["same_epoch_energy_ratio"] is None
