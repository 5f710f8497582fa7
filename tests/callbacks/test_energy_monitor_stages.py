"""EnergyMonitor across Trainer runs: evaluating a checkpoint, stand-alone validation between fits, mid-epoch resume."""

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_green import EnergyBudget, EnergyMonitor
from lightning_green.energy import read_report
from tests.helpers import SteadyModel, make_trainer


def _counts(monitor: EnergyMonitor, stage: str) -> tuple[float, int, int]:
    ledger = monitor.ledgers[stage]
    return ledger.total_j, ledger.steps, ledger.samples


@pytest.mark.parametrize("run", ["test", "validate", "predict"])
def test_evaluating_a_checkpoint_leaves_the_fit_totals_and_report_as_they_are(tmp_path, run):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)  # one per epoch
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    trainer = make_trainer(
        tmp_path,
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        limit_test_batches=2,
        limit_predict_batches=2,
        callbacks=[monitor, ckpt],
    )
    model = SteadyModel(0.002)
    trainer.fit(model)
    fit_before = _counts(monitor, "fit")
    assert fit_before[1] == 12 and len(monitor.ledgers["fit"].epochs_j) == 3
    first_epoch = sorted((tmp_path / "ckpt").iterdir())[0]
    assert "epoch=0" in first_epoch.name
    getattr(trainer, run)(model, ckpt_path=first_epoch, **({} if run == "predict" else {"verbose": False}))
    # Lightning restored the epoch-0 callback state for this run; the fit's figures must not rewind to it.
    assert _counts(monitor, "fit") == fit_before
    report = read_report(tmp_path / "energy_report.json")
    assert report["stages"]["fit"]["steps"] == 12
    assert report["stages"]["fit"]["energy_j"]["total"] == pytest.approx(fit_before[0])
    assert report["stages"][run]["steps"] == 2  # its own batches only
    # The same monitor in a new Trainer (no ckpt_path) starts from zero, not from the checkpoint's totals.
    make_trainer(tmp_path / "again", max_steps=2, callbacks=[monitor]).fit(BoringModel())
    assert monitor.ledgers["fit"].steps == 2


def test_a_stand_alone_validate_between_two_fits_keeps_the_fits_validation(tmp_path):
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    trainer = make_trainer(
        tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0, callbacks=[monitor]
    )
    model = SteadyModel(0.002)
    trainer.fit(model)
    in_fit_j, in_fit_batches, _ = _counts(monitor, "validate")
    assert in_fit_batches == 4  # 2 epochs x 2 batches
    trainer.test(model, verbose=False)  # another stage in between changes nothing
    trainer.validate(model, verbose=False)
    standalone_j, standalone_batches, _ = _counts(monitor, "validate")
    assert standalone_batches == 2  # its own run, from zero
    assert read_report(tmp_path / "energy_report.json")["stages"]["validate"]["steps"] == 2
    trainer.fit_loop.max_epochs = 3
    trainer.fit(model)  # continues the run: the fit's validation goes on from its own 4 batches
    total_j, batches, _ = _counts(monitor, "validate")
    assert batches == 6
    assert total_j > in_fit_j
    assert monitor.ledgers["fit"].steps == 9


