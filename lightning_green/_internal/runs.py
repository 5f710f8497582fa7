"""What a "run" is for the callbacks: several fits on one Trainer are one run, a new Trainer starts another. Not public.

A callback reused across Trainers (the real run after a ``fast_dev_run`` smoke test, folds of a cross-validation)
starts over in each; a checkpoint restored into the new Trainer then brings its own state (Lightning restores after
``setup``). EnergyMonitor documents the rule; every callback with progress follows it.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["PicklesWithoutTrainer", "continue_run", "readable_log_dirs", "refused_before_start", "run_dir"]

# Lightning's loggers whose log_dir is the run's own folder (Trainer.log_dir takes it), in either package.
_OWN_FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")


def continue_run(last: weakref.ref[Any] | None, trainer: Any) -> tuple[bool, weakref.ref[Any]]:
    """For a fit's ``setup``: whether ``trainer`` is the Trainer of the last fit (``last``), and a reference to it.

    Example:
        >>> class T: ...
        >>> a, b = T(), T()
        >>> same, ref = continue_run(None, a)
        >>> same, continue_run(ref, a)[0], continue_run(ref, b)[0]
        (False, True, False)
    """
    return last is not None and last() is trainer, weakref.ref(trainer)


class PicklesWithoutTrainer:
    """Mixin: pickles without its weak references to a Trainer (named in ``_trainer_refs``).

    ``ddp_spawn`` pickles the callbacks into its workers, and a weak reference does not pickle; a callback reused
    after an earlier fit holds one. In the worker it reads as "no earlier fit": the spawned fit is a new run.
    """

    _trainer_refs: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._trainer_refs:
            state[name] = None
        return state


def _logs_in_own_folder(logger: Any) -> bool:
    """Whether ``logger`` is (a subclass of) Lightning's TensorBoardLogger or CSVLogger, of either package."""
    return any(
        c.__name__ in _OWN_FOLDER_LOGGERS and c.__module__.split(".")[0] in ("lightning", "pytorch_lightning")
        for c in type(logger).__mro__
    )


def run_dir(trainer: Any) -> str:
    """The folder of this run's files (energy report, green report, the CLI's ``config.yaml``). A collective under DDP.

    ``trainer.log_dir`` where that is the run's own folder: with no logger (``default_root_dir``) or with a
    TensorBoard/CSV logger first (``lightning_logs/version_0``). Any other first logger (W&B, MLflow, ...) gives
    ``trainer.log_dir`` as its ``save_dir``, which every run shares (MLflow's store root, W&B's ``.``): there the
    folder is the one Lightning's ``ModelCheckpoint`` puts that run's ``checkpoints/`` in,
    ``<save_dir or default_root_dir>/<name>/<version>`` (W&B: ``<project>/<run id>``; MLflow: the run's own folder).
    So is it for a TensorBoardLogger with a ``sub_dir``, whose ``log_dir`` (``version_0/<sub_dir>``) holds only its
    event files: the run's files go beside ``checkpoints/`` in ``version_0``, where ``export`` finds them.
    """
    loggers = list(getattr(trainer, "loggers", None) or [])
    if not loggers or (_logs_in_own_folder(loggers[0]) and not isinstance(getattr(loggers[0], "sub_dir", None), str)):
        return trainer.log_dir or trainer.default_root_dir
    logger = loggers[0]
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return trainer.strategy.broadcast(os.path.join(save_dir, str(logger.name), version))


def readable_log_dirs(trainer: Any) -> list[str]:
    """The log dirs of the Trainer's TensorBoard and CSV loggers, whose scalars a report can read back (rank 0)."""
    out = []
    for logger in getattr(trainer, "loggers", None) or []:
        if _logs_in_own_folder(logger) and logger.log_dir is not None and logger.log_dir not in out:
            out.append(os.fspath(logger.log_dir))
    return out


def refused_before_start(exception: BaseException, began: bool) -> bool:
    """Whether a stage ended on a setting lightning-green refused before any of its work began.

    ``began``: whether the calling callback saw the stage's work begin: a training batch of a fit
    (``on_train_batch_start``; not Lightning's batch counters, which a resumed fit restores from its checkpoint before
    ``on_train_start``), or a stand-alone validate/test/predict open. Such a stage ran nothing: a run folder with an
    "interrupted" energy and green report would be noise (the CLI says the one-line error; the next run would get the
    next version number, ``lightning-green report`` would list it, and with ``logger=False`` a resumed fit would
    overwrite the finished run's report). Other failures keep their reports: what ran is not lost.

    Example:
        >>> from lightning_green._internal.validation import InvalidArgumentError
        >>> refused_before_start(InvalidArgumentError("x"), began=False), refused_before_start(ValueError(), False)
        (True, False)
    """
    from lightning_green._internal.validation import InvalidArgumentError, InvalidArgumentTypeError

    return not began and isinstance(exception, (InvalidArgumentError, InvalidArgumentTypeError))
