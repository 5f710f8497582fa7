import json
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lightning_green import EnergyMonitor
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.report import (
    RunDirError,
    Scalars,
    build_report,
    compare_runs,
    format_comparison,
    load_run,
    write_comparison,
    write_report,
)
from lightning_green.report.compare import comparison_table
from lightning_green.report.run import Run
from lightning_green.report.scalars import find_scalar_files
from tests.helpers import QUIET
from tests.report.runs import fit_digits

PLOTS = {"energy_per_epoch.png", "average_power.png", "metric_vs_energy.png"}


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    return fit_digits(tmp_path_factory.mktemp("tb"), "tb").log_dir


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    return fit_digits(tmp_path_factory.mktemp("csv"), "csv").log_dir


def energy_report(epochs_j=(10.0, 8.0, 8.0), cpu=None, status="complete", extra=None):
    total = sum(epochs_j)
    cpu = total if cpu is None else cpu
    fit = {
        "energy_j": {"gpu": total - cpu, "cpu": cpu, "dram": 0.0, "total": total},
        "sources": {"gpu": "measured" if total > cpu else "none", "cpu": "estimated", "dram": "estimated"},
        "label": "mixed" if total > cpu else "estimated",
        "time_s": 10.0,
        "steps": 30,
        "samples": 300,
        "epochs_j": list(epochs_j),
        "kwh": total / 3.6e6,
        "gco2e": 0.5,
    }
    out = {"version": 1, "status": status, "carbon": {"intensity_g_per_kwh": 56.0, "pue": 1.1}, "stages": {"fit": fit}}
    if extra:
        out["extra"] = extra
    return out


def synthetic_run(tmp_path, rows, name="synthetic", **report):
    return Run(path=tmp_path, energy=energy_report(**report), scalars=Scalars.from_rows(rows), name=name)


def epoch_rows(accs, epoch_j=(10.0, 8.0, 8.0), times=(1.0, 2.0, 3.0)):
    rows, total = [], 0.0
    for e, (acc, ej, t) in enumerate(zip(accs, epoch_j, times, strict=True)):
        step = 10 * e + 9
        total += ej
        rows.append({"step": step - 4, "energy/total_J": total - ej / 2, "power/avg_W": 50.0})  # mid-epoch window
        rows.append({"step": step, "val_acc": acc, "epoch": e, "time/elapsed_s": t})  # validation end
        rows.append({"step": step, "energy/epoch_J": ej, "energy/total_J": total, "epoch": e})  # train epoch end
    rows.append({"step": 29, "energy/total_J": total + 5.0})  # fit end: after the last epoch
    return rows


def assert_png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        img.verify()


# ------------------------------------------------------------------------------------------------ a real run
def test_report_of_a_real_run_has_the_files_and_valid_pngs(tb_run):
    files = write_report(tb_run, target=0.05, filename="again")
    assert files.markdown.name == "again.md" and files.html is not None
    assert {p.name for p in files.images} == PLOTS  # no pruning/precision/power data: no such plots
    for png in files.images:
        assert_png(png)
    md = files.markdown.read_text()
    for name in PLOTS:
        assert f"](again_files/{name})" in md
    page = files.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert 'src="http' not in page and "again_files/" not in page  # standalone


def test_tensorboard_and_csv_logs_give_the_same_epochs(tb_run, csv_run):
    for run_dir in (tb_run, csv_run):
        run = load_run(run_dir)
        epochs = run.epoch_energy()
        expected = run.stage("fit")["epochs_j"]
        assert [e.epoch for e in epochs] == [0, 1, 2]
        assert [e.total_j for e in epochs] == pytest.approx(expected, rel=1e-5)
        for e in epochs:  # the components add up to the epoch
            assert sum(e.components_j.values()) == pytest.approx(e.total_j, rel=1e-4)
        curve = run.curve("val_acc")
        # each validation gets the energy at the end of its epoch, validation included
        assert [cp.energy_j for cp in curve] == pytest.approx([sum(expected[: i + 1]) for i in range(3)], rel=1e-5)
        times = [cp.time_s for cp in curve]
        assert all(t is not None for t in times) and times == sorted(times)


def test_runs_are_read_back_from_either_logger(tb_run, csv_run):
    assert load_run(tb_run).scalars.source.startswith("tensorboard")
    assert load_run(csv_run).scalars.source == "csv: metrics.csv"