def test_a_mid_epoch_checkpoint_carries_the_steps_and_samples_of_its_unflushed_window(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    first = EnergyMonitor(print_summary=False)  # logs every 50 batches: nothing flushed before the step-3 checkpoint
    make_trainer(tmp_path, max_steps=3, limit_train_batches=10, callbacks=[first, ckpt]).fit(BoringModel())
    path = next((tmp_path / "ckpt").iterdir())
    second = EnergyMonitor(print_summary=False)
    make_trainer(tmp_path / "resumed", max_steps=8, limit_train_batches=10, callbacks=[second]).fit(
        BoringModel(), ckpt_path=path
    )
    reference = EnergyMonitor(print_summary=False)
    make_trainer(tmp_path / "ref", max_steps=8, limit_train_batches=10, callbacks=[reference]).fit(BoringModel())
    assert second.ledgers["fit"].steps == reference.ledgers["fit"].steps == 8
    assert second.ledgers["fit"].samples == reference.ledgers["fit"].samples == 8  # BoringModel: one sample a batch


def test_budget_says_that_min_epochs_or_min_steps_override_its_stop(tmp_path):
    monitor = EnergyMonitor(print_summary=False)
    budget = EnergyBudget(max_energy=1e-9, unit="J")
    trainer = make_trainer(tmp_path, max_epochs=2, min_epochs=2, limit_train_batches=2, callbacks=[monitor, budget])
    with pytest.warns(UserWarning, match=r"Trainer\(min_epochs=2\) keeps Lightning training"):
        trainer.fit(BoringModel())
    assert budget.stopped_reason is not None and trainer.current_epoch == 2  # Lightning trained on, as warned


def test_a_stand_alone_validate_after_a_fit_that_did_not_validate_stays_out_of_the_next_fit(tmp_path):
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False)
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        check_val_every_n_epoch=2,  # no validation in the first fit
        num_sanity_val_steps=0,
        callbacks=[monitor],
    )
    model = SteadyModel(0.002)
    trainer.fit(model)
    assert monitor.ledgers["validate"].steps == 0
    trainer.validate(model, verbose=False)
    assert monitor.ledgers["validate"].steps == 2
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model)  # validates once (epoch 1): its own 2 batches, not the stand-alone run's too
    assert monitor.ledgers["validate"].steps == 2


def test_a_new_monitor_testing_into_the_fits_log_dir_adds_its_stage_to_the_fits_report(tmp_path):
    # `lightning-green test --ckpt_path ...` with the fit's logger: a new process, a new monitor, the same log dir. The
    # report file held the test's figures alone: the fit's were gone.
    from lightning.pytorch.loggers import CSVLogger

    make_trainer(
        tmp_path, max_steps=4, logger=CSVLogger(tmp_path, version="x"), callbacks=[EnergyMonitor(print_summary=False)]
    ).fit(BoringModel())
    path = tmp_path / "lightning_logs" / "x" / "energy_report.json"
    fit = read_report(path)["stages"]["fit"]
    trainer = make_trainer(
        tmp_path, logger=CSVLogger(tmp_path, version="x"), callbacks=[EnergyMonitor(print_summary=False)]
    )
    trainer.test(BoringModel())
    stages = read_report(path)["stages"]
    assert {"fit", "test"} <= set(stages) and stages["fit"] == fit and stages["test"]["steps"] > 0


def test_the_merged_report_keeps_the_fits_status_the_later_stages_own_and_both_runs_sections(tmp_path):
    import json

    from lightning_green.callbacks.energy_monitor import _beside_the_fit

    path = tmp_path / "energy_report.json"
    path.write_text(json.dumps({"status": "complete", "stages": {"fit": {"steps": 4}}, "extra": {"data": {"a": 1}}}))
    failed = "interrupted: KeyboardInterrupt"
    later = {"status": failed, "stages": {"test": {"steps": 2, "status": failed}}, "extra": {"b": {"c": 2}}}
    merged = _beside_the_fit(str(path), later)
    assert merged["status"] == "complete" and set(merged["stages"]) == {"fit", "test"}
    assert merged["stages"]["test"]["status"] == failed and "status" not in merged["stages"]["fit"]
    assert merged["extra"] == {"data": {"a": 1}, "b": {"c": 2}}


