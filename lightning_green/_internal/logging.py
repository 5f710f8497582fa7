"""Log to ``trainer.loggers`` at Lightning's own step and decision, as ``DeviceStatsMonitor`` does.

Lightning writes a training step's metrics at ``fit_loop.epoch_loop._batches_that_stepped`` (one per batch that
stepped, whatever the number of optimizers or the gradient accumulation) and decides whether to write them with
``trainer._logger_connector.should_update_logs`` (which honours ``log_every_n_steps``, including 0 = never). A
callback that writes straight to the loggers (``pl_module.log`` is not allowed in every hook, and costs ~0.5 ms a
call) must use the same two, or its curves do not line up with the loss; Lightning skips the micro-batches that
only accumulate gradients with ``fit_loop._should_accumulate()``. All three are private: this module is the one
place that reads them (checked on lightning 2.6.6; Lightning's own ``DeviceStatsMonitor`` and
``LearningRateMonitor`` read the first two the same way). ``tests/_internal/test_logging.py`` fails if they move.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl

__all__ = ["epoch_log_step", "log_metrics", "log_step", "should_log_batch", "should_log_step"]


def log_step(trainer: pl.Trainer) -> int:
    """The step Lightning writes the current training batch's metrics at (from batch-level and validation hooks).

    That is the number of batches that stepped before this one (the counter moves after ``on_train_batch_end``
    and after the validation a batch triggers), so it does not depend on the number of optimizers.
    """
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def epoch_log_step(trainer: pl.Trainer) -> int:
    """The step Lightning writes epoch-end (and fit-end) metrics at: that of the epoch's last batch.

    Lightning lowers ``_batches_that_stepped`` by one around its own epoch-end write (``_FitLoop.on_advance_end``);
    from ``on_train_epoch_end`` and later hooks the counter is already past the last batch.
    """
    return max(log_step(trainer) - 1, 0)


def should_log_batch(trainer: pl.Trainer) -> bool:
    """Whether Lightning logs the current training batch (from ``on_train_batch_start`` or later in the batch).

    Lightning's own decision, as ``DeviceStatsMonitor`` takes it: every ``log_every_n_steps`` batches that stepped,
    never with ``log_every_n_steps=0``. It does not look at gradient accumulation: see :func:`should_log_step`.
    """
    return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)


def should_log_step(trainer: pl.Trainer, every_n_steps: int | None = None) -> bool:
    """Whether this training batch's metrics are written, as Lightning decides for ``self.log(on_step=True)``.

    Call it from ``on_train_batch_end``. Micro-batches that only accumulate gradients are never logged (automatic
    optimization), and ``log_every_n_steps=0`` logs nothing. ``every_n_steps`` overrides the Trainer's interval
    (counted, like Lightning's, in batches that stepped).
    """
    if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
        return False
    if every_n_steps is None:
        return should_log_batch(trainer)
    if every_n_steps <= 0:
        return False
    return (log_step(trainer) + 1) % every_n_steps == 0 or trainer.should_stop


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Write ``metrics`` to every logger of ``trainer`` at ``step`` (loggers are rank-zero-only themselves)."""
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)
