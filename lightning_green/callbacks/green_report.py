"""GreenReport: at the end of fit, write the green report (Markdown + HTML with PNG plots) into the log dir."""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green._internal.runs import (
    PicklesWithoutTrainer,
    continue_run,
    readable_log_dirs,
    refused_before_start,
    run_dir,
)
from lightning_green._internal.tokens import tokens_per_sample
from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_filename,
    check_optional_number,
    check_state_version,
    fail,
)
from lightning_green.events import add_report_section

__all__ = ["GreenReport"]

log = logging.getLogger(__name__)

_MODES = ("auto", "max", "min")


class GreenReport(PicklesWithoutTrainer, Callback):
    """Write the green report of a fit into its log dir: Markdown, a standalone HTML page and PNG plots.

    Files: ``green_report.md``, ``green_report.html`` and the plots in ``green_report_files/``.

    The report is built from the run's files only — the :class:`~lightning_green.EnergyMonitor`'s
    ``energy_report.json`` and the first logger's scalars (TensorBoard event files or CSVLogger's ``metrics.csv``) —
    exactly as ``lightning-green report RUN_DIR`` regenerates it later (see :mod:`lightning_green.report`). Plots:
    energy per epoch by component, average power, the validation metric against cumulative energy, MACs per
    pruning step, precision over training, the GPU power limit — each only when the run logged its data. Tables:
    totals, measured vs estimated, CO₂ with intensity and PUE, the pruning ledger, precision fallbacks, the power
    profile.

    What the callback adds to the run so the report can say it: its settings (``metric``, ``mode``, ``target``,
    ``filename``, ``html``, in the energy report's ``green_report`` section, which ``lightning-green report`` reuses
    unless told otherwise), ``time/elapsed_s`` (seconds since fit start,
    logged with each validation's metrics, so time-to-target is exact) and a ``model`` section in the energy report
    (MACs and parameters at the start and end of fit, counted by torch-pruning on ``example_input_array`` as
    :class:`~lightning_green.StructuredPruning` counts ``pruning/macs``; a module without one is counted on its
    first training batch — its first element when ``forward`` takes that, else the batch — and this is said once).
    When the example is token ids (an integer ``(batch, time)`` tensor or a dict with ``input_ids``), the section also
    records the tokens per sample and the report gives MACs **per token**.

    The report is written once fit has finished (in ``teardown``, after every callback's ``on_fit_end`` — the
    EnergyMonitor's report is on disk then — and after the loggers are flushed), on global rank 0 only, atomically.
    A fit that ended in an exception (or Ctrl-C) gets the report of what ran, marked unfinished, from the
    EnergyMonitor's interrupted report; one whose setting a lightning-green callback refused before its first training
    batch trained nothing and gets none.

    Args:
        metric: Validation metric to follow; ``None`` picks the first logged of ``val_acc``, ``val_loss``,
            ``val_ppl``.
        mode: Is higher better? ``"max"``, ``"min"``, or ``"auto"`` from the metric's name.
        target: Value of ``metric`` for energy-to-target and time-to-target; ``None`` leaves them out.
        filename: Base name of the report files (no directory part).
        html: Also write the standalone HTML page.
        count_macs: Record MACs/params at fit start and end (one forward pass of the example input each).

    Raises:
        ValueError: An argument is out of range; in ``setup``: no EnergyMonitor writing a report in the Trainer.
        TypeError: An argument has the wrong type.

    Example:
        >>> import os, tempfile
        >>> from lightning.pytorch import Trainer
        >>> from lightning_green import EnergyMonitor
        >>> from lightning_green.demos import DigitsCNN, DigitsDataModule
        >>> trainer = Trainer(default_root_dir=tempfile.mkdtemp(), max_epochs=2, limit_train_batches=3,
        ...                   limit_val_batches=2, enable_progress_bar=False, enable_model_summary=False,
        ...                   callbacks=[EnergyMonitor(print_summary=False), GreenReport()])
        >>> trainer.fit(DigitsCNN(channels=[4, 8]), DigitsDataModule(image_size=8))
        >>> sorted(f for f in os.listdir(trainer.log_dir) if f.startswith("green_report"))
        ['green_report.html', 'green_report.md', 'green_report_files']
    """

    _trainer_refs = ("_fit_trainer",)

    def __init__(
        self,
        metric: str | None = None,
        mode: Literal["auto", "max", "min"] = "auto",
        target: float | None = None,
        filename: str = "green_report",
        html: bool = True,
        count_macs: bool = True,
    ) -> None:
        name = type(self).__name__
        if metric is not None and (not isinstance(metric, str) or not metric):
            fail(name, "metric", metric, "None or the name of a logged validation metric", TypeError)
        check_choice(name, "mode", mode, _MODES)
        check_optional_number(name, "target", target)
        check_filename(name, "filename", filename, "a plain file name without extension or directory part")
        check_bool(name, "html", html)
        check_bool(name, "count_macs", count_macs)
        self.metric = metric
        self.mode = mode
        self.target = target
        self.filename = filename
        self.html = html
        self.count_macs = count_macs

        #: The files of the last report written (``None`` before).
        self.files: Any = None
        self.elapsed_s = 0.0
        self._t0: float | None = None
        self._fit_trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer of the last fit (kept after it)
        self._setup_stage: str | None = None
        self._fit_trained = False
        self._log_dir: str | None = None
        self._report_name = "energy_report.json"
        self._model: dict[str, Any] = {}
        self._fit_done = False
        self._example: Any = None  # the first training batch's input, for a module without example_input_array
        self._told = False

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._setup_stage = stage  # before Lightning restores a checkpoint's callback state (load_state_dict)
        if stage != "fit":
            return
        self._fit_trained = False  # a training batch of this fit started (see refused_before_start)
        monitors = [cb for cb in trainer.callbacks if getattr(cb, "add_report_section", None) is not None]  # type: ignore[attr-defined]
        named = [m for m in monitors if getattr(m, "report_filename", None)]
        if not named:
            raise InvalidArgumentError(
                f"{type(self).__name__}: the report is built from the EnergyMonitor's energy report, and the Trainer "
                "has no EnergyMonitor writing one; add `lightning_green.EnergyMonitor()` to the callbacks "
                "(with report_filename set)."
            )
        self._report_name = named[0].report_filename
        # The run's folder (the EnergyMonitor's): a collective under DDP, resolved here, where every rank runs.
        self._log_dir = run_dir(trainer)
        if trainer.loggers and not trainer.fast_dev_run and not readable_log_dirs(trainer):  # fast_dev_run: DummyLogger
            names = ", ".join(type(lg).__name__ for lg in trainer.loggers)
            rank_zero_warn(
                f"{type(self).__name__}: the report reads the logged metrics back from TensorBoard or CSV logs, and "
                f"this Trainer's loggers ({names}) write neither: it will have the energy tables but no metric curves "
                "or energy-to-target. Add `lightning.pytorch.loggers.CSVLogger(...)` (or TensorBoardLogger) beside "
                "them."
            )
        self._fit_done = False
        # Several fits on one Trainer are one run (the time goes on, the model section keeps the first fit's start);
        # a new Trainer is a new run, also for a checkpoint Lightning's Tuner saves before the fit starts.
        same_run, self._fit_trainer = continue_run(self._fit_trainer, trainer)
        if not same_run:
            self.elapsed_s, self._t0, self._model = 0.0, None, {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._example = None
        # Recorded now, not only at the end: the energy report of a fit that fails (written by the monitor's
        # on_exception) then has them too, and `lightning-green report` rebuilds this report as it was written.
        add_report_section(trainer, "green_report", self.settings())
        if self.count_macs and not self._model and pl_module.example_input_array is not None:
            self._count_start(pl_module, pl_module.example_input_array)
        elif self._model:  # a resumed or continued run's start figures
            add_report_section(trainer, "model", dict(self._model))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._fit_trained = True
        if not self.count_macs or self._example is not None or pl_module.example_input_array is not None:
            return
        # No example_input_array: count on the first training batch (its first element when forward takes that).
        from lightning_green.pruning.verify import probe_from_batch

        try:
            probe, what = probe_from_batch(pl_module, batch)
        except ValueError as err:
            self._example = False  # tried; the report goes without MACs
            rank_zero_info(
                f"{type(self).__name__}: no MACs in the report: {type(pl_module).__name__} has no "
                f"`example_input_array` and does not take its first training batch ({err}). Set "
                "`example_input_array` to count them, or GreenReport(count_macs=False) to say you don't want them."
            )
            return
        self._example = probe.example
        if not self._told:
            self._told = True
            rank_zero_info(
                f"{type(self).__name__}: {type(pl_module).__name__} has no `example_input_array`; counting MACs on the "
                f"first training batch ({what})."
            )
        if not self._model:
            self._count_start(pl_module, self._example)

    def _count_start(self, pl_module: pl.LightningModule, example: Any) -> None:
        macs, params = _count(pl_module, example)
        self._model = {"macs_start": macs, "params_start": params}
        tokens = tokens_per_sample(example)
        if tokens is not None:  # a language model: the report shows MACs per token
            self._model["tokens_per_sample"] = tokens
        add_report_section(pl_module.trainer, "model", dict(self._model))  # completed at the fit's end

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._t0 is None or trainer.state.fn != "fit":
            return
        # Logged with the validation metrics (same logger call), so the report pairs them exactly. sync_dist: the
        # ranks' clocks agree to a few ms; the mean is one figure for all, and Lightning does not warn under DDP.
        pl_module.log("time/elapsed_s", self._elapsed(), on_step=False, on_epoch=True, sync_dist=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before on_fit_end, where the EnergyMonitor writes its report with this section in it.
        section = dict(self._model)
        if self.count_macs:
            macs, params = _count(pl_module, None if self._example is False else self._example)
            section.update({"macs": macs, "params": params})
        section["elapsed_s"] = self._elapsed()
        add_report_section(trainer, "model", section)
        # The report's own settings, so that `lightning-green report` regenerates this report as it was written.
        add_report_section(trainer, "green_report", self.settings())

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_done = True
        self._stop_clock()

    def _stop_clock(self) -> None:
        """Fold this fit's time into ``elapsed_s``: a next fit on the Trainer goes on from there."""
        self.elapsed_s, self._t0 = self._elapsed(), None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._setup_stage = None
        if stage != "fit" or not self._fit_done:
            return
        self._fit_done = False
        if trainer.global_rank != 0:
            return
        if trainer.fast_dev_run:  # Lightning's smoke test writes no logs or checkpoints: no report either
            rank_zero_info("GreenReport: fast_dev_run: no report written.")
            return
        for lg in trainer.loggers:
            _flush(lg)
        self.write(self._log_dir or trainer.default_root_dir)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._fit_done = False
        self._stop_clock()
        # The report of what ran, marked unfinished, from the EnergyMonitor's interrupted report. Nothing here may
        # mask the user's exception: failures are logged at debug level.
        setup_for = self._fit_trainer() if self._fit_trainer is not None else None
        if self._setup_stage != "fit" or setup_for is not trainer or trainer.global_rank != 0 or trainer.fast_dev_run:
            return  # failed before this callback's fit setup, not a fit, another rank, or a smoke test
        if refused_before_start(exception, self._fit_trained):  # nothing trained (as EnergyMonitor)
            self._setup_stage = None
            return
        try:
            self._write_interrupted(trainer)
        except Exception:
            log.debug("GreenReport could not write the interrupted run's report", exc_info=True)
        finally:
            self._setup_stage = None  # Lightning calls no teardown after an exception

    def _write_interrupted(self, trainer: pl.Trainer) -> None:
        folder = self._log_dir or trainer.default_root_dir
        # Only the energy report the monitor wrote for this failure: listed after this callback, it has not written it
        # yet, and the file in the folder may be another run's or an earlier failed fit's.
        callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
        monitor = next((m for m in callbacks if getattr(m, "report_filename", None) == self._report_name), None)
        written = (
            monitor._report_written_for(trainer) if callable(getattr(monitor, "_report_written_for", None)) else None
        )
        if written is None or not written[1].startswith("interrupted"):
            after = monitor is not None and callbacks.index(monitor) > callbacks.index(self)
            why = (
                "the EnergyMonitor writes this run's energy report after this callback's hook: "
                "list GreenReport after it"
                if after
                else "the EnergyMonitor wrote no energy report for this failure"
            )
            rank_zero_info(
                f"{type(self).__name__}: the fit failed; no green report was written ({why}). "
                f"`lightning-green report {folder}` builds it."
            )
            return
        add_report_section(trainer, "green_report", self.settings())  # for a later rewrite by the monitor
        for lg in trainer.loggers:
            _flush(lg)
        self.write(os.path.dirname(written[0]))

    # ------------------------------------------------------------------------------------------------ public
    def settings(self) -> dict[str, Any]:
        """The report's settings as recorded in the energy report (``extra.green_report``)."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "target": self.target,
            "filename": self.filename,
            "html": self.html,
        }

    def write(self, run_dir: str | os.PathLike[str]) -> Any:
        """Build the report of ``run_dir`` and write it there; returns the files (``None`` if it failed)."""
        from lightning_green.report import load_run, write_report
        from lightning_green.report.run import RunDirError

        try:
            run = load_run(run_dir, energy_report=self._report_name)
            self.files = write_report(
                run, metric=self.metric, mode=self.mode, target=self.target, filename=self.filename, html=self.html
            )
        except (OSError, RunDirError) as err:
            rank_zero_warn(f"{type(self).__name__}: could not write the green report in {os.fspath(run_dir)!r}: {err}")
            return None
        rank_zero_info(f"{type(self).__name__}: wrote {self.files.markdown}")
        return self.files

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "elapsed_s": self._elapsed(), "model": dict(self._model)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=1)
        if self._setup_stage not in (None, "fit"):
            # validate/test/predict(ckpt_path=...): Lightning restores every callback's state for any stage, but
            # this is the state of the fit that wrote it; the run's own (e.g. between two fits) stays.
            return
        self.elapsed_s = float(state_dict.get("elapsed_s", 0.0))
        self._model = dict(state_dict.get("model", {}))

    # ------------------------------------------------------------------------------------------------ internals
    def _elapsed(self) -> float:
        """Fit seconds so far, continued across a resume."""
        if self._t0 is None:
            return self.elapsed_s
        return self.elapsed_s + time.perf_counter() - self._t0


def _count(pl_module: pl.LightningModule, example: Any = None) -> tuple[float | None, int]:
    """MACs per sample (``None`` without an example input) and parameters, as ``pruning/macs`` counts them."""
    params = int(sum(p.numel() for p in pl_module.parameters()))
    example = pl_module.example_input_array if example is None else example
    if example is None:
        return None, params
    from lightning_green.pruning.graph import count_macs_params

    try:  # torch-pruning counts on a deep copy: the module's own train/eval modes are untouched
        macs, _ = count_macs_params(pl_module, move_data_to_device(example, pl_module.device))
    except Exception as err:  # a model torch-pruning cannot trace: the report just lacks MACs
        log.debug("MAC count failed: %s", err, exc_info=True)
        return None, params
    return float(macs), params


def _flush(logger: Any) -> None:
    """Write what a logger buffers (CSV rows, TensorBoard events) so the report reads the whole run."""
    try:
        logger.save()
        experiment = getattr(logger, "experiment", None)
        flush = getattr(experiment, "flush", None)
        if callable(flush):
            flush()
    except Exception as err:  # a logger that cannot flush: the report reads what is on disk
        log.debug("flushing %s failed: %s", type(logger).__name__, err)