class FailsInValidation(BoringModel):
    fail = False

    def validation_step(self, batch, batch_idx):
        if self.fail:
            raise RuntimeError("validation boom")
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("same_monitor", [True, False])
def test_a_failed_stand_alone_run_after_the_fit_leaves_the_fit_complete(tmp_path, same_monitor):
    # A validate() that failed after a complete fit marked the whole report (the fit's) "interrupted".
    monitor = EnergyMonitor(print_summary=False)
    logger = CSVLogger(tmp_path, version="x")
    trainer = make_trainer(tmp_path, logger=logger, callbacks=[monitor], limit_train_batches=2, limit_val_batches=2)
    model = FailsInValidation()
    trainer.fit(model)
    path = tmp_path / "lightning_logs" / "x" / "energy_report.json"
    fit = read_report(path)["stages"]["fit"]
    model.fail = True
    if not same_monitor:  # `lightning-green validate` into the fit's folder: a new monitor
        logger = CSVLogger(tmp_path, version="x")
        monitor = EnergyMonitor(print_summary=False)
        trainer = make_trainer(tmp_path, logger=logger, callbacks=[monitor], limit_val_batches=2)
    with pytest.raises(RuntimeError, match="validation boom"):
        trainer.validate(model, verbose=False)
    report = read_report(path)
    assert report["status"] == "complete" and report["stages"]["fit"]["steps"] == fit["steps"] == 2
    assert report["stages"]["validate"]["status"] == "interrupted: RuntimeError"
    from lightning_green.report import load_run, write_report

    text = write_report(load_run(path.parent), html=False).markdown.read_text()
    assert "The validate run did not finish normally (interrupted: RuntimeError)" in text
    assert "The run did not finish normally" not in text


class _ValLossModel(SteadyModel):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val_loss", out["x"])
        return out


def test_a_mid_epoch_validation_logs_the_fit_s_running_total_at_its_step(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from lightning_green.report import load_run

    trainer = make_trainer(
        tmp_path,
        logger=CSVLogger(tmp_path),
        max_epochs=2,
        limit_train_batches=4,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=50,  # no step window logged: the validations alone must carry the totals
        callbacks=[EnergyMonitor(min_window_s=0.0, print_summary=False)],
    )
    trainer.fit(_ValLossModel(0.002))
    run = load_run(trainer.log_dir)
    curve = run.curve("val_loss")
    assert [cp.step for cp in curve] == [1, 3, 5, 7]
    energies = [cp.energy_j for cp in curve]
    assert all(e is not None for e in energies) and energies == sorted(set(energies))  # each its own, rising
    ends = [e.cumulative_j for e in run.epoch_energy()]
    assert energies[1] == ends[0] and energies[3] == ends[1] and energies[0] < ends[0] < energies[2] < ends[1]


class FailsInTraining(FailsInValidation):
    def training_step(self, batch, batch_idx):
        if self.global_step == 1:
            raise RuntimeError("training boom")
        return super().training_step(batch, batch_idx)


def test_a_failed_fit_stays_failed_through_later_stand_alone_runs(tmp_path):
    # A test() that ran fine after a failed fit rewrote the report as "complete" (and a failing one lost the fit's own
    # stage status); a test whose loader failed before it began marked the earlier test's figures as interrupted.
    monitor = EnergyMonitor(print_summary=False)
    trainer = make_trainer(
        tmp_path,
        logger=CSVLogger(tmp_path, version="x"),
        callbacks=[monitor],
        limit_train_batches=4,
        limit_test_batches=2,
        limit_val_batches=2,
    )
    model = FailsInTraining()
    with pytest.raises(RuntimeError, match="training boom"):
        trainer.fit(model)
    path = tmp_path / "lightning_logs" / "x" / "energy_report.json"
    trainer.test(model, verbose=False)
    report = read_report(path)
    assert report["status"] == "interrupted: RuntimeError" == report["stages"]["fit"]["status"]
    assert "status" not in report["stages"]["test"] and report["stages"]["test"]["steps"] == 2

    class NoLoader(BoringModel):
        def test_dataloader(self):
            raise OSError("no data")

    with pytest.raises(OSError, match="no data"):
        trainer.test(NoLoader(), verbose=False)
    report = read_report(path)
    assert "status" not in report["stages"]["test"] and report["stages"]["test"]["steps"] == 2
    assert report["status"] == "interrupted: RuntimeError"
    from lightning_green.report import load_run, write_report

    text = write_report(load_run(path.parent), html=False).markdown.read_text()
    assert "The run did not finish normally (interrupted: RuntimeError)" in text and "The test run" not in text
    with pytest.raises(RuntimeError, match="validation boom"):  # the same exception type as the fit's
        model.fail = True
        trainer.validate(model, verbose=False)
    text = write_report(load_run(path.parent), html=False).markdown.read_text()
    assert "The validate run did not finish normally (interrupted: RuntimeError)" in text
