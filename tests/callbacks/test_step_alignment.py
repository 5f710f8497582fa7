"""Issue 11 items 1-2: every curve of ours lines up with the loss, in TensorBoard and CSV, as Lightning decides."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import lightning_green.callbacks.energy_monitor as energy_monitor_module
from lightning_green import AMPScheduler, EnergyMonitor
from lightning_green.report.scalars import find_scalar_files, read_csv, read_tensorboard
from tests.helpers import make_trainer


class LossModel(BoringModel):
    """BoringModel logging ``train_loss`` every step, as a user's module does."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"], on_step=True, on_epoch=False)
        return out


class TwoOptimizers(BoringModel):
    """Manual optimization with two optimizers (a GAN's shape): ``global_step`` moves 2 per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.other = torch.nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        g_loss = self.layer(batch).pow(2).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        d_loss = self.other(batch).pow(2).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log("train_loss", g_loss.detach(), on_step=True, on_epoch=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.layer.parameters(), lr=0.01), torch.optim.SGD(self.other.parameters(), lr=0.01)


def _fit(tmp_path, model, **trainer_kwargs):
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False, report_filename=None)
    amp = AMPScheduler(schedule={0: "32-true"})  # stays fp32: logs only at Lightning's logging steps (+ step 0)
    trainer = make_trainer(tmp_path, logger=loggers, callbacks=[monitor, amp], **trainer_kwargs)
    trainer.fit(model)
    for lg in loggers:
        lg.save()
    events, _ = find_scalar_files(loggers[0].log_dir)
    _, csv_path = find_scalar_files(loggers[1].log_dir)
    return trainer, read_tensorboard(events), read_csv(csv_path)


def _steps(scalars, tag):
    return sorted({p.step for p in scalars.series(tag)})


@pytest.mark.parametrize(
    ("model", "kwargs", "loss_steps"),
    [
        # 8 batches, log every 4: Lightning logs the loss at 3 and 7
        (LossModel, {"limit_train_batches": 8, "log_every_n_steps": 4}, [3, 7]),
        # two optimizers: global_step moves 2 a batch; the loss still sits at 3, 7 (was: energy at 7, 15)
        (TwoOptimizers, {"limit_train_batches": 8, "log_every_n_steps": 4}, [3, 7]),
        # 16 micro-batches, accumulate 2: 8 optimizer steps, logged at 1, 3, 5, 7
        (LossModel, {"limit_train_batches": 16, "accumulate_grad_batches": 2, "log_every_n_steps": 2}, [1, 3, 5, 7]),
    ],
    ids=["automatic", "manual-two-optimizers", "grad-accumulation"],
)
def test_our_curves_line_up_with_the_loss(tmp_path, model, kwargs, loss_steps):
    trainer, tb, csv = _fit(tmp_path, model(), **kwargs)
    for scalars in (tb, csv):
        assert _steps(scalars, "train_loss") == loss_steps
        for tag in ("energy/step_J", "power/avg_W", "energy/J_per_sample"):
            assert _steps(scalars, tag) == loss_steps, (scalars.source, tag)
        # the precision mode is also logged at its first batch (step 0), then with the loss
        assert _steps(scalars, "precision/mode") == sorted({0, *loss_steps}), scalars.source
        # epoch-end figures at the epoch's last logged step, where Lightning puts its epoch-end metrics
        assert _steps(scalars, "energy/epoch_J") == [loss_steps[-1]]
    assert trainer.log_every_n_steps == kwargs["log_every_n_steps"]


def test_log_every_n_steps_zero_logs_no_step_and_runs_no_per_step_collective(tmp_path, monkeypatch):
    gathers = []
    real = energy_monitor_module.gather_rows
    monkeypatch.setattr(energy_monitor_module, "gather_rows", lambda *a, **k: gathers.append(1) or real(*a, **k))
    monkeypatch.setattr(energy_monitor_module, "agree", lambda *a, **k: pytest.fail("per-step collective"))
    trainer, tb, csv = _fit(tmp_path, LossModel(), max_epochs=2, limit_train_batches=8, log_every_n_steps=0)
    for scalars in (tb, csv):
        assert "train_loss" not in scalars  # Lightning logs nothing per step
        assert "energy/step_J" not in scalars and "precision/mode" not in scalars
        assert _steps(scalars, "energy/epoch_J") == [7, 15]  # epoch ends still are
    assert len(gathers) == 2 + 1  # one read per epoch end and one at fit end, none per batch


def test_an_explicit_interval_counts_batches_that_stepped(tmp_path):
    monitor = EnergyMonitor(min_window_s=0.0, print_summary=False, report_filename=None, log_every_n_steps=3)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, logger=logger, callbacks=[monitor], limit_train_batches=12, log_every_n_steps=50)
    trainer.fit(TwoOptimizers())
    logger.save()
    assert _steps(read_csv(find_scalar_files(logger.log_dir)[1]), "energy/step_J") == [2, 5, 8, 11]
    assert trainer.global_step == 24


def test_power_limit_tuner_logs_on_lightnings_step_with_two_optimizers(tmp_path):
    from lightning_green import PowerLimitTuner
    from lightning_green.testing import SimulatedGPUWorkload, simulated_gpus

    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240):
        tuner = PowerLimitTuner(warmup_steps=1, profile_steps=2, pl_step_w=50, wait_steps=0)
        work = SimulatedGPUWorkload(step_work_s=0.002, gpu_kwargs={"curve": "v100-resnet50"})
        logger = CSVLogger(tmp_path, name="csv")
        trainer = make_trainer(
            tmp_path, logger=logger, callbacks=[work, tuner], limit_train_batches=12, log_every_n_steps=4
        )
        trainer.fit(TwoOptimizers())
    logger.save()
    csv = read_csv(find_scalar_files(logger.log_dir)[1])
    loss = _steps(csv, "train_loss")
    assert loss == [3, 7, 11] and trainer.global_step == 24
    state = _steps(csv, "power/tuner_state")
    # was: global_step (0..24, twice the loss's axis); now every log sits on a batch's step, with the loss's among them
    assert set(loss) <= set(state) and max(state) <= 11, state
