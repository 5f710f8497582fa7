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


@pytest.mark.parametrize("on", ["baseline", "green"])
def test_the_control_is_the_full_variant_with_data_pruning_that_keeps_every_sample(on):
    configs = bench.pruning_configs(preset("green.yaml"), on, 0.7, 0.125, keep_steps=True, control=True)
    assert list(configs) == ["full", "pruned", bench.CONTROL]
    full, control = paths(configs["full"]), paths(configs[bench.CONTROL])
    assert [p for p in control if p != bench.DATA_PRUNING] == full and control.count(bench.DATA_PRUNING) == 1
    assert control.index(bench.DATA_PRUNING) == paths(configs["pruned"]).index(bench.DATA_PRUNING)
    dp = next(cb for cb in configs[bench.CONTROL]["trainer"]["callbacks"] if bench.class_path(cb) == bench.DATA_PRUNING)
    assert dp["init_args"] == {"prune_ratio": 0.0}
    assert configs[bench.CONTROL]["model"] == configs["full"]["model"]
    assert list(bench.pruning_configs(preset("green.yaml"), on, 0.7, 0.125)) == ["full", "pruned"]


def test_the_controls_figures_are_against_the_full_run():
    from types import SimpleNamespace as NS

    def run(data=None):
        return NS(epoch_energy=lambda: [NS(epoch=0, cumulative_j=10.0)], extra=lambda name: data)

    def row(final, reached, energy_j):
        return NS(final=final, target=NS(reached=reached, epoch=0, energy_j=energy_j), energy_j=40.0, time_s=1.0)

    runs = {"full": run(), "pruned": run({"samples_seen": 6, "samples_full_data": 10}), bench.CONTROL: run()}
    cmp = NS(rows=[row(0.985, True, 30.0), row(0.985, True, 20.0), row(0.9813, True, 33.0)], target=0.982)
    fig = bench.round_figures(runs, cmp)
    assert fig["control"]["energy_to_target_ratio"] == pytest.approx(1.1)
    assert fig["control"]["final_metric_delta"] == pytest.approx(-0.0037)
    assert fig["energy_to_target_ratio"] == pytest.approx(20.0 / 30.0)
    missed = NS(rows=[row(0.985, True, 30.0), row(0.985, True, 20.0), row(0.978, False, None)], target=0.982)
    assert bench.round_figures(runs, missed)["control"]["energy_to_target_ratio"] is None
    assert "control" not in bench.round_figures(
        {k: runs[k] for k in ("full", "pruned")}, NS(rows=cmp.rows[:2], target=0.982)
    )
    worse = bench.worse_rounds([fig["control"]["final_metric_delta"], 0.0], 1.0, 0.003)
    assert worse == {"worse": 1, "beyond_tolerance": 1}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prune-ratio", "1.5"], r"--prune-ratio must be in \[0, 1\), got 1.5"),
        (["--anneal-fraction", "-0.1"], r"--anneal-fraction must be in \[0, 1\], got -0.1"),
        (["--rounds", "0"], r"--rounds must be >= 1, got 0"),
    ],
)
def test_bad_flags_are_refused_before_any_fit(flags, message, capsys):
    # --prune-ratio 1.5 trained the full variant first, then failed with a 98-line traceback.
    with pytest.raises(SystemExit):
        bench.parse_args(flags)
    assert __import__("re").search(message, capsys.readouterr().err)
