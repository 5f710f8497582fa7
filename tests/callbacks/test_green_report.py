import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_green import EnergyMonitor, GreenReport
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.export.report import find_run_dir
from lightning_green.report import load_run
from lightning_green.report.compare import compare_runs
from lightning_green.report.run import RunDirError
from tests.helpers import QUIET, DestroyProcessGroupAtExit, ElsewhereLogger, make_trainer
from tests.report.runs import fit_digits


class TimeLog(GreenReport):
    """Records what it logs as time/elapsed_s."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.logged = []

    def on_validation_epoch_end(self, trainer, pl_module):
        super().on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self.logged.append(float(trainer.callback_metrics["time/elapsed_s"]))


class Exploding(DigitsCNN):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "up"}, r"GreenReport\(mode='up'\): `mode` must be one of \('auto', 'max', 'min'\)"),
        ({"metric": ""}, r"GreenReport\(metric=''\): `metric` must be None or the name of a logged validation"),
        ({"target": float("nan")}, r"`target` must be a number that is finite"),
        ({"filename": "a/b"}, r"GreenReport\(filename='a/b'\): `filename` must be a plain file name"),
        ({"html": "yes"}, r"GreenReport\(html='yes'\): `html` must be a bool"),
        ({"count_macs": 1}, r"`count_macs` must be a bool"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GreenReport(**kwargs)


def test_needs_an_energy_monitor(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[GreenReport()], logger=False, **QUIET)
    with pytest.raises(ValueError, match=r"GreenReport: .* has no EnergyMonitor writing one; add"):
        trainer.fit(DigitsCNN(channels=[4]), DigitsDataModule(image_size=8))


def test_written_at_fit_end_whatever_the_callback_order(tmp_path):
    report = GreenReport(target=0.0)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        callbacks=[report, EnergyMonitor(print_summary=False)],  # GreenReport *before* the monitor
        **QUIET,
    )
    trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(image_size=8))
    md = report.files.markdown.read_text()
    assert str(report.files.markdown) == os.path.join(trainer.log_dir, "green_report.md")
    assert "| 1 | 5 |" in md  # both epochs' validations are in (the loggers were flushed)
    assert "energy to val_acc ≥ 0" in md
    model = load_run(trainer.log_dir).extra("model")
    assert model["macs"] == model["macs_start"] > 0 and model["params"] == sum(
        p.numel() for p in trainer.lightning_module.parameters()
    )


def test_csv_logger_rows_are_flushed_before_the_report(tmp_path):
    trainer = fit_digits(tmp_path, "csv", epochs=3)
    run = load_run(trainer.log_dir)
    assert [cp.epoch for cp in run.curve("val_acc")] == [0, 1, 2]
    assert (run.path / "green_report_files" / "metric_vs_energy.png").is_file()


def _fit_with_loggers(tmp_path, loggers, checkpoint=False, **report_kwargs):
    report = GreenReport(**report_kwargs)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        logger=loggers,
        enable_checkpointing=checkpoint,
        callbacks=[EnergyMonitor(print_summary=False), report],
        **QUIET,
    )
    trainer.fit(DigitsCNN(channels=[4]), DigitsDataModule(image_size=8))
    return trainer, report


def test_without_a_logger_the_report_has_the_energy_tables(tmp_path):
    _, report = _fit_with_loggers(tmp_path, False)
    assert report.files.markdown.parent == tmp_path
    assert {p.name for p in report.files.images} == {"energy_per_epoch.png"}  # from the report's epochs_j
    assert "## Measured vs estimated" in report.files.markdown.read_text()


def test_a_wandb_or_mlflow_logger_first_gets_each_run_its_own_folder_and_the_curves_from_tensorboard(tmp_path):
    # Trainer.log_dir of such a logger is its save_dir, which every run shares: the second run overwrote the first's
    # reports, and the curves TensorBoard logged beside it (in lightning_logs/version_N) were never read.
    runs = []
    for version in ("run-a", 7):
        loggers = [ElsewhereLogger(tmp_path / "store", version=version), TensorBoardLogger(tmp_path / "tb")]
        trainer, report = _fit_with_loggers(tmp_path, loggers, target=0.0)
        folder = tmp_path / "store" / "project" / ("run-a" if version == "run-a" else "version_7")  # ModelCheckpoint's
        assert report.files.markdown == folder / "green_report.md"
        run = load_run(folder)
        assert [cp.epoch for cp in run.curve("val_acc")] == [0, 1]  # TensorBoard's, found through the report's `logs`
        assert run.energy["logs"] == [os.path.relpath(trainer.loggers[1].log_dir, folder)]
        assert "energy to val_acc ≥ 0" in report.files.markdown.read_text()
        runs.append(run)
    assert runs[0].energy["started_s"] != runs[1].energy["started_s"]  # both runs' reports are there
    assert not (tmp_path / "store" / "energy_report.json").exists()
    assert not (tmp_path / "store" / "green_report_files").exists()  # nothing in the store's root (MLflow's)


def test_a_tensorboard_sub_dir_keeps_the_reports_beside_the_checkpoints_and_the_curves_are_read(tmp_path):
    # TensorBoardLogger(sub_dir=...) has log_dir version_0/<sub_dir> but checkpoints in version_0/checkpoints: the
    # reports went into the sub_dir, where `export`/`bench-inference` could not find them from the checkpoint.
    trainer, report = _fit_with_loggers(tmp_path, [TensorBoardLogger(tmp_path, sub_dir="train")], True, target=0.0)
    folder = tmp_path / "lightning_logs" / "version_0"
    assert Path(trainer.log_dir) == folder / "train"
    assert report.files.markdown == folder / "green_report.md"
    assert find_run_dir(trainer.checkpoint_callback.best_model_path) == folder
    run = load_run(folder)
    assert run.energy["logs"] == ["train"]
    assert [cp.epoch for cp in run.curve("val_acc")] == [0, 1]
    assert not (folder / "train" / "energy_report.json").exists()


def test_the_curves_beside_a_symlinked_store_are_found(tmp_path):
    # An MLflow store linked to a big disk: a `..` in a path relative to the folder as named is resolved after the
    # link, in the disk's folder; `logs` is relative between the real paths.
    (tmp_path / "disk" / "mlruns").mkdir(parents=True)
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "disk" / "mlruns", tmp_path / "root" / "mlruns")
    loggers = [ElsewhereLogger(tmp_path / "root" / "mlruns", version="r1"), TensorBoardLogger(tmp_path / "root" / "tb")]
    _, report = _fit_with_loggers(tmp_path, loggers, target=0.0)
    run = load_run(tmp_path / "root" / "mlruns" / "project" / "r1")
    assert [cp.epoch for cp in run.curve("val_acc")] == [0, 1]
    assert "energy to val_acc ≥ 0" in report.files.markdown.read_text()


def test_a_logger_whose_metrics_cannot_be_read_back_is_warned_of_and_the_report_says_so(tmp_path):
    with pytest.warns(UserWarning, match=r"loggers \(ElsewhereLogger\) write neither: .* Add .*CSVLogger"):
        _, report = _fit_with_loggers(tmp_path, [ElsewhereLogger(tmp_path, version="r1")], metric="val_acc", target=0.5)
    assert report.files.markdown.parent == tmp_path / "project" / "r1"
    md = report.files.markdown.read_text()
    assert "No logged metrics could be read back" in md and "was not logged" not in md
    with pytest.raises(RunDirError, match=r"no logged metrics could be read back in: .*add a CSVLogger"):
        compare_runs([load_run(tmp_path / "project" / "r1"), load_run(tmp_path / "project" / "r1", name="again")])


def _exploding_fit(tmp_path, callbacks):
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=callbacks,
        **QUIET,
    )
    with pytest.raises(RuntimeError, match="boom"):  # the user's exception, unchanged
        trainer.fit(Exploding(channels=[4]), DigitsDataModule(image_size=8))
    with open(os.path.join(trainer.log_dir, "energy_report.json")) as f:
        assert json.load(f)["status"] == "interrupted: RuntimeError"
    return trainer


def test_a_failed_fit_gets_its_report_marked_unfinished(tmp_path):
    # A run that failed in epoch 1 had no green report; `lightning-green report` had to rebuild it.
    report = GreenReport(target=0.5)
    trainer = _exploding_fit(tmp_path, [EnergyMonitor(print_summary=False), report])
    assert report.files is not None and report.files.markdown == tmp_path / "lightning_logs/version_0/green_report.md"
    text = report.files.markdown.read_text()
    assert "did not finish normally (interrupted: RuntimeError)" in text
    assert "0.5" in text  # the GreenReport's own target
    assert os.path.exists(os.path.join(trainer.log_dir, "green_report.html"))


def test_a_failed_fits_energy_report_keeps_the_reports_settings_and_model_for_a_rebuild(tmp_path):
    # The interrupted energy report had no `extra` (both sections were added at the fit's end), so
    # `lightning-green report` rebuilt another report: the default file name, no target, no MACs.
    from lightning_green.report.green import report_settings

    report = GreenReport(metric="val_acc", target=0.15, filename="mine")
    trainer = _exploding_fit(tmp_path, [EnergyMonitor(print_summary=False), report])
    run = load_run(trainer.log_dir)
    assert run.energy["extra"]["green_report"] == report.settings()
    assert run.energy["extra"]["model"]["macs_start"] > 0
    settings = report_settings(run)
    assert (settings["filename"], settings["target"], settings["metric"]) == ("mine", 0.15, "val_acc")


def test_a_failed_fit_listed_before_the_monitor_writes_no_stale_report(tmp_path, caplog):
    # The EnergyMonitor writes the interrupted energy report in its own on_exception, after this one's.
    report = GreenReport()
    with caplog.at_level("INFO"):
        trainer = _exploding_fit(tmp_path, [report, EnergyMonitor(print_summary=False)])
    assert report.files is None and not os.path.exists(os.path.join(trainer.log_dir, "green_report.md"))
    assert "list GreenReport after it" in caplog.text and "lightning-green report" in caplog.text


class ExplodesDifferently(Exploding):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise ValueError("bang")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("new_trainer", [True, False])
def test_a_failed_fit_never_reports_an_earlier_failures_energy_report(tmp_path, caplog, new_trainer):
    # The folder already held an interrupted energy report (logger=False: the same folder for every run; or a retry
    # on the same Trainer); GreenReport, listed before the monitor, built its report from that one.
    def trainer(callbacks):
        kwargs = {"max_epochs": 3, "limit_train_batches": 2, "limit_val_batches": 1, "logger": False}
        return Trainer(default_root_dir=tmp_path, callbacks=callbacks, **kwargs, **QUIET)

    first = trainer([EnergyMonitor(print_summary=False), GreenReport()])
    with pytest.raises(RuntimeError, match="boom"):
        first.fit(Exploding(channels=[4]), DigitsDataModule(image_size=8))
    written = (tmp_path / "green_report.md").read_text()
    assert "interrupted: RuntimeError" in written
    report = GreenReport()
    second = trainer([report, EnergyMonitor(print_summary=False)])
    if not new_trainer:  # the same Trainer, failing once before
        with pytest.raises(RuntimeError, match="boom"):
            second.fit(Exploding(channels=[4]), DigitsDataModule(image_size=8))
    with caplog.at_level("INFO"), pytest.raises(ValueError, match="bang"):
        second.fit(ExplodesDifferently(channels=[4]), DigitsDataModule(image_size=8))
    assert "list GreenReport after it" in caplog.text and report.files is None
    assert (tmp_path / "green_report.md").read_text() == written  # not rebuilt from another failure's figures
    assert json.loads((tmp_path / "energy_report.json").read_text())["status"] == "interrupted: ValueError"


class FailsInSetup(Callback):
    def setup(self, trainer, pl_module, stage):
        if getattr(self, "fail", False):
            raise RuntimeError("setup boom")


def test_a_fit_failing_before_the_monitors_setup_never_rebuilds_the_last_runs_report(tmp_path, caplog):
    # The monitor's note of the energy report it wrote for run A's failure was taken for run B's (a new Trainer whose
    # fit failed before the monitor's setup): B rebuilt A's green report.
    report, fails = GreenReport(), FailsInSetup()
    callbacks = [report, fails, EnergyMonitor(print_summary=False)]
    first = _exploding_fit(tmp_path / "a", callbacks)
    assert not os.path.exists(os.path.join(first.log_dir, "green_report.md"))  # listed before the monitor
    fails.fail = True
    second = Trainer(default_root_dir=tmp_path / "b", max_epochs=1, callbacks=callbacks, **QUIET)
    with caplog.at_level("INFO"), pytest.raises(RuntimeError, match="setup boom"):
        second.fit(Exploding(channels=[4]), DigitsDataModule(image_size=8))
    assert not os.path.exists(os.path.join(first.log_dir, "green_report.md")) and report.files is None


def test_a_report_that_cannot_be_written_does_not_mask_the_users_exception(tmp_path, monkeypatch):
    report = GreenReport()
    monkeypatch.setattr(report, "write", lambda *a, **k: (_ for _ in ()).throw(ValueError("plot failed")))
    _exploding_fit(tmp_path, [EnergyMonitor(print_summary=False), report])
    assert report.files is None


def test_elapsed_time_and_start_macs_continue_across_a_resume(tmp_path):
    first = TimeLog()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit_digits(tmp_path, "csv", epochs=2, report=first, callbacks=[ckpt], enable_checkpointing=True)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]["TimeLog"]
    assert saved["version"] == 1 and saved["elapsed_s"] >= first.logged[-1]

    second = TimeLog()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=3,
        callbacks=[EnergyMonitor(print_summary=False), second],
        **QUIET,
    )
    trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(image_size=8), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert len(second.logged) == 1 and second.logged[0] > saved["elapsed_s"]
    assert load_run(trainer.log_dir).extra("model")["macs_start"] == saved["model"]["macs_start"]


@pytest.mark.slow
def test_ddp_writes_one_report_from_rank_zero(tmp_path):
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=2,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EnergyMonitor(print_summary=False), GreenReport(), DestroyProcessGroupAtExit()],
    )
    trainer.fit(DigitsCNN(channels=[4]), DigitsDataModule(image_size=8))
    run = load_run(tmp_path / "lightning_logs" / "version_0")  # the parent's trainer.log_dir moves on to version_1
    assert len(run.stage("fit")["per_rank"]) == 2
    assert (run.path / "green_report.md").is_file() and (run.path / "green_report.html").is_file()
    assert not [f for f in os.listdir(run.path) if f.endswith(".tmp")]


def test_counting_macs_leaves_each_submodule_s_train_or_eval_mode_alone(tmp_path):
    class Modes(Callback):
        seen: list = []

        def on_train_batch_start(self, trainer, pl_module, *args):
            self.seen.append(pl_module.features[0].training)

    model = DigitsCNN(channels=[4])
    model.features[0].eval()  # e.g. a frozen stem the user keeps in eval mode
    spy = Modes()
    spy.seen = []
    make_trainer(
        tmp_path, limit_train_batches=2, callbacks=[EnergyMonitor(print_summary=False), GreenReport(), spy]
    ).fit(model, DigitsDataModule(image_size=8))
    assert spy.seen == [False, False] and not model.features[0].training


def test_fast_dev_run_writes_no_report_files(tmp_path):
    # Lightning's smoke test writes no logs or checkpoints and has no log dir (reports would land in the cwd).
    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(tmp_path, fast_dev_run=True, callbacks=[monitor, GreenReport()], logger=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(batch_size=16, image_size=8))
    assert monitor.total_energy_j("fit") > 0
    assert os.listdir(tmp_path) == []
    # Lightning swaps the loggers for a DummyLogger: not a logger whose metrics cannot be read back
    assert not [w for w in caught if "write neither" in str(w.message)]


def test_a_second_fit_on_the_trainer_goes_on_with_the_time_and_a_new_trainer_starts_over(tmp_path):
    from lightning.pytorch.tuner import Tuner

    class Slow(Callback):  # each step lasts at least 50 ms: a fit's time has a known lower bound
        def on_train_batch_end(self, *args):
            time.sleep(0.05)

    monitor = EnergyMonitor(print_summary=False)
    callbacks = [Slow(), monitor, GreenReport(count_macs=False)]

    def elapsed() -> float:  # the report's figure (time-to-target is read against it)
        return monitor.report()["extra"]["model"]["elapsed_s"]

    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=callbacks)
    trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(batch_size=16, image_size=8))
    first = elapsed()
    trainer.fit_loop.max_epochs = 2
    trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(batch_size=16, image_size=8))
    assert elapsed() >= first + 3 * 0.05  # one run: the time goes on over the second fit's 3 steps
    # A new Trainer is a new run, also when Lightning's Tuner saves and restores a checkpoint before the fit.
    trainer = make_trainer(tmp_path / "two", max_epochs=1, limit_train_batches=3, callbacks=callbacks)
    model = DigitsCNN(channels=[4, 8])
    started = time.perf_counter()
    Tuner(trainer).lr_find(model, datamodule=DigitsDataModule(batch_size=16, image_size=8), num_training=3)
    trainer.fit(model, DigitsDataModule(batch_size=16, image_size=8))
    assert monitor.ledgers["fit"].steps == 3  # this run's steps only
    assert elapsed() <= time.perf_counter() - started  # this run's time only


def test_the_report_settings_are_recorded_and_reused_by_the_report_command(tmp_path, capsys):
    from lightning_green.cli import main

    report = GreenReport(metric="val_loss", target=30.0, filename="mine", html=False)
    trainer = fit_digits(tmp_path, "tb", epochs=1, report=report)
    recorded = load_run(trainer.log_dir).extra("green_report")
    assert recorded == {"metric": "val_loss", "mode": "auto", "target": 30.0, "filename": "mine", "html": False}
    before = report.files.markdown.read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", trainer.log_dir])
    assert exit_info.value.code == 0
    assert report.files.markdown.read_text().split("written", 1)[1] == before.split("written", 1)[1]
    assert "| energy to val_loss ≤ 30 |" in before and not os.path.exists(os.path.join(trainer.log_dir, "mine.html"))


class RefusesAtTrainStart(Callback):
    """A setting refused at ``on_train_start``: after Lightning restored a resumed fit's loop counters."""

    def on_train_start(self, trainer, pl_module):
        from lightning_green._internal.validation import InvalidArgumentError

        raise InvalidArgumentError("Refuses(x=1): `x` must be 2.")