def _fit_into(root, epochs, **kwargs):
    seed_everything(0)
    trainer = Trainer(
        default_root_dir=root,
        logger=TensorBoardLogger(root, name="", version="exp"),
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        callbacks=[EnergyMonitor(print_summary=False, min_window_s=0.0)],
        **QUIET,
    )
    trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(image_size=8, batch_size=32), **kwargs)
    return trainer


def test_a_second_fit_into_the_same_tensorboard_dir_reports_only_its_own_scalars(tmp_path):
    _fit_into(tmp_path, epochs=3)
    trainer = _fit_into(tmp_path, epochs=1)  # same version dir: the first run's event file is still there
    run = load_run(trainer.log_dir)
    assert len(find_scalar_files(trainer.log_dir)[0]) == 2
    assert [e.epoch for e in run.epoch_energy()] == [0]
    assert len(run.curve("val_acc")) == 1


def test_a_test_after_the_fit_keeps_the_fits_scalars(tmp_path):
    trainer = _fit_into(tmp_path, epochs=2)
    started = load_run(trainer.log_dir).energy["started_s"]
    trainer.test(trainer.lightning_module, DigitsDataModule(image_size=8, batch_size=32), verbose=False)
    run = load_run(trainer.log_dir)  # the test is part of the same run: its start is the fit's
    assert run.energy["started_s"] == started
    assert [e.epoch for e in run.epoch_energy()] == [0, 1] and len(run.curve("val_acc")) == 2


def test_a_resumed_fit_keeps_the_scalars_logged_before_the_resume(tmp_path):
    first = _fit_into(tmp_path, epochs=2)
    ckpt = first.checkpoint_callback.best_model_path
    trainer = _fit_into(tmp_path, epochs=3, ckpt_path=ckpt)  # a new event file, the same run
    run = load_run(trainer.log_dir)
    assert [e.epoch for e in run.epoch_energy()] == [0, 1, 2]


def test_event_files_are_read_in_the_order_they_were_written_past_a_tenth_writer(tmp_path):
    # Sorted by name, a process's 10th event file (".10") came before its 9th: the resumed fit's epochs were read
    # first, [0, 1, 2, 0, 1] instead of [0, 1, 2] (seen when the suite's order moved the writer count past 9).
    first = _fit_into(tmp_path, epochs=2)
    trainer = _fit_into(tmp_path, epochs=3, ckpt_path=first.checkpoint_callback.best_model_path)
    files, _ = find_scalar_files(trainer.log_dir)
    assert len(files) == 2
    for path, uid in zip(files, (9, 10), strict=True):
        path.rename(path.with_name(f"events.out.tfevents.1700000000.host.77.{uid}"))
    run = load_run(trainer.log_dir)
    assert [e.epoch for e in run.epoch_energy()] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ derived figures
def test_metric_vs_energy_uses_epoch_end_totals_not_the_fit_end(tmp_path):
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]))
    assert [cp.energy_j for cp in run.curve("val_acc")] == [10.0, 18.0, 26.0]
    assert [cp.epoch for cp in run.curve("val_acc")] == [0, 1, 2]


def test_a_mid_epoch_validation_gets_the_running_total(tmp_path):
    rows = [{"step": 4, "energy/total_J": 3.0}, {"step": 5, "val_loss": 2.0}, {"step": 9, "energy/total_J": 7.0}]
    run = synthetic_run(tmp_path, rows)
    assert run.curve("val_loss")[0].energy_j == 3.0


@pytest.mark.parametrize(
    ("metric", "target", "mode", "epoch", "energy"),
    [("val_acc", 0.8, "max", 1, 18.0), ("val_acc", 0.95, "max", None, None), ("val_loss", 0.2, "min", 2, 26.0)],
)
def test_energy_and_time_to_target(tmp_path, metric, target, mode, epoch, energy):
    rows = epoch_rows([0.5, 0.8, 0.9])
    for r in rows:
        if "val_acc" in r:
            r["val_loss"] = 1.0 - r["val_acc"] + 0.05
    hit = synthetic_run(tmp_path, rows).to_target(metric, target, mode)
    assert hit.reached is (epoch is not None)
    assert hit.epoch == epoch and hit.energy_j == energy
    if hit.reached:
        assert hit.time_s == float(epoch + 1)


