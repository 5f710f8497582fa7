"""The report's links, times and validations as a run's files give them: recorded file names, resumed logs without
GreenReport's time, stand-alone validations at a fit validation's step, bench-inference's regenerated report."""

import csv
import json

import pytest
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_green import EnergyMonitor, GreenReport
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.export.report import attach_to_run
from lightning_green.report import Scalars, build_report, compare_runs, format_comparison, load_run, write_comparison
from lightning_green.report.compare import comparison_table
from lightning_green.report.document import ReportFiles
from lightning_green.report.run import Run
from tests.helpers import QUIET
from tests.report.test_report import energy_report, epoch_rows, resumed_rows, synthetic_run


def _runs_table(md: str) -> list[str]:
    return md.split("## Runs", 1)[1].strip().splitlines()[2:]


# ------------------------------------------------------------------------------- comparison links the written file
def test_the_comparison_links_each_run_s_report_under_its_recorded_file_name(tmp_path):
    mine = synthetic_run(
        tmp_path / "a", epoch_rows([0.5, 0.8, 0.9]), name="a", extra={"green_report": {"filename": "mine"}}
    )
    plain = synthetic_run(tmp_path / "b", epoch_rows([0.5, 0.8, 0.9]), name="b")
    _, files = write_comparison([mine, plain], tmp_path / "cmp", target=0.8, html=False)
    rows = _runs_table(files.markdown.read_text())
    assert rows[0].endswith(f"| {tmp_path / 'a' / 'mine.md'} |") and rows[1].endswith(
        f"| {tmp_path / 'b' / 'green_report.md'} |"
    )
    # The files actually written, when the caller has them.
    written = [ReportFiles(tmp_path / "a" / "other.md", None, ()), tmp_path / "b" / "x.md"]
    _, files = write_comparison([mine, plain], tmp_path / "cmp", target=0.8, html=False, reports=written)
    rows = _runs_table(files.markdown.read_text())
    assert rows[0].endswith(f"| {tmp_path / 'a' / 'other.md'} |") and rows[1].endswith(f"| {tmp_path / 'b' / 'x.md'} |")
    with pytest.raises(ValueError, match=r"`reports` has 1 entries for 2 runs"):
        write_comparison([mine, plain], tmp_path / "cmp", target=0.8, reports=written[:1])