@pytest.mark.parametrize("raise_at", ["train_start", "mid"])
def test_a_resumed_fit_refused_before_training_leaves_the_finished_runs_reports(tmp_path, raise_at):
    # Lightning restores the loops' batch counters before on_train_start: a resumed fit refused there looked trained,
    # and with logger=False its "interrupted" reports replaced the finished run's. A refusal mid-training still writes.
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_green._internal.validation import InvalidArgumentError

    kw = dict(default_root_dir=tmp_path, logger=False, limit_train_batches=4, limit_val_batches=0, **QUIET)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    Trainer(max_epochs=1, callbacks=[EnergyMonitor(print_summary=False), GreenReport(), ckpt], **kw).fit(BoringModel())
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*") if p.is_file()}
    assert json.loads(before["energy_report.json"])["status"] == "complete"

    class RefusesMid(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                raise InvalidArgumentError("Refuses(x=1): `x` must be 2.")

    refuse = RefusesAtTrainStart() if raise_at == "train_start" else RefusesMid()
    resumed = Trainer(max_epochs=2, callbacks=[EnergyMonitor(print_summary=False), GreenReport(), refuse], **kw)
    with pytest.raises(InvalidArgumentError):
        resumed.fit(BoringModel(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    after = {p.name: p.read_bytes() for p in tmp_path.glob("*") if p.is_file()}
    if raise_at == "train_start":
        assert after == before
    else:
        assert json.loads(after["energy_report.json"])["status"].startswith("interrupted: InvalidArgumentError")


@pytest.mark.parametrize("fn", ["validate", "test"])
def test_a_stand_alone_stage_refused_in_setup_writes_no_report(tmp_path, fn):
    # It wrote an energy report with no stage in it and the status "complete".
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_green._internal.validation import InvalidArgumentError

    class RefusesInSetup(Callback):
        def setup(self, trainer, pl_module, stage):
            raise InvalidArgumentError("Refuses(x=1): `x` must be 2.")

    trainer = Trainer(
        default_root_dir=tmp_path,
        logger=False,
        limit_val_batches=2,
        limit_test_batches=2,
        callbacks=[EnergyMonitor(print_summary=False), RefusesInSetup()],
        **QUIET,
    )
    with pytest.raises(InvalidArgumentError):
        getattr(trainer, fn)(BoringModel())
    assert not list(tmp_path.rglob("energy_report.json"))