def test_pruning_precision_and_power_plots_appear_with_their_data(tmp_path):
    rows = epoch_rows([0.5, 0.8, 0.9])
    rows += [
        {"step": 10, "pruning/macs": 5e6, "pruning/params": 4000, "pruning/speedup": 2.0, "pruning/step": 1},
        {"step": 20, "pruning/macs": 2.5e6, "pruning/params": 2000, "pruning/speedup": 4.0, "pruning/step": 2},
        {"step": 0, "precision/mode": 32.0, "precision/fallbacks": 0},
        {"step": 10, "precision/mode": 16.5, "precision/fallbacks": 0},
        {"step": 14, "precision/mode": 32.0, "precision/fallbacks": 1, "precision/skipped_steps": 1},
        {"step": 20, "precision/mode": 16.5, "precision/fallbacks": 1, "precision/skipped_steps": 1},
        {"step": 21, "precision/mode": 16.0, "precision/overflows": 3},
        {"step": 1, "power/limit_W": 250.0},
        {"step": 5, "power/limit_W": 150.0},
    ]
    extra = {"power_limit": {"chosen_limit_w": 150.0, "table": [{"limit_w": 150.0, "energy_j": 1.0}]}}
    run = synthetic_run(tmp_path, rows, extra=extra)
    doc = build_report(run)
    names = {n for n, _ in doc.images}
    assert names == PLOTS | {"macs_per_prune.png", "precision_mode.png", "power_limit.png"}
    md = doc.to_markdown("x")
    assert "| dense | – | 10 M |" in md and "| 2 | 20 | 2.5 M | 2,000 | 4.00× |" in md  # dense = MACs × speedup
    assert "| 10 | fp32 | bf16 |" in md and "| 14 | bf16 | fp32 |" in md  # switches
    assert "| 14 | 1 |" in md and "skipped for non-finite loss or gradients: 1" in md  # the fallback
    assert "the grad scaler skipped (gradient overflow): 3" in md
    assert "| 150 ✓ |" in md


def test_final_macs_and_speedup_come_from_the_same_input_as_the_dense_count(tmp_path):
    # StructuredPruning counted an HF LM on its own 32 token ids (pruning/macs 1.7 M, 1.69x); GreenReport counted
    # the start and the end on the first batch (16 tokens a sample). The summary must not mix the two inputs.
    rows = epoch_rows([0.5, 0.8, 0.9])
    rows += [{"step": 10, "pruning/macs": 1.7e6, "pruning/params": 70000, "pruning/speedup": 1.69, "pruning/step": 1}]
    model = {"macs_start": 1.6e6, "params_start": 106816, "tokens_per_sample": 16, "macs": 0.8e6, "params": 70000}
    run = synthetic_run(tmp_path, rows, extra={"model": model})
    assert run.macs() == (0.8e6, 70000)
    md = build_report(run).to_markdown("x")
    assert "| model MACs per token (final) | 0.05 M (2.00× fewer than dense) |" in md
    cmp = compare_runs([run, run], "val_acc", target=0.8)
    assert cmp.rows[0].macs == 0.8e6 / 16 and cmp.rows[0].dense_macs == 1.6e6 / 16


def test_report_says_when_the_run_was_interrupted_and_when_a_metric_is_missing(tmp_path):
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), status="interrupted: RuntimeError")
    md = build_report(run, metric="val_f1").to_markdown("x")
    assert "did not finish normally (interrupted: RuntimeError)" in md
    assert "Metric `val_f1` was not logged" in md


@pytest.mark.parametrize("metric", ["val_acc", None])
def test_a_metric_logged_per_validation_dataloader_follows_the_first(tmp_path, metric):
    # With two validation dataloaders the report had no validation section, no energy-to-target, and (with
    # metric=None) no word of why.
    rows = []
    for row in epoch_rows([0.5, 0.8, 0.9]):
        if "val_acc" in row:
            acc = row.pop("val_acc")
            row |= {"val_acc/dataloader_idx_0": acc, "val_acc/dataloader_idx_1": acc / 2}
        rows.append(row)
    run = synthetic_run(tmp_path, rows)
    md = build_report(run, metric=metric, target=0.8).to_markdown("x")
    assert "`val_acc` was logged per validation dataloader: this report follows the first one's" in md
    assert "| energy to val_acc/dataloader_idx_0 ≥ 0.8 | 18.0 J (epoch 1) |" in md, md
    other = synthetic_run(tmp_path, rows, name="other")
    assert compare_runs([run, other], target=0.8).metric == "val_acc/dataloader_idx_0"
    plain = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name="plain")
    with pytest.raises(RunDirError, match=r"not logged in: synthetic \(synthetic logged it per validation dataloader"):
        compare_runs([run, plain], metric="val_acc")