# ---------------------------------------------------------------- a resumed log without GreenReport's elapsed time
def _resumed_tensorboard_run(tmp_path, elapsed: bool) -> Run:
    """A resumed fit's new TensorBoard log (epochs 2-3): its clock starts at the resume, 0.5 s before epoch 2's end."""
    scalars = Scalars("tensorboard: test")
    for i, row in enumerate(resumed_rows()):
        for tag, value in row.items():
            if tag != "step" and (elapsed or tag != "time/elapsed_s"):
                scalars.add(tag, row["step"], value, wall_time=1000.0 + 0.5 * (i // 2 + 1))
    scalars.add("energy/total_J", 0, 18.0, wall_time=1000.0)  # the resume's first event
    return Run(path=tmp_path, energy=energy_report(epochs_j=(10.0, 8.0, 8.0, 6.0)), scalars=scalars, name="resumed")


def test_a_resumed_log_without_logged_elapsed_time_has_no_time_to_target(tmp_path):
    run = _resumed_tensorboard_run(tmp_path, elapsed=False)
    assert run.first_logged_epoch() == 2
    hit = run.to_target("val_acc", 0.5, "max")
    # The wall clock since the resume (0.5 s) is no bound on the fit's time at epoch 2 (epochs 0-1 ran before it).
    assert hit.reached and hit.energy_j == 26.0 and hit.time_s is None
    assert [cp.time_s for cp in run.curve("val_acc")] == [None, None]
    md = build_report(run, target=0.5).to_markdown("x")
    assert "| time to val_acc ≥ 0.5 | not known |" in md and "≤ 0.5 s" not in md and "≤ n/a" not in md
    assert "elapsed fit time is not known" in md
    fresh = synthetic_run(tmp_path, epoch_rows([0.6, 0.8, 0.9]))
    cmp = compare_runs([fresh, run], "val_acc", target=0.5)
    _, rows = comparison_table(cmp)
    assert rows[1][3] == "≤ 26.0 J (epoch ≤ 2)" and rows[1][5:7] == ["not known", "n/a"]
    text = format_comparison(cmp)
    assert "≤ n/a" not in text and "its time-to-target is not known" in text
    assert json.loads(json.dumps(cmp.as_dict()))["runs"][1]["target"]["time_s"] is None


def test_a_resumed_log_with_logged_elapsed_time_keeps_it_as_the_bound(tmp_path):
    run = _resumed_tensorboard_run(tmp_path, elapsed=True)
    assert run.to_target("val_acc", 0.5, "max").time_s == 3.0
    md = build_report(run, target=0.5).to_markdown("x")
    assert "| time to val_acc ≥ 0.5 | ≤ 3.0 s |" in md and "elapsed fit time is not known" not in md
    # A log from the fit's start still reads TensorBoard's clock.
    fresh = Scalars("tensorboard: test")
    for i, row in enumerate(epoch_rows([0.6, 0.8, 0.9])):
        for tag, value in row.items():
            if tag not in ("step", "time/elapsed_s"):
                fresh.add(tag, row["step"], value, wall_time=1000.0 + i)
    run = Run(path=tmp_path, energy=energy_report(), scalars=fresh)
    assert run.to_target("val_acc", 0.5, "max").time_s == 1.0


# ------------------------------------------------------------ a stand-alone validation at a fit validation's step
def _validations(stand_alone_first: bool):
    """Calls as logged, in order: (step, values). The fit validates at steps 0, 1, 2 (one batch per epoch)."""
    calls = []
    if stand_alone_first:  # trainer.validate() before fit: same step 0 as the fit's first validation
        calls += [
            (0, {"validate/energy/total_J": 0.3, "validate/power/avg_W": 6.0}),
            (0, {"val_acc": 0.99, "epoch": 0}),
        ]
    total = 0.0
    for e in range(3):
        total += 1.0
        calls += [
            (e, {"energy/total_J": total - 0.5}),
            (
                e,
                {"validate/energy/total_J": 0.1 * (e + 1), "validate/energy/epoch_J": 0.1, "validate/power/avg_W": 5.0},
            ),
            (e, {"val_acc": 0.1 + 0.1 * e, "epoch": e}),
            (e, {"energy/epoch_J": 1.0, "energy/total_J": total, "epoch": e}),
        ]
    if not stand_alone_first:  # trainer.validate() after fit, at the fit's last validation's step
        calls += [
            (2, {"validate/energy/total_J": 0.3, "validate/power/avg_W": 6.0}),
            (2, {"val_acc": 0.99, "epoch": 2}),
        ]
    return calls


@pytest.mark.parametrize("rows", [True, False], ids=["csv-rows", "tensorboard-order"])
@pytest.mark.parametrize("stand_alone_first", [True, False], ids=["before-fit", "after-fit"])
def test_a_stand_alone_validation_at_a_fit_validation_s_step_is_not_on_the_fit_curve(tmp_path, rows, stand_alone_first):
    scalars = Scalars("test")
    for i, (step, values) in enumerate(_validations(stand_alone_first)):
        for tag, value in values.items():
            scalars.add(tag, step, value, row=i if rows else None)
    run = Run(path=tmp_path, energy=energy_report(epochs_j=(1.0, 1.0, 1.0)), scalars=scalars)
    assert [(cp.step, cp.epoch, round(cp.value, 2)) for cp in run.curve("val_acc")] == [
        (0, 0, 0.1),
        (1, 1, 0.2),
        (2, 2, 0.3),
    ]
    assert run.best_metric("val_acc", "max") == pytest.approx(0.3)
    assert not run.to_target("val_acc", 0.9, "max").reached


@pytest.mark.parametrize("logger", ["tb", "csv"])
def test_a_baseline_validate_before_a_fit_that_validates_at_step_0_is_not_on_the_fit_curve(tmp_path, logger):
    seed_everything(0)
    loggers = {"tb": TensorBoardLogger(tmp_path), "csv": CSVLogger(tmp_path)}
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=loggers[logger],
        callbacks=[EnergyMonitor(print_summary=False, min_window_s=0.0), GreenReport()],
        **QUIET,
    )
    model, data = DigitsCNN(channels=[4, 8], lr=1e-2), DigitsDataModule(image_size=8, batch_size=32)
    trainer.validate(model, data)
    trainer.fit(model, data)
    run = load_run(trainer.log_dir)
    curve = run.curve("val_acc")
    assert [cp.epoch for cp in curve] == [0, 1, 2]
    assert all(cp.time_s is not None and cp.energy_j is not None for cp in curve)


# ------------------------------------------------------------------ bench-inference's report keeps the settings
def _write_run(path, settings):
    path.mkdir(parents=True)
    report = energy_report(extra={"green_report": settings})
    (path / "energy_report.json").write_text(json.dumps(report))
    rows = epoch_rows([0.5, 0.8, 0.9])
    tags = sorted({t for r in rows for t in r if t != "step"})
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", *tags])
        writer.writeheader()
        writer.writerows(rows)
    return path


INFERENCE = {
    "kind": "inference_cost",
    "unit": "prediction",
    "rows": [
        {
            "model": "m",
            "format": "eager",
            "batch_size": 8,
            "latency_ms_median": 1.0,
            "latency_ms_p90": 1.2,
            "throughput_per_s": 100.0,
            "energy_per_1k_j": 2.0,
            "label": "estimated",
        }
    ],
}


def test_attach_to_run_regenerates_the_run_s_own_report_with_its_recorded_settings(tmp_path):
    run_dir = _write_run(tmp_path / "run", {"metric": "val_acc", "target": 0.8, "filename": "mine", "html": False})
    attach_to_run(run_dir, INFERENCE)
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(("energy_report", "metrics"))) == [
        "mine.md",
        "mine_files",
    ]
    md = (run_dir / "mine.md").read_text()
    assert "## Inference cost" in md and "| energy to val_acc ≥ 0.8 | 18.0 J (epoch 1) |" in md


def test_attach_to_run_without_green_report_writes_the_default_report(tmp_path):
    run_dir = _write_run(tmp_path / "run", None)
    attach_to_run(run_dir, INFERENCE)
    assert (run_dir / "green_report.md").is_file() and (run_dir / "green_report.html").is_file()
    assert "## Inference cost" in (run_dir / "green_report.md").read_text()


def test_report_settings_take_the_given_options_over_the_recorded_ones(tmp_path):
    from lightning_green.report.green import report_settings

    recorded = {"metric": "val_loss", "mode": "min", "target": 0.3, "filename": "mine", "html": False}
    run = synthetic_run(tmp_path, [], extra={"green_report": recorded})
    assert report_settings(run) == recorded
    assert report_settings(run, metric="val_loss", target=0.2, html=True) == {**recorded, "target": 0.2, "html": True}
    # Another metric drops the recorded mode and target, never the file name.
    assert report_settings(run, metric="val_acc") == {**recorded, "metric": "val_acc", "mode": "auto", "target": None}
    assert report_settings(synthetic_run(tmp_path, [])) == {
        "metric": None,
        "mode": "auto",
        "target": None,
        "filename": "green_report",
        "html": True,
    }
