"""Short real runs for the report tests (digits demo, 8×8 images, a few batches)."""

from __future__ import annotations

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_green import EnergyMonitor, GreenReport
from lightning_green.demos import DigitsCNN, DigitsDataModule
from tests.helpers import QUIET


def fit_digits(root, logger: str = "tb", epochs: int = 3, report: GreenReport | None = None, callbacks=(), **kwargs):
    """Fit DigitsCNN with EnergyMonitor + GreenReport; returns the trainer."""
    seed_everything(0)
    loggers = {"tb": TensorBoardLogger(root), "csv": CSVLogger(root)}
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        limit_val_batches=3,
        log_every_n_steps=2,
        logger=loggers[logger],
        callbacks=[EnergyMonitor(print_summary=False, min_window_s=0.0), report or GreenReport(), *callbacks],
        **{"limit_train_batches": 4, **QUIET, **kwargs},
    )
    trainer.fit(DigitsCNN(channels=[4, 8], lr=1e-2), DigitsDataModule(image_size=8, batch_size=32))
    return trainer