def test_measured_vs_estimated_splits_the_total(tmp_path):
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), cpu=6.5)
    md = build_report(run).to_markdown("x")
    assert "| gpu | measured | 19.5 J | 75.0 % |" in md
    assert "| estimated (model) |  | 6.5 J | 25.0 % |" in md
    assert "56 gCO2e/kWh" in md and "| PUE | 1.10 |" in md


def test_a_run_that_outlived_its_intensity_trace_is_flagged(tmp_path):
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]))
    note = "the run outlived the trace (it ends 2022-06-01T03:00+00:00): its last value was held (2 window(s))"
    run.energy["carbon"]["extrapolated"] = note
    assert f"| ⚠ intensity trace | {note} |" in build_report(run).to_markdown("x")


def test_an_online_source_that_went_on_through_failed_requests_is_flagged(tmp_path):
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]))
    note = "2 request(s) to Electricity Maps failed (the run went on with the cached hours)"
    run.energy["carbon"]["source_note"] = note
    assert f"| ⚠ intensity source | {note} |" in build_report(run).to_markdown("x")


def inference_cost(*rows, subject="pruned", unit="token"):
    """An ``inference_cost`` section as bench-inference stores it: rows of (model, format, batch, J per 1k)."""
    return {
        "subject": subject,
        "unit": unit,
        "device": "cpu",
        "threads": 1,
        "label": "estimated",
        "rows": [
            {
                "model": model,
                "format": fmt,
                "batch_size": batch,
                "energy_per_1k_j": j,
                "latency_ms_median": 1.0,
                "latency_ms_p90": 1.2,
                "throughput_per_s": 100.0,
                "label": "estimated",
            }
            for model, fmt, batch, j in rows
        ],
    }


def test_inference_energies_keep_three_significant_figures(tmp_path):
    section = inference_cost(("pruned", "eager", 1, 0.0896), ("pruned", "eager", 8, 0.0321))
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), extra={"inference_cost": section})
    md = build_report(run).to_markdown("x")
    assert "| 0.0896 J |" in md and "| 0.0321 J |" in md
    other = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name="b", extra={"inference_cost": section})
    _, rows = comparison_table(compare_runs([run, other], target=0.8))
    assert rows[0][-2].startswith("0.0321 J/1k tok")


# ------------------------------------------------------------------------------------------------ comparison
def test_inference_is_compared_only_at_the_same_format_and_batch_size(tmp_path):
    def run(name, *rows):
        extra = {"inference_cost": inference_cost(*rows)}
        return synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name=name, extra=extra)

    # the same model benchmarked at batch 1 and at batch 8: nothing in common, no ratio
    a, b = run("a", ("pruned", "eager", 1, 1.0)), run("b", ("pruned", "eager", 8, 0.1))
    _, rows = comparison_table(compare_runs([a, b], target=0.8))
    assert rows[1][-2].startswith("0.100 J/1k tok (eager, b8")
    assert rows[1][-1] == "n/a (no format and batch size benchmarked in every run measured alike)"
    # a batch size both have: compared there, even where another batch size is cheaper for one of them
    a = run("a", ("pruned", "eager", 1, 1.0), ("pruned", "eager", 8, 0.2))
    b = run("b", ("pruned", "eager", 8, 0.1), ("pruned", "onnx", 8, 0.05))
    _, rows = comparison_table(compare_runs([a, b], target=0.8))
    assert rows[0][-2].startswith("0.200 J/1k tok (eager, b8") and rows[1][-2].startswith("0.100 J/1k tok (eager, b8")
    assert rows[1][-1] == "0.50×"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"threads": 2}, "measured with 1 thread(s) vs with 2 thread(s)"),
        ({"device": "cuda:0"}, "measured on cpu vs on cuda:0"),
        ({"input_shapes": [[16]]}, "measured input [[64]] vs input [[16]]"),
        ({"unit": "prediction"}, "measured per token vs per prediction"),
    ],
)
def test_inference_benchmarked_another_way_is_not_given_a_ratio(tmp_path, change, why):
    # A run benchmarked with 2 threads and one with 1, both "eager, b4", were given a ratio as if like for like.
    def run(name, **setup):
        section = {**inference_cost(("pruned", "eager", 4, 1.0)), "input_shapes": [[64]], **setup}
        return synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name=name, extra={"inference_cost": section})

    _, rows = comparison_table(compare_runs([run("a"), run("b", **change)], target=0.8))
    assert rows[1][-1] == f"n/a ({why})"
    _, rows = comparison_table(compare_runs([run("a"), run("b")], target=0.8))
    assert rows[1][-1] == "1.00×"


def test_one_run_benchmarked_another_way_leaves_the_others_ratios(tmp_path):
    def run(name, j, **setup):
        section = {**inference_cost(("pruned", "eager", 4, j)), "input_shapes": [[64]], **setup}
        return synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name=name, extra={"inference_cost": section})

    _, rows = comparison_table(compare_runs([run("a", 1.0), run("b", 0.5), run("c", 0.2, threads=2)], target=0.8))
    assert [r[-1] for r in rows] == ["1.00×", "0.50×", "n/a (measured with 1 thread(s) vs with 2 thread(s))"]


def test_the_benchmark_says_what_a_call_measures(tmp_path):
    # "J/1k tokens" was a forward pass over a prompt whose length was recorded nowhere.
    from lightning_green.export.bench import bench_inference, format_bench

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, ids):
            return self.emb(ids)

    result = bench_inference({"lm": LM()}, torch.zeros(1, 16, dtype=torch.long), formats="eager", batch_sizes="2",
                             repeats=2, warmup=0, rounds=1)  # fmt: skip
    data = result.as_dict()
    assert data["input_shapes"] == [[16]] and data["unit"] == "token"
    assert "one forward pass over 16-token inputs (not token-by-token generation)" in format_bench(result)
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), extra={"inference_cost": data})
    assert "each call is one forward pass over 16-token inputs" in build_report(run).to_markdown("x")


def test_compare_two_runs_with_ratios_against_the_first(tmp_path):
    base = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name="baseline")
    green = synthetic_run(
        tmp_path, epoch_rows([0.85, 0.88, 0.9], epoch_j=(4.0, 4.0, 4.0), times=(0.5, 1.0, 1.5)), name="green"
    )
    cmp = compare_runs([base, green], target=0.8)
    assert cmp.metric == "val_acc" and cmp.mode == "max"
    assert [r.target.energy_j for r in cmp.rows] == [18.0, 4.0]
    text = format_comparison(cmp)
    assert "0.22×" in text and "0.25×" in text  # 4/18 J, 0.5/2 s
    _, files = write_comparison([base, green], tmp_path / "cmp", target=0.8)
    assert_png(files.images[0])
    assert json.loads(json.dumps(cmp.as_dict()))["runs"][1]["target"]["epoch"] == 0


def test_comparison_target_defaults_to_what_every_run_reached(tmp_path):
    a = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name="a")
    b = synthetic_run(tmp_path, epoch_rows([0.4, 0.6, 0.7]), name="b")
    cmp = compare_runs([a, b])
    assert cmp.target == pytest.approx(0.7) and all(r.target.reached for r in cmp.rows)


def test_comparison_needs_a_common_metric(tmp_path):
    a = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), name="a")
    b = synthetic_run(tmp_path, [{"step": 1, "val_f1": 0.3}], name="b")
    with pytest.raises(RunDirError, match=r"no validation metric common to all runs"):
        compare_runs([a, b])
    with pytest.raises(RunDirError, match=r"metric 'val_acc' was not logged in: b"):
        compare_runs([a, b], metric="val_acc")


# ------------------------------------------------------------------------------------------------ bad run dirs
def test_runs_three_levels_down_are_listed(tmp_path):
    for run in ("runs/fp32/lightning_logs/version_0", "runs/green/lightning_logs/version_1", "a/b/c/d/version_0"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "energy_report.json").write_text("{}")
    (tmp_path / "runs/fp32/lightning_logs/version_0/checkpoints/x").mkdir(parents=True)
    with pytest.raises(
        RunDirError, match=r"runs found below it: \S*runs/fp32/lightning_logs/version_0, \S*runs/green/"
    ):
        load_run(tmp_path / "runs")
    with pytest.raises(RunDirError) as info:
        load_run(tmp_path)
    assert "a/b/c/d/version_0" in str(info.value)  # 5 levels down


def test_bad_run_directories_say_why(tmp_path, tb_run):
    with pytest.raises(RunDirError, match=r"does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunDirError, match=r"is not a directory"):
        load_run(tmp_path / "file.txt")
    parent = str(tb_run).rsplit("/", 1)[0]
    with pytest.raises(RunDirError, match=r"no energy_report.json\); runs found below it: .*version_0"):
        load_run(parent)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "energy_report.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"cannot read .*energy_report.json"):
        load_run(bad)


def test_scalars_keep_non_finite_values_and_skip_them_for_the_best(tmp_path):
    run = synthetic_run(tmp_path, [{"step": 1, "val_loss": 2.0}, {"step": 2, "val_loss": math.nan}])
    assert run.best_metric("val_loss", "min") == 2.0 and math.isnan(run.final_metric("val_loss"))


def _validate_stage(energy_j, steps):
    return {"energy_j": {"gpu": 0.0, "cpu": energy_j, "dram": 0.0, "total": energy_j}, "steps": steps, "samples": 8}


@pytest.mark.parametrize(
    ("validate", "noted"),
    [
        (None, False),  # a fit without validation: no validate row
        (_validate_stage(0.0, 0), False),  # EnergyMonitor keeps an empty validate row for a fit that never validated
        (_validate_stage(2.0, 4), True),  # the fit's validation, or a stand-alone trainer.validate() after it
    ],
)
def test_the_validate_row_is_explained_only_when_there_is_one(tmp_path, validate, noted):
    # the note "Fit includes the validation run inside it; the `validate` row is that part on its own" was printed
    # for every report, and was false after a stand-alone trainer.validate() (the row is then that run)
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]))
    if validate is not None:
        run.energy["stages"]["validate"] = validate
    md = build_report(run).to_markdown("x")
    assert "that part on its own" not in md
    note = "The `validate` row is validation on its own: the fit's, or, when `trainer.validate()` ran after the fit"
    assert (note in md) is noted


# ------------------------------------------------------------------------------------------------ fixes
def resumed_rows():
    """The log of a fit resumed at epoch 2 into a new log dir: totals go on from the 18 J of epochs 0-1."""
    return [
        {"step": 11, "val_acc": 0.9, "epoch": 2, "time/elapsed_s": 3.0},
        {"step": 11, "energy/epoch_J": 8.0, "energy/total_J": 26.0, "energy/cpu_J": 26.0, "epoch": 2},
        {"step": 15, "val_acc": 0.95, "epoch": 3, "time/elapsed_s": 4.0},
        {"step": 15, "energy/epoch_J": 6.0, "energy/total_J": 32.0, "energy/cpu_J": 32.0, "epoch": 3},
    ]


def test_a_run_resumed_into_a_new_log_dir_takes_its_earlier_epochs_from_the_energy_report(tmp_path):
    run = synthetic_run(tmp_path, resumed_rows(), epochs_j=(10.0, 8.0, 8.0, 6.0))
    epochs = run.epoch_energy()
    assert [(e.epoch, e.total_j, e.cumulative_j) for e in epochs] == [
        (0, 10.0, 10.0),
        (1, 8.0, 18.0),
        (2, 8.0, 26.0),
        (3, 6.0, 32.0),
    ]
    # Epoch 2's split at its start is not in this log: no components rather than cumulative ones (26 J of CPU).
    assert epochs[2].components_j == {} and epochs[3].components_j["cpu"] == 6.0


def test_energy_to_target_of_a_resumed_log_is_an_upper_bound_never_an_exact_figure(tmp_path):
    run = synthetic_run(tmp_path, resumed_rows(), epochs_j=(10.0, 8.0, 8.0, 6.0))
    hit = run.to_target("val_acc", 0.5, "max")
    assert hit.reached and hit.energy_j == 26.0 and hit.logged_from_epoch == 2
    md = build_report(run, target=0.5).to_markdown("x")
    assert "| energy to val_acc ≥ 0.5 | ≤ 26.0 J (by epoch 2;" in md and "| time to val_acc ≥ 0.5 | ≤ 3.0 s |" in md
    assert "epochs 0–1 were logged elsewhere" in md
    fresh = synthetic_run(tmp_path, epoch_rows([0.6, 0.8, 0.9]))
    header, rows = comparison_table(compare_runs([fresh, run], "val_acc", target=0.5))
    assert rows[1][3] == "≤ 26.0 J (epoch ≤ 2)" and rows[1][4] == "n/a"
    assert rows[0][3] == "10.0 J (epoch 0)" and rows[0][4] == "1.00×"


def test_a_stand_alone_validation_after_fit_is_not_on_the_fit_curve(tmp_path):
    rows = epoch_rows([0.5, 0.8, 0.9])
    for r in rows:
        if "val_acc" in r:
            r["validate/energy/epoch_J"], r["validate/energy/total_J"] = 1.0, float(r["step"])
    rows.append({"step": 30, "val_acc": 0.99, "validate/energy/total_J": 1.0})  # trainer.validate() after fit
    run = synthetic_run(tmp_path, rows)
    assert [cp.step for cp in run.curve("val_acc")] == [9, 19, 29]
    assert run.best_metric("val_acc", "max") == 0.9 and run.final_metric("val_acc") == 0.9
    assert not run.to_target("val_acc", 0.95, "max").reached


def test_kept_per_epoch_is_a_share_of_the_training_set_under_limit_train_batches(tmp_path):
    # limit_train_batches: the epochs load 512 samples, pruned or not (the logged data/kept_fraction, the share of a
    # full-data epoch's loads, is 100 % each epoch); the plan keeps counts of all 1,257. The report called the logged
    # 100 %s "kept of the training set", against the json's 1,257 / 1,066 / 1,000 / 1,257.
    data = {"samples_seen": 2048, "samples_full_data": 2048, "samples_saved": 0, "samples_ratio": 1.0}
    data |= {"kept_per_epoch": [1257, 1066, 1000, 1257], "training_samples": 1257}
    rows = epoch_rows([0.5, 0.8, 0.9])
    rows += [{"step": s, "data/kept_fraction": 1.0} for s in (9, 19, 29, 39)]
    md = build_report(synthetic_run(tmp_path, rows, extra={"data": data})).to_markdown("x")
    assert "Kept per epoch (of the training set's 1,257 samples): 100%, 85%, 80%, 100%." in md
    assert "Loaded per epoch (of what an epoch on all the data loads, under the Trainer's limits): 100%, 100%" in md
    # Without limits the two are the same figure, said once.
    same = [
        {"step": s, "data/kept_fraction": f} for s, f in zip((9, 19, 29, 39), (1.0, 0.848, 0.796, 1.0), strict=True)
    ]
    md = build_report(synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]) + same, extra={"data": data})).to_markdown(
        "x"
    )
    assert "Kept per epoch (of the training set's 1,257 samples): 100%, 85%, 80%, 100%." in md and "Loaded" not in md
    # An older report (no training_samples) without the logged shares: counts.
    del data["training_samples"]
    md = build_report(synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]), extra={"data": data})).to_markdown("x")
    assert "Kept per epoch (samples of the training set): 1,257, 1,066, 1,000, 1,257." in md


def test_a_report_without_a_status_reads_the_same_in_the_report_and_the_comparison(tmp_path):
    run = synthetic_run(tmp_path, epoch_rows([0.5, 0.8, 0.9]))
    del run.energy["status"]
    assert "records no status" in build_report(run).to_markdown("x")
    cmp = compare_runs([run, run], "val_acc", target=0.8)
    assert cmp.rows[0].status == "unknown" and "records no status" in format_comparison(cmp)


def test_a_corrupt_event_file_is_noted_as_incomplete(tb_run, tmp_path):
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(tb_run, copy, ignore=shutil.ignore_patterns("green_report*"))
    (event,), _ = find_scalar_files(copy)
    data = bytearray(event.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: TensorBoard's loader stops there, silently
    event.write_bytes(bytes(data))
    run = load_run(copy)
    assert len(run.scalars.problems) == 1 and "corrupt or truncated" in run.scalars.problems[0]
    assert "The logged scalars are incomplete" in build_report(run).to_markdown("x")
    assert load_run(tb_run).scalars.problems == []


def test_no_html_removes_the_page_of_an_earlier_report(tb_run, tmp_path):
    files = write_report(tb_run, out_dir=tmp_path)
    assert files.html is not None and files.html.is_file()
    files = write_report(tb_run, out_dir=tmp_path, html=False)
    assert files.html is None and not (tmp_path / "green_report.html").exists()
