"""EnergyMonitor: energy per step, epoch and stage, CO₂, a forecast and a report, for any LightningModule."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, is_dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_green._internal.checkpoints import last_batch_progress
from lightning_green._internal.devices import rank_gpu_index
from lightning_green._internal.distributed import agree, gather_rows
from lightning_green._internal.logging import epoch_log_step, log_metrics, log_step, should_log_step
from lightning_green._internal.packages import tensorboard_loggers
from lightning_green._internal.runs import PicklesWithoutTrainer, readable_log_dirs, refused_before_start, run_dir
from lightning_green._internal.validation import (
    InvalidArgumentError,
    as_real,
    check_bool,
    check_choice,
    check_filename,
    check_number,
    check_optional_number,
    check_state_version,
    fail,
)
from lightning_green.callbacks.progress_bar import GreenProgressBarMixin, format_energy_short, format_power
from lightning_green.carbon.source import EXTEND_CHOICES, Extend
from lightning_green.carbon.trace import check_timezone
from lightning_green.carbon.tracker import CarbonTracker
from lightning_green.energy.carbon import J_PER_KWH, CarbonModel
from lightning_green.energy.estimate import DEFAULT_DRAM_W_PER_GB, EstimateModel
from lightning_green.energy.forecast import EnergyForecast
from lightning_green.energy.meter import COMPONENTS, SOURCES, EnergyMeter, Reading, combine_label
from lightning_green.energy.report import REPORT_VERSION, format_summary, write_json_atomic
from lightning_green.events import WorkloadChange

__all__ = ["EnergyMonitor", "StageLedger"]

log = logging.getLogger(__name__)

_N = len(COMPONENTS)
# One gathered row per rank: energy per component, wall time, steps, samples, tokens, source code per component, and
# the part of the window's energy that was the fit's set-up (left out of the forecast).
_TIME, _STEPS, _SAMPLES, _TOKENS, _SRC = _N, _N + 1, _N + 2, _N + 3, _N + 4
_SETUP = _SRC + _N
_SOURCE_CODE = {s: i for i, s in enumerate(SOURCES)}
# Fit's epoch-level metrics that also go to trainer.callback_metrics (ModelCheckpoint / EarlyStopping can monitor
# them). Evaluation stages put nothing there: `trainer.validate/test(...)` return the user's metrics only.
MONITORABLE = ("energy/epoch_J", "energy/total_J", "carbon/total_gCO2e")


@dataclass
class StageLedger:
    """Totals of one stage (``fit``, ``validate``, ``test``, ``predict``), identical on every rank.

    ``per_rank[r]`` holds rank ``r``'s cumulative joules per component followed by its wall seconds.
    """

    per_rank: list[list[float]] = field(default_factory=list)
    sources: list[list[str]] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    epochs_j: list[float] = field(default_factory=list)

    def add(self, rows: list[list[float]], counts: bool) -> None:
        """Add one gathered window (a row per rank); ``counts``: the window's steps/samples belong to this stage."""
        for r, row in enumerate(rows):
            self.add_row(r, row)
        if counts:
            self.add_counts(rows[0][_STEPS], sum(row[_SAMPLES] for row in rows), sum(row[_TOKENS] for row in rows))

    def add_counts(self, steps: float, samples: float, tokens: float) -> None:
        """Add a window's steps (the same on every rank), samples and tokens (all ranks)."""
        self.steps += int(steps)
        self.samples += int(samples)
        self.tokens += int(tokens)

    def add_row(self, rank: int, row: list[float]) -> None:
        """Add one rank's window (energy, time and sources only)."""
        self._ensure(rank + 1)
        for i in range(_N + 1):
            self.per_rank[rank][i] += row[i]
        self.sources[rank] = [SOURCES[int(c)] for c in row[_SRC : _SRC + _N]]

    def _ensure(self, ranks: int) -> None:
        while len(self.per_rank) < ranks:
            self.per_rank.append([0.0] * (_N + 1))
        while len(self.sources) < len(self.per_rank):
            self.sources.append(["none"] * _N)

    def component_j(self) -> dict[str, float]:
        """Joules per component, summed over ranks."""
        return {c: float(sum(r[i] for r in self.per_rank)) for i, c in enumerate(COMPONENTS)}

    @property
    def total_j(self) -> float:
        """Joules over all components and ranks."""
        return float(sum(sum(r[:_N]) for r in self.per_rank))

    @property
    def time_s(self) -> float:
        """Wall seconds (the slowest rank)."""
        return max((r[_N] for r in self.per_rank), default=0.0)

    def merged_sources(self) -> dict[str, str]:
        """Per component: the common source over ranks, or ``mixed``."""
        out = {}
        for i, c in enumerate(COMPONENTS):
            kinds = {s[i] for s in self.sources} - {"none"}
            out[c] = "none" if not kinds else (kinds.pop() if len(kinds) == 1 else "mixed")
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state."""
        return {
            "per_rank": [list(r) for r in self.per_rank],
            "sources": [list(s) for s in self.sources],
            "steps": self.steps,
            "samples": self.samples,
            "tokens": self.tokens,
            "epochs_j": list(self.epochs_j),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StageLedger:
        """Rebuild from :meth:`state_dict` output."""
        ledger = cls(
            per_rank=[list(map(float, r)) for r in state.get("per_rank", [])],
            sources=[list(s) for s in state.get("sources", [])],
            steps=int(state.get("steps", 0)),
            samples=int(state.get("samples", 0)),
            tokens=int(state.get("tokens", 0)),
            epochs_j=[float(e) for e in state.get("epochs_j", [])],
        )
        ledger._ensure(len(ledger.per_rank))
        return ledger


@dataclass(frozen=True)
class _Window:
    """One flushed window, summed over ranks."""

    energy_j: float
    time_s: float
    steps: int
    samples: int
    tokens: int


class EnergyMonitor(PicklesWithoutTrainer, Callback):
    """Measure the energy of training, validation, testing and prediction, and log it to every logger.

    Energy comes from hardware counters through Zeus (NVML for GPUs, RAPL for CPU and DRAM); a component without
    a counter is estimated (process CPU time × per-core power, resident memory × W/GB — see
    :mod:`lightning_green.energy.estimate`). Every figure is labelled ``measured`` or ``estimated`` in the
    report; totals that mix both say ``mixed``.

    Logged (to every logger; fit names shown, other stages prefixed ``validate/``, ``test/``, ``predict/``):
    ``energy/step_J`` (per optimizer step), ``power/avg_W``, ``energy/J_per_sample`` and, for batches that carry
    ``input_ids``/``attention_mask``, ``energy/J_per_token`` (tokens counted from the mask when there is one) — the
    rates of the window since the last log — when Lightning logs the training loss (``Trainer(log_every_n_steps=...)``,
    at the same step, so the curves line up for any number of optimizers and with gradient accumulation;
    ``log_every_n_steps=0`` logs no step and reads no counter between epochs); ``energy/epoch_J`` per epoch, with the
    fit's averages so far ``power/fit_avg_W``, ``energy/fit_J_per_sample`` and ``energy/fit_J_per_token`` (the fit's
    energy, validation and set-up included, per training sample/token); running totals ``energy/total_J``,
    ``energy/{gpu,cpu,dram}_J`` and ``carbon/total_gCO2e`` (also at each validation that runs mid-epoch, with
    ``val_check_interval``, at its step); ``energy/forecast_total_J`` and
    ``carbon/forecast_gCO2e`` once a forecast exists. At the end of each stage ``energy_report.json`` is written
    atomically to the run's folder (``trainer.log_dir``; with a W&B/MLflow logger first, the folder
    ``ModelCheckpoint`` uses for the run: README, "Report") with J/sample and J/token per stage and, after fit, a
    summary table is printed on rank 0.

    Monitorable (in ``trainer.callback_metrics`` for ``ModelCheckpoint``/``EarlyStopping``): the fit's
    ``energy/epoch_J``, ``energy/total_J`` and ``carbon/total_gCO2e``, updated at each training epoch end (use
    ``save_on_train_epoch_end=True`` / ``check_on_train_epoch_end=True`` to act on the current epoch's value).
    ``trainer.validate/test(...)`` results hold the user's metrics only: the evaluation figures go to the loggers
    and the report.

    Several ``fit()`` calls on one Trainer are one run: the totals, the forecast and
    :class:`~lightning_green.EnergyBudget`'s budget cover the Trainer's lifetime (a new Trainer starts from zero,
    unless it resumes a checkpoint with ``ckpt_path``).

    Counters are read only at logging points, never every step, and a window shorter than ``min_window_s`` is
    extended until it is long enough (NVML's counter updates every few tens of ms: a shorter window reads 0).

    Under DDP each rank measures its own GPU; RAPL (node-wide) is read by local rank 0 only; estimates are per
    process. Totals are gathered with the strategy's collectives, so nothing is counted twice, and the report
    keeps the per-rank breakdown. Totals live in the checkpoint: ``fit(ckpt_path=...)`` continues them.

    Args:
        carbon_intensity: Grid intensity: a number in gCO2e/kWh; a CSV path of an intensity trace (timestamp +
            gCO2e/kWh, see :func:`lightning_green.carbon.read_trace`); a
            :class:`~lightning_green.carbon.CSVTrace` for a CSV whose columns or unit must be named (also from YAML:
            ``class_path``/``init_args``); ``"electricitymaps:<zone>"`` (online, with the
            token in ``ELECTRICITYMAPS_TOKEN``, see :class:`lightning_green.carbon.ElectricityMapsSource`); or
            (Python only) a callable
            ``datetime -> gCO2e/kWh``. ``None`` uses the world average (475 g/kWh), and the report says it is a
            default. With a trace or a callable, CO₂ is integrated per counter window (window energy × mean
            intensity over the window), the report keeps every window's intensity and the source, and
            ``carbon/intensity_g_per_kWh`` is logged. Looked up over the network only in the Electricity Maps form.
        pue: Power usage effectiveness of the facility (>= 1).
        log_every_n_steps: Batches that stepped between step-level logs (0: none); ``None`` logs exactly when
            Lightning logs the loss (``Trainer(log_every_n_steps=...)``).
        samples_per_batch: Samples in a batch; ``None`` infers it with Lightning's ``extract_batch_size`` (tensors,
            tuples, dicts, ``BatchEncoding``/``UserDict`` mappings and dataclasses).
        forecast_after_epochs: Completed epochs before forecasting total energy and CO₂.
        gpu_indices: GPUs to measure (Zeus indices). ``None``: the CUDA device this rank trains on; none on CPU,
            unless simulated GPUs are installed (:mod:`lightning_green.testing`), then GPU ``local_rank``. An explicit
            list is node-wide: under DDP only local rank 0 measures it (as with RAPL), so no GPU is counted twice.
        cpu_tdp_w: CPU package TDP for the estimate; ``None`` assumes 12 W per busy core.
        cpu_tdp_cores: Cores the TDP is shared by; ``None`` uses ``os.cpu_count()``.
        dram_w_per_gb: DRAM power per GB resident, for the estimate.
        min_window_s: Shortest window read from the counters.
        report_filename: File name of the JSON report in the run's folder; ``None`` writes none.
        print_summary: Print the summary table after fit.
        carbon_extend: A trace that does not cover the start is refused at setup (``"none"``), or its last week is
            repeated (``"repeat-last-week"``, refused at setup for a trace shorter than a week). With ``"none"`` a run
            that outlives the trace gets a warning and goes on with its last week repeated (its last value held, for
            a trace shorter than a week), flagged in the report.
        carbon_timezone: Zone of a trace's timestamps that carry no offset.
        clock: POSIX-seconds clock placing windows on the intensity trace (``time.time``; pass the same clock as
            the ``CarbonAwareScheduler``'s in simulations).
        progress_bar: Show live average power and the fit's cumulative energy in the progress bar, updated at each
            counter read: formatted (``energy/power 23.6 W``, ``energy/total 516 J``, then Wh/kWh) with
            :class:`~lightning_green.GreenTQDMProgressBar`/:class:`~lightning_green.GreenRichProgressBar`; as plain
            numbers (``energy/power_W``, ``energy/fit_J``) with Lightning's own bars.

    Raises:
        ValueError: An argument is out of range (message names it and what is allowed).
        TypeError: An argument has the wrong type.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> import tempfile
        >>> monitor = EnergyMonitor(carbon_intensity=56.0, pue=1.1, print_summary=False)
        >>> trainer = Trainer(default_root_dir=tempfile.mkdtemp(), max_epochs=1, limit_train_batches=4,
        ...                   limit_val_batches=2, callbacks=[monitor], enable_progress_bar=False,
        ...                   enable_model_summary=False, logger=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> monitor.total_energy_j("fit") > 0, monitor.label("fit")
        (True, 'estimated')
    """

    _trainer_refs = ("_trainer_ref", "_setup_for", "_stages_of")

    def __init__(
        self,
        carbon_intensity: float | str | Callable[[_dt.datetime], float] | None = None,
        pue: float = 1.0,
        log_every_n_steps: int | None = None,
        samples_per_batch: int | None = None,
        forecast_after_epochs: int = 1,
        gpu_indices: list[int] | None = None,
        cpu_tdp_w: float | None = None,
        cpu_tdp_cores: int | None = None,
        dram_w_per_gb: float = DEFAULT_DRAM_W_PER_GB,
        min_window_s: float = 0.2,
        report_filename: str | None = "energy_report.json",
        print_summary: bool = True,
        progress_bar: bool = True,
        carbon_extend: Extend = "none",
        carbon_timezone: str = "UTC",
        clock: Callable[[], float] | None = None,
    ) -> None:
        name = type(self).__name__
        check_choice(name, "carbon_extend", carbon_extend, EXTEND_CHOICES)
        if clock is not None and not callable(clock):
            fail(name, "clock", clock, "None or a callable returning POSIX seconds", TypeError)
        pue = pue if as_real(pue) is None else as_real(pue)  # a numpy number too
        check_number(name, "pue", pue, ge=1.0)
        check_optional_number(name, "log_every_n_steps", log_every_n_steps, integer=True, ge=0)
        check_optional_number(name, "samples_per_batch", samples_per_batch, integer=True, ge=1)
        check_number(name, "forecast_after_epochs", forecast_after_epochs, integer=True, ge=1)
        if gpu_indices is not None and (
            not isinstance(gpu_indices, (list, tuple))
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in gpu_indices)
        ):
            fail(name, "gpu_indices", gpu_indices, "None or a list of non-negative ints")
        check_optional_number(name, "cpu_tdp_w", cpu_tdp_w, gt=0)
        check_optional_number(name, "cpu_tdp_cores", cpu_tdp_cores, integer=True, ge=1)
        check_number(name, "dram_w_per_gb", dram_w_per_gb, ge=0)
        check_number(name, "min_window_s", min_window_s, ge=0)
        check_filename(
            name, "report_filename", report_filename, "None or a plain file name (no directory part)", optional=True
        )
        check_bool(name, "print_summary", print_summary)
        check_bool(name, "progress_bar", progress_bar)
        check_timezone(name, "carbon_timezone", carbon_timezone)
        self.carbon_tracker = CarbonTracker(carbon_intensity, pue, carbon_extend, carbon_timezone, clock, name)

        const = as_real(carbon_intensity)
        self.carbon = CarbonModel(const, pue)  # the constant part (and the PUE); CO₂ comes from carbon_tracker
        self.log_every_n_steps = log_every_n_steps
        self.samples_per_batch = samples_per_batch
        self.forecast_after_epochs = forecast_after_epochs
        self.gpu_indices = list(gpu_indices) if gpu_indices is not None else None
        self.estimate = EstimateModel.from_tdp(cpu_tdp_w, cpu_tdp_cores, dram_w_per_gb)
        self.min_window_s = min_window_s
        self.report_filename = report_filename
        self.print_summary = print_summary
        self.progress_bar = progress_bar

        self.ledgers: dict[str, StageLedger] = {}
        self.forecast = EnergyForecast(after_epochs=forecast_after_epochs)
        self.forecast_total_j: float | None = None
        # What the forecast was made for: the epochs it had seen and the fit's bounds then (in the report).
        self._forecast_basis: dict[str, int | None] = {}
        self._meter: EnergyMeter | None = None
        self._open: list[str] = []
        self._last = Reading.zero()
        self._pending_batches = 0
        self._pending_samples = 0
        self._pending_tokens: int | torch.Tensor = 0
        # The training batch between its on_train_batch_start and this monitor's on_train_batch_end, and whether it
        # was counted early (a checkpoint or a closed window that another callback's on_train_batch_end made first).
        self._batch_in_flight: Any = None
        self._in_flight_counted = False
        self._gs_last = 0
        self._trainer_ref: weakref.ref[pl.Trainer] | None = None  # the Trainer of the last fit
        self._run_stages: set[str] | None = None  # the stages that Trainer ran (its report's); None: no Trainer yet
        self._stages_of: weakref.WeakKeyDictionary[pl.Trainer, set[str]] | None = weakref.WeakKeyDictionary()
        self._bar: dict[str, float] = {}
        self._epoch_mark_j = 0.0
        self._saved_at_last_batch = False
        self._epoch_mark_steps = 0
        self._epoch_mark_samples: int | None = 0  # None: not known (a checkpoint from before it was saved)
        self._restored = False
        self._setup_stage: str | None = None
        # Wall time (time.time, as TensorBoard stamps events) this run started; a resumed fit keeps the first start.
        # The report reader keeps only the events written since, not an earlier run's in the same log dir.
        self._started_s: float | None = None
        self._fit_validation: tuple[StageLedger, Any] | None = None
        self._validation_of_fit = False
        self._forecast_announced = False
        self._forecast_note: str | None = None  # the forecast to say at the next epoch's start (if there is one)
        self._listeners: list[Callable[[pl.Trainer, EnergyMonitor], None]] = []
        self._report_sections: dict[str, Any] = {}
        self._rank = 0
        self._log_dir: str | None = None
        self._scalar_dirs: list[str] = []  # readable log dirs outside the run's folder, relative to it
        self._setup_for: weakref.ref[pl.Trainer] | None = None
        self._written: tuple[str, str] | None = None  # the report file written for this stage and its status
        # The stages (the fit, a stand-alone validate/test/predict) whose last run did not finish, and how; the stage
        # this monitor's Trainer started last (the outermost one opened since setup).
        self._stage_status: dict[str, str] = {}
        self._started_stage: str | None = None
        self._fit_trained = False
        # The fit's set-up (see setup and on_train_batch_start): the carbon clock at this monitor's setup, whether the
        # fit's first batch (where the set-up ends) is still to come, this rank's set-up joules not yet gathered, and
        # the set-up joules (all ranks) inside the epoch in progress, which the forecast leaves out (with the idle
        # joules of a CarbonAwareScheduler's pauses: see close_window).
        self._fit_setup_at: float | None = None
        self._splitting_setup = False
        self._setup_pending_j = 0.0
        self._setup_j = 0.0

    # ------------------------------------------------------------------------------------------------ public
    def total_energy_j(self, stage: str = "fit") -> float:
        """Joules of ``stage`` so far, all components and ranks (0 if the stage never ran)."""
        ledger = self.ledgers.get(stage)
        return ledger.total_j if ledger else 0.0

    def total_gco2e(self, stage: str = "fit") -> float:
        """Grams CO₂e of ``stage`` so far, with this monitor's intensity and PUE."""
        return self.carbon_tracker.gco2e(stage, self.total_energy_j(stage))

    def forecast_gco2e(self, forecast_j: float | None = None) -> float | None:
        """Grams CO₂e forecast for the fit: so far, plus the remaining energy at the current intensity."""
        forecast_j = self.forecast_total_j if forecast_j is None else forecast_j
        if forecast_j is None:
            return None
        return self.carbon_tracker.forecast_gco2e("fit", self.total_energy_j("fit"), forecast_j)

    def close_window(self, trainer: pl.Trainer, idle: bool = False) -> None:
        """Account the energy so far as one window now (collective: call on every rank at the same step).

        The ``CarbonAwareScheduler`` calls it around a pause, so a pause's idle energy gets the pause's intensity.
        ``idle``: the window was such a pause (it ends one). Its energy stays in the totals and in its epoch's, but
        not in the forecast's energy per epoch: a one-off wait, not multiplied by the epochs left.
        """
        if self._open and self._meter is not None:
            self._count_trained_batch(trainer)
            splitting = self._splitting_setup  # before the first batch, all of it is the fit's set-up already
            window = self._flush(trainer, force=True)
            if idle and window is not None and not splitting and self._open[-1] == "fit":
                self._setup_j += window.energy_j

    def _count_trained_batch(self, trainer: pl.Trainer | None) -> None:
        """Count the batch in flight now if it has trained and this monitor's ``on_train_batch_end`` is still to come.

        A callback listed before this one that saves a checkpoint or closes a window in its ``on_train_batch_end``
        (CarbonAwareScheduler's pause) would otherwise get the batch's step but not its samples and tokens. Lightning
        counts a batch as processed after its optimizer step and as completed after every ``on_train_batch_end``
        (Lightning 2.x's progress trackers, pinned <3).
        """
        if self._batch_in_flight is None or self._in_flight_counted or trainer is None:
            return
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        # Started and processed, not completed. A batch skipped by on_train_batch_start returning -1 is processed
        # without being started, and its end hooks never run.
        if current.started == current.processed > current.completed:
            self._count(self._batch_in_flight)
            self._in_flight_counted = True

    def label(self, stage: str = "fit") -> str:
        """``measured``, ``estimated``, ``mixed`` or ``none`` for ``stage``'s total."""
        ledger = self.ledgers.get(stage)
        return combine_label(ledger.merged_sources()) if ledger else "none"

    @property
    def meter(self) -> EnergyMeter | None:
        """The running meter (between ``setup`` and ``teardown``), shared with other callbacks."""
        return self._meter

    def add_listener(self, fn: Callable[[pl.Trainer, EnergyMonitor], None]) -> None:
        """Call ``fn(trainer, monitor)`` on every rank after each training-time update (used by EnergyBudget)."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[pl.Trainer, EnergyMonitor], None]) -> None:
        """Stop calling ``fn`` (added by :meth:`add_listener`; nothing happens if it was not)."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def add_report_section(self, name: str, data: Any) -> None:
        """Put ``data`` (plain JSON types) under ``report()["extra"][name]``, replacing any section of that name.

        Other callbacks add their part of the energy report this way (the power-limit tuner adds its profile).
        """
        self._report_sections[str(name)] = data

    def _reported(self) -> dict[str, StageLedger]:
        """The ledgers of the stages the Trainer set up last ran (all of them before any Trainer set this one up)."""
        if self._run_stages is None:
            return dict(self.ledgers)
        return {k: v for k, v in self.ledgers.items() if k in self._run_stages}

    def report(self, status: str = "complete") -> dict[str, Any]:
        """The energy report as plain data (what ``energy_report.json`` holds)."""
        stages = {}
        for stage, ledger in self._reported().items():
            comp = ledger.component_j()
            sources = ledger.merged_sources()
            total = ledger.total_j
            stages[stage] = {
                "energy_j": {**comp, "total": total},
                "kwh": total / J_PER_KWH,
                "gco2e": self.carbon_tracker.gco2e(stage, total),
                **(
                    {"carbon_windows": self.carbon_tracker.stage_windows(stage)}
                    if not self.carbon_tracker.constant
                    else {}
                ),
                "sources": sources,
                "label": combine_label(sources),
                "time_s": ledger.time_s,
                "steps": ledger.steps,
                "samples": ledger.samples,
                "tokens": ledger.tokens,
                "j_per_sample": total / ledger.samples if ledger.samples else None,
                "j_per_token": total / ledger.tokens if ledger.tokens else None,
                "epochs_j": list(ledger.epochs_j),
                "per_rank": [
                    {
                        "rank": r,
                        "energy_j": dict(zip(COMPONENTS, row[:_N], strict=False)),
                        "time_s": row[_N],
                        "sources": dict(zip(COMPONENTS, ledger.sources[r], strict=False)),
                    }
                    for r, row in enumerate(ledger.per_rank)
                ],
            }
        forecast = None
        if self.forecast_total_j is not None:
            forecast = {"total_j": self.forecast_total_j, "gco2e": self.forecast_gco2e(), **self._forecast_basis}
        return {
            "version": REPORT_VERSION,
            "status": status,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(
                {
                    "started": _dt.datetime.fromtimestamp(self._started_s, _dt.timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    "started_s": self._started_s,
                }
                if self._started_s is not None
                else {}
            ),
            "carbon": self.carbon_tracker.as_dict(self.carbon_tracker.account.mean_intensity("fit")),
            "meter": self._meter.describe() if self._meter else None,
            "estimate": self.estimate.as_dict(),
            "stages": stages,
            "forecast": forecast,
            **({"logs": list(self._scalar_dirs)} if self._scalar_dirs else {}),
            **({"extra": dict(self._report_sections)} if self._report_sections else {}),
        }

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._setup_stage = stage  # before Lightning restores a checkpoint's callback state (load_state_dict)
        if stage == "fit":
            self._fit_trained = False  # a training batch of this fit started (see refused_before_start)
        self._written = None
        self._started_stage = None
        self._setup_for = weakref.ref(trainer)  # the Trainer whose stage this monitor measures (until teardown)
        if stage == "fit" and self._trainer_ref is not None and self._trainer_ref() is not trainer:
            # A fit on a new Trainer is a new run: nothing of the last one (a smoke test's test or predict stages)
            # stays. Reset here, not only at on_fit_start: Lightning's Tuner saves a checkpoint between the two and
            # restores it, which would carry the last run's totals into this one.
            self._reset_run()
        # Each Trainer's report has the stages it ran: not a test or predict of another Trainer (whose fit stays in
        # memory: a later fit() on that Trainer continues it, as the README's lifetime rule says).
        if self._stages_of is None:  # pickled for ddp_spawn without its Trainers
            self._stages_of = weakref.WeakKeyDictionary()
        self._run_stages = self._stages_of.setdefault(trainer, set())
        if self._started_s is None:  # the run's start: a later test/validate (or fit) on this monitor is the same run
            self._started_s = time.time()
        self._rank = trainer.global_rank
        # The run's folder (a collective under DDP: resolved here, where every rank runs), and the TensorBoard/CSV
        # log dirs elsewhere whose scalars the green report reads back (W&B or MLflow first: they write none).
        self._log_dir = run_dir(trainer)
        self._scalar_dirs = [_relative(d, self._log_dir) for d in readable_log_dirs(trainer)]
        self._scalar_dirs = [d for d in self._scalar_dirs if d != "."]
        now = self.carbon_tracker.check_covers_now()
        self._fit_setup_at = None
        if self._meter is None:
            self._meter = self._build_meter(trainer)
            # Every rank starts metering at the same moment: building a meter takes longer on the rank that reads the
            # node's counters (RAPL), whose energy must span the same time as the other ranks' (the fit's time is the
            # slowest rank's). Once per stage; the fit's windows start here (see below).
            trainer.strategy.barrier("lightning_green.EnergyMonitor.start")
            self._meter.start()
            self._last = Reading.zero(self._meter.sources)
            # The fit's energy counts from here, not from this monitor's on_fit_start: what runs between (the other
            # callbacks' setup and on_fit_start, listed before or after this one, Lightning's LR and batch-size
            # finders, configure_model, the strategy's set-up, a checkpoint's restore, the sanity check) is the fit's
            # too, whatever the callbacks' order. (The datamodule's setup runs before any callback's: not counted.)
            if stage == "fit":
                self._fit_setup_at = now

    def _reset_run(self) -> None:
        """A new run: no stage measured yet."""
        self._reset_fit_totals()
        for stage in list(self.ledgers):
            self.carbon_tracker.reset(stage)
        self.ledgers = {}  # the fit's opened at its on_fit_start
        if self._stages_of is not None:
            self._stages_of.clear()  # another Trainer's stages are no longer here to report
        self._stage_status = {}
        self._fit_validation = None
        self._started_s = None

    def _replaced(self, *stages: str) -> None:
        """These stages' ledgers start anew for the Trainer set up now: another Trainer's run of them is gone."""
        for other in (self._stages_of or {}).values():
            if other is not self._run_stages:
                other.difference_update(stages)

    def _reset_fit_totals(self) -> None:
        """A new run's fit: no energy, epochs or forecast yet."""
        self._replaced("fit", "validate")
        self.ledgers["fit"] = StageLedger()
        self.ledgers["validate"] = StageLedger()
        self.carbon_tracker.reset("fit")
        self.carbon_tracker.reset("validate")
        self.forecast.reset()
        self.forecast_total_j = None
        self._forecast_basis = {}
        self._epoch_mark_j, self._epoch_mark_steps, self._epoch_mark_samples = 0.0, 0, 0
        self._setup_j = 0.0
        self._stage_status.pop("fit", None)

    def _build_meter(self, trainer: pl.Trainer) -> EnergyMeter:
        indices = self.gpu_indices
        if indices is None:
            index = rank_gpu_index(trainer)
            indices = [] if index is None else [index]
        elif trainer.local_rank != 0:
            indices = []  # an explicit list is the node's GPUs: local rank 0 measures them for every rank
        gpu_problem = None
        if indices:
            available, gpu_problem = _zeus_gpus()
            if gpu_problem is not None and self.gpu_indices is None:
                indices = []  # the training GPU cannot be opened: measure the rest, say why (below)
            elif gpu_problem is not None or any(i >= available for i in indices):
                missing = [i for i in indices if i >= available]
                raise InvalidArgumentError(
                    f"EnergyMonitor(gpu_indices={self.gpu_indices!r}): GPU index {missing} not found; Zeus sees "
                    f"{available} GPU(s){f' ({gpu_problem})' if gpu_problem else ''}. Pass indices below {available}, "
                    "or None to measure the training device."
                )
        meter = EnergyMeter(gpu_indices=indices, node_counters=trainer.local_rank == 0, estimate=self.estimate)
        if gpu_problem is not None:
            meter.problems["gpu"] = gpu_problem
        for component, why in meter.problems.items():
            what = "GPU energy is not measured" if component == "gpu" else f"{component.upper()} energy is estimated"
            rank_zero_warn(f"EnergyMonitor: {what}: {why}.")
        return meter

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._meter is not None:
            self._meter.stop()
            self._meter = None
        self._open.clear()
        self._setup_stage = None
        self._setup_for = None
        self._log_dir = None  # a later run's failure before setup must not write into this run's folder
        self._fit_setup_at, self._splitting_setup, self._setup_pending_j = None, False, 0.0
        self._batch_in_flight, self._in_flight_counted = None, False  # no batch (maybe on a GPU) kept after the fit

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # One run per Trainer: a later fit() on the same Trainer (e.g. after raising max_epochs) continues the totals
        # and the forecast, as a resumed checkpoint does; the same monitor in a new Trainer starts from zero.
        same_trainer = self._trainer_ref is not None and self._trainer_ref() is trainer
        if not (self._restored or same_trainer):
            self._reset_fit_totals()
        elif same_trainer and not self._restored and self._fit_validation is not None:
            # A stand-alone validate() ran between two fits on this Trainer: its ledger was its own; the fit's
            # validation epochs continue from where the fit left them.
            ledger, windows = self._fit_validation
            self.ledgers["validate"] = ledger
            self.carbon_tracker.restore_stage("validate", windows)
        self._fit_validation = None
        self._validation_of_fit = True  # the "validate" ledger is the fit's now, whether or not it validates
        self._trainer_ref = weakref.ref(trainer)
        self.forecast_total_j = None  # re-forecast for this fit's max_epochs/max_steps at its first epoch end
        self._forecast_basis = {}
        self._restored = False
        self._forecast_announced = False  # each fit() says once what it forecasts
        self._forecast_note = None
        self._bar = {}
        self._open_stage(trainer, "fit")
        self._add_custom_scalars(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._forecast_note is not None:
            self._forecast_announced = True
            rank_zero_info(self._forecast_note)
            self._forecast_note = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The loop's global step is restored from a checkpoint only after on_fit_start.
        self._gs_last = trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._fit_trained = True
        self._batch_in_flight, self._in_flight_counted = batch, False
        if self._splitting_setup and self._meter is not None and self._open == ["fit"]:
            # The fit's set-up ends at its first batch (after the sanity check, the other callbacks' on_train_start,
            # a CarbonAwareScheduler's first wait, the loader's start). It stays in the first epoch's energy and
            # window (no extra collective), but the forecast must not multiply a one-off cost by the epochs: note
            # this rank's share since the last flush, gathered with the next window (one local read).
            self._splitting_setup = False
            self._setup_pending_j = _total(self._meter.read() - self._last)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._in_flight_counted:
            self._count(batch)
        self._batch_in_flight, self._in_flight_counted = None, False
        # Lightning's own decision and step (one place: _internal/logging.py), so our curves line up with the loss.
        if not should_log_step(trainer, self.log_every_n_steps):
            return
        window = self._flush(trainer, force=False)
        if window is None:
            return
        metrics = self._totals_metrics("fit")
        if window.steps > 0:
            metrics["energy/step_J"] = window.energy_j / window.steps
        metrics.update(_rates("", window.energy_j, window.time_s, window.samples, window.tokens))
        log_metrics(trainer, metrics, step=log_step(trainer))
        if self.progress_bar:
            self._show(trainer, pl_module, metrics.get("power/avg_W"), metrics["energy/total_J"], on_step=True)
        self._notify(trainer)

    def _close_epoch(self) -> float:
        """Record the fit's epoch that just ended (its energy, for the report and the forecast); return its joules."""
        fit = self.ledgers.setdefault("fit", StageLedger())
        epoch_j = fit.total_j - self._epoch_mark_j
        epoch_steps = fit.steps - self._epoch_mark_steps
        epoch_samples = 0 if self._epoch_mark_samples is None else fit.samples - self._epoch_mark_samples  # 0: unknown
        self._epoch_mark_j, self._epoch_mark_steps, self._epoch_mark_samples = fit.total_j, fit.steps, fit.samples
        fit.epochs_j.append(epoch_j)
        self.forecast.add_epoch(max(epoch_j - self._setup_j, 0.0), epoch_steps, epoch_samples)
        self._setup_j = 0.0
        return epoch_j

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch_in_flight, self._in_flight_counted = None, False  # a batch skipped by -1 never ended
        self._flush(trainer, force=True)
        fit = self.ledgers["fit"]
        epoch_j = self._close_epoch()
        self.forecast_total_j = self.forecast.predict(
            fit.total_j,
            epochs_done=trainer.current_epoch + 1,
            max_epochs=trainer.max_epochs,
            steps_done=trainer.global_step,
            max_steps=trainer.max_steps,
            epoch_samples=_planned_samples(trainer),
            seconds_left=(timer := _timer(trainer)) and timer.time_remaining("train"),
            power_w=fit.total_j / fit.time_s if fit.time_s > 0 else None,
        )
        metrics = {"energy/epoch_J": epoch_j, **self._totals_metrics("fit")}
        # The fit's averages so far, under their own names: power/avg_W & co. are the step windows' rates, logged
        # with the loss, and a cumulative value at the same step would put a second, different point on that curve.
        metrics.update(_rates("", fit.total_j, fit.time_s, fit.samples, fit.tokens, scope="fit_"))
        if self.forecast_total_j is not None:
            self._forecast_basis = {
                "after_epochs": len(fit.epochs_j),
                "max_epochs": _bound(trainer.max_epochs),
                "max_steps": _bound(trainer.max_steps),
                "max_time_s": round(timer.time_elapsed("train") + timer.time_remaining("train"), 3) if timer else None,
            }
            metrics["energy/forecast_total_J"] = self.forecast_total_j
            metrics["carbon/forecast_gCO2e"] = self.forecast_gco2e()
            # Said once per fit, while it is a forecast: at the next epoch's start. Not after the epoch the fit ends
            # with (max_epochs, or a stop by a budget or EarlyStopping, which may be listed after this monitor),
            # where the total is known and an epoch cut short by the stop would mislead.
            if not self._forecast_announced:
                self._forecast_note = (
                    f"EnergyMonitor: forecast for this run: {self.forecast_total_j:.4g} J "
                    f"({self.forecast_total_j / J_PER_KWH:.4g} kWh, {self.forecast_gco2e():.4g} "
                    f"gCO2e, {self.label('fit')}) after {len(fit.epochs_j)} epoch(s)."
                )
        elif self.forecast.ready and not self._forecast_announced and trainer.max_epochs in (None, -1):
            self._forecast_announced = True
            rank_zero_info("EnergyMonitor: no forecast: max_epochs and max_steps are unbounded.")
        self._log_epoch(trainer, pl_module, metrics, step=epoch_log_step(trainer))
        if self.progress_bar:
            self._show(trainer, pl_module, metrics.get("power/fit_avg_W"), fit.total_j, on_step=False)
        self._notify(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, force=True)
        self._close_stage("fit")
        # Final totals (self.log is not allowed here: straight to the loggers).
        log_metrics(trainer, self._totals_metrics("fit"), step=epoch_log_step(trainer))
        report = self._write_report(trainer)
        self._log_hparams(trainer)
        if self.print_summary and report is not None:
            rank_zero_info(format_summary(report))

    # validation / test / predict: one ledger each, logged at the end of the loop
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._begin_eval(trainer, "validate")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._count(batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_eval(trainer, "validate")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn != "fit":
            self._write_report(trainer)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin_eval(trainer, "test")

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._count(batch)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_eval(trainer, "test")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_report(trainer)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin_eval(trainer, "predict")

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._count(batch)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_eval(trainer, "predict")
        self._write_report(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Other ranks may be gone: account this rank's last window locally (energy and batches, as state_dict does),
        # no collectives, then save the report.
        # Nothing here may mask the user's exception: failures are logged at debug level.
        if self._setup_for is None or self._setup_for() is not trainer:
            # It failed before this monitor's setup (data, another callback): nothing was measured for this Trainer,
            # and the last run's report (its folder, its totals) is not this run's to rewrite.
            return
        stage = _trainer_stage(trainer)
        began = self._fit_trained if stage == "fit" else self._started_stage == stage  # a stand-alone stage: opened
        if refused_before_start(exception, began):  # nothing ran: no report (see there)
            self._open.clear()
            self._stop_after_exception()
            return
        try:
            if self._meter is not None and self._meter.started and not self._open and self._fit_setup_at is not None:
                # It failed in the fit's set-up before this monitor's on_fit_start (an earlier-listed callback, an
                # LR finder): that set-up is the fit's, as when it fails later (see setup). No batch of the fit ran.
                self._batch_in_flight = None
                self._open_stage(trainer, "fit")
            if self._meter is not None and self._meter.started and self._open:
                if self._open[-1] == "fit":  # a batch that trained before an earlier-listed callback raised
                    self._count_trained_batch(trainer)
                reading = self._meter.read()
                row = self._unflushed_row(reading, trainer)
                self._last = reading
                for opened in self._open:
                    self._add_unflushed(self.ledgers[opened], opened, row)
                self._setup_j += row[_SETUP]  # a retry on this Trainer goes on in the same epoch: not forecast
                self._carbon_window(list(self._open), float(sum(row[:_N])))
            self._open.clear()
            # A fit always; a stand-alone stage that failed before it began (in its loader) ran nothing of its own.
            if stage == "fit" or self._started_stage == stage:
                self._stage_status[stage] = f"interrupted: {type(exception).__name__}"
            self._write_report(trainer)
        except Exception:
            log.debug("EnergyMonitor could not account the interrupted run", exc_info=True)
        finally:
            self._stop_after_exception()

    def _stop_after_exception(self) -> None:
        # Lightning calls no teardown after an exception: no set-up left pending for this monitor's next stage.
        self._fit_setup_at, self._splitting_setup, self._setup_pending_j = None, False, 0.0
        meter, self._meter = self._meter, None
        if meter is not None and meter.started:
            try:
                meter.stop()
            except Exception:
                log.debug("EnergyMonitor could not stop its meter", exc_info=True)

    def on_workload_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, change: WorkloadChange) -> None:
        """A prune or precision switch changed the cost of a step: re-fit the forecast from here on."""
        self.forecast.reset()

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        ledgers = {k: v.state_dict() for k, v in self.ledgers.items()}
        setup_j = self._setup_j  # with the saved window's set-up, as the saved ledgers hold its energy
        pending: tuple[list[str], float] | None = None  # the same window for the CO₂ of a time-varying intensity
        # The energy since the last flush goes into the saved copy (the running ledgers still get it at the next
        # flush), with the window's steps, samples and tokens, so a run resumed from a mid-epoch checkpoint counts
        # those batches too. Under DDP every rank builds the checkpoint (`Trainer.save_checkpoint` is collective, as
        # DataPruning's state relies on too) and rank 0 writes it: every rank's window is gathered into it.
        if self._meter is not None and self._meter.started and self._open:
            trainer = self._trainer_ref() if self._trainer_ref is not None else None
            if self._open[-1] == "fit":
                self._count_trained_batch(trainer)
            row = self._unflushed_row(self._meter.read(), trainer)
            rows = gather_rows(trainer.strategy, row) if trainer is not None and trainer.world_size > 1 else None
            for stage in self._open:
                saved = StageLedger.from_state(ledgers[stage])
                if rows is None:
                    self._add_unflushed(saved, stage, row)
                else:
                    saved.add(rows, counts=stage == self._open[-1])
                ledgers[stage] = saved.state_dict()
            pending = (list(self._open), float(sum(sum(r[:_N]) for r in rows) if rows is not None else sum(row[:_N])))
            setup_j += sum(r[_SETUP] for r in rows) if rows is not None else row[_SETUP]
        return {
            "version": 1,
            "ledgers": ledgers,
            "forecast": self.forecast.state_dict(),
            "forecast_total_j": self.forecast_total_j,
            "epoch_mark_j": self._epoch_mark_j,
            "epoch_mark_steps": self._epoch_mark_steps,
            "epoch_mark_samples": self._epoch_mark_samples,
            "setup_j": setup_j,
            "carbon": self.carbon_tracker.state_dict(pending),
            "started_s": self._started_s,
        }

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Before load_state_dict: whether the checkpoint ends an epoch whose end Lightning will not run on resume.
        self._saved_at_last_batch = self._setup_stage in (None, "fit") and last_batch_progress(checkpoint) is not None

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=1)
        if self._setup_stage not in (None, "fit"):
            # validate/test/predict(ckpt_path=...): Lightning restores every callback's state for any stage, but the
            # checkpoint's totals are those of the fit that wrote it. This run measures itself; the fit figures this
            # monitor holds (and its report) stay as they are.
            log.debug("EnergyMonitor: %s(ckpt_path=...) leaves the fit's totals as they are", self._setup_stage)
            return
        self.ledgers = {k: StageLedger.from_state(v) for k, v in state_dict.get("ledgers", {}).items()}
        self.forecast.load_state_dict(state_dict.get("forecast", {}))
        self.forecast_total_j = state_dict.get("forecast_total_j")
        self._epoch_mark_j = float(state_dict.get("epoch_mark_j", 0.0))
        self._epoch_mark_steps = int(state_dict.get("epoch_mark_steps", 0))
        mark = state_dict.get("epoch_mark_samples")  # None in older checkpoints: the epoch's samples are not known
        self._epoch_mark_samples = None if mark is None else int(mark)
        self._setup_j = float(state_dict.get("setup_j", 0.0))  # the set-up inside the epoch in progress
        # Usually before on_fit_start, which then keeps these ledgers. A strategy with
        # `restore_checkpoint_after_setup` (FSDP, DeepSpeed) restores after on_fit_start opened the fit: take the
        # checkpoint's ledgers for the open stages now, and leave no flag behind for the next fit.
        for stage in self._open:
            self.ledgers.setdefault(stage, StageLedger())
        self.carbon_tracker.load_state_dict(state_dict.get("carbon", {}))
        if self._saved_at_last_batch:
            # Lightning calls no on_train_epoch_end for the epoch such a checkpoint ends (see on_load_checkpoint): its
            # energy would be counted in the next epoch's.
            self._saved_at_last_batch = False
            self._close_epoch()
        if state_dict.get("started_s") is not None:
            self._started_s = float(state_dict["started_s"])
        self._restored = not self._open

    # ------------------------------------------------------------------------------------------------ internals
    def _count(self, batch: Any) -> None:
        self._pending_batches += 1
        if self.samples_per_batch is not None:
            self._pending_samples += self.samples_per_batch
        else:
            self._pending_samples += _batch_size(batch)
        tokens = _token_count(batch)
        if tokens is not None:
            self._pending_tokens = self._pending_tokens + tokens  # a device tensor: read at the next flush, no sync

    def _delta_row(self, reading: Reading) -> list[float]:
        """This rank's window since the last flush as one gather row (steps filled in by the caller)."""
        delta = reading - self._last
        return [
            *(delta.energy_j[c] for c in COMPONENTS),
            delta.time_s,
            0.0,
            float(self._pending_samples),
            float(self._pending_tokens),
            *(float(_SOURCE_CODE[reading.sources.get(c, "none")]) for c in COMPONENTS),
            _total(delta) if self._splitting_setup else self._setup_pending_j,  # all of it before the first batch
        ]

    def _unflushed_row(self, reading: Reading, trainer: pl.Trainer | None) -> list[float]:
        """This rank's window since the last flush, steps included, for a path that may run no collective.

        A checkpoint (``state_dict``) and a crash (``on_exception``) account it locally. The steps are the fit's
        optimizer steps or an evaluation's batches, as in :meth:`_flush`; samples and tokens are this rank's.
        """
        row = self._delta_row(reading)
        if self._open[-1] != "fit":
            row[_STEPS] = float(self._pending_batches)
        elif trainer is not None:
            row[_STEPS] = self._fit_steps(trainer)
        return row

    def _fit_steps(self, trainer: pl.Trainer) -> float:
        """The fit's optimizer steps since the last window.

        None before the fit's first batch: Lightning restores a resumed fit's global step after ``on_fit_start``, so
        a window closed before this monitor's ``on_train_start`` (a CarbonAwareScheduler listed first, pausing at a
        resume) would count the checkpoint's steps again.
        """
        if not self._fit_trained:
            self._gs_last = trainer.global_step
        return float(trainer.global_step - self._gs_last)

    def _add_unflushed(self, ledger: StageLedger, stage: str, row: list[float]) -> None:
        """Add an :meth:`_unflushed_row` to ``stage``'s ledger: energy to every open stage, counts to the innermost.

        Without the counts, the energy of those batches would be in the totals but not the batches: J/sample and
        the forecast's steps per epoch would be off.
        """
        ledger.add_row(self._rank, row)
        if stage == self._open[-1]:
            ledger.add_counts(row[_STEPS], row[_SAMPLES], row[_TOKENS])

    def _local_row(self, reading: Reading) -> list[float]:
        row = self._delta_row(reading)
        self._last = reading
        return row

    def _flush(self, trainer: pl.Trainer, force: bool) -> _Window | None:
        """Read the meter, gather every rank's window and add it to the open stages. Collective."""
        if self._meter is None or not self._open:
            return None
        if not force:
            long_enough = (self._meter.elapsed_s() - self._last.time_s) >= self.min_window_s
            if not agree(trainer.strategy, long_enough, all=True):
                return None  # look again at the next logging point
        row = self._local_row(self._meter.read())
        innermost = self._open[-1]
        if innermost == "fit":
            row[_STEPS] = self._fit_steps(trainer)
            self._gs_last = trainer.global_step
        else:
            row[_STEPS] = float(self._pending_batches)
        self._pending_batches = self._pending_samples = self._pending_tokens = 0
        rows = gather_rows(trainer.strategy, row)
        self._setup_j += sum(r[_SETUP] for r in rows)
        self._setup_pending_j = 0.0
        for stage in self._open:
            self.ledgers[stage].add(rows, counts=stage == innermost)
        self._carbon_window(list(self._open), float(sum(sum(r[:_N]) for r in rows)))
        return _Window(
            energy_j=float(sum(sum(r[:_N]) for r in rows)),
            time_s=max(r[_TIME] for r in rows),
            steps=int(rows[0][_STEPS]),
            samples=int(sum(r[_SAMPLES] for r in rows)),
            tokens=int(sum(r[_TOKENS] for r in rows)),
        )

    def _open_stage(self, trainer: pl.Trainer, stage: str) -> None:
        if self._meter is None:
            return
        # Energy since the last read belongs to no stage (set-up between stages): skip it locally. The fit's own
        # set-up since this monitor's setup is the fit's (see setup).
        if not self._open:
            self._started_stage = stage
            self._stage_status.pop(stage, None)  # a new run of the stage: finished or not, it says at its end
            setup_at, self._fit_setup_at = (self._fit_setup_at if stage == "fit" else None), None
            self._splitting_setup = setup_at is not None
            if setup_at is not None:
                self.carbon_tracker.start(at=setup_at)
            else:
                self._last = self._meter.read()
                self.carbon_tracker.start()
            self._setup_pending_j = 0.0
            self._pending_batches = self._pending_samples = self._pending_tokens = 0
        self._gs_last = trainer.global_step
        self.ledgers.setdefault(stage, StageLedger())
        if self._run_stages is not None:  # the fit's validation is the fit's
            self._run_stages |= {"fit", "validate"} if stage == "fit" else {stage}
        self._open.append(stage)

    def _close_stage(self, stage: str) -> None:
        if self._open and self._open[-1] == stage:
            self._open.pop()

    def _begin_eval(self, trainer: pl.Trainer, stage: str) -> None:
        if self._open:
            self._flush(trainer, force=True)  # what ran before belongs to the outer stage only
        if trainer.state.fn != "fit" or stage != "validate":
            if stage == "validate" and self._validation_of_fit:  # keep the fit's validation for its next fit()
                kept = self.ledgers.get("validate", StageLedger())
                self._fit_validation = (kept, self.carbon_tracker.stage_state("validate"))
                self._validation_of_fit = False
            self.ledgers[stage] = StageLedger()  # a standalone validate/test/predict run starts from zero
            self.carbon_tracker.reset(stage)
            self._replaced(stage)
        elif stage == "validate":
            self._validation_of_fit = True
        self._open_stage(trainer, stage)

    def _end_eval(self, trainer: pl.Trainer, stage: str) -> dict[str, float]:
        before = self.ledgers[stage].total_j
        self._flush(trainer, force=True)
        self._close_stage(stage)
        ledger = self.ledgers[stage]
        metrics = {f"{stage}/{k}": v for k, v in self._totals_metrics(stage).items()}
        if trainer.state.fn == "fit":  # a stand-alone run's epoch is its total: not logged twice
            metrics[f"{stage}/energy/epoch_J"] = ledger.total_j - before
            if stage == "validate" and not trainer.is_last_batch:
                # A validation mid-epoch (val_check_interval): the fit's running totals at its step, so that its
                # metrics can be read against the energy spent so far. At an epoch-end validation the epoch end's
                # totals, logged at the same step, say it: not logged twice there.
                metrics.update(self._totals_metrics("fit"))
        metrics.update(_rates(f"{stage}/", ledger.total_j, ledger.time_s, ledger.samples, ledger.tokens))
        # Lightning logs evaluation results at its fit loop's step (during fit: that of the batch that triggered it).
        log_metrics(trainer, metrics, step=log_step(trainer))
        if "energy/total_J" in metrics:  # the fit's totals were updated mid-epoch: listeners (EnergyBudget) check them
            self._notify(trainer)
        return metrics

    def _totals_metrics(self, stage: str) -> dict[str, float]:
        ledger = self.ledgers[stage]
        metrics = {f"energy/{c}_J": v for c, v in ledger.component_j().items()}
        metrics["energy/total_J"] = ledger.total_j
        metrics["carbon/total_gCO2e"] = self.carbon_tracker.gco2e(stage, ledger.total_j)
        if not self.carbon_tracker.constant:
            metrics["carbon/intensity_g_per_kWh"] = self.carbon_tracker.intensity_now
        return metrics

    def _carbon_window(self, stages: list[str], energy_j: float) -> None:
        self.carbon_tracker.window(stages, energy_j)
        if self.carbon_tracker.extrapolated and not self.carbon_tracker.warned_extrapolation:
            self.carbon_tracker.warned_extrapolation = True
            if self.carbon_tracker.extend == "none":
                how = (
                    "its last week is repeated"
                    if self.carbon_tracker.account.extension == "repeated"
                    else "its last value is held"
                )
                rank_zero_warn(
                    f"EnergyMonitor: the run outlived the carbon-intensity trace; {how} from here on (the report flags "
                    "it). Give a trace that covers the run (or, with a week of data or more, "
                    "carbon_extend='repeat-last-week' to expect this)."
                )

    @staticmethod
    def _log_epoch(trainer: pl.Trainer, pl_module: pl.LightningModule, metrics: dict[str, float], step: int) -> None:
        # The fit's totals go through self.log so they reach trainer.callback_metrics (ModelCheckpoint/EarlyStopping
        # can monitor them). They are already identical on every rank; sync_dist=True (a mean of equal values, three
        # reductions an epoch) is what Lightning asks for epoch-level values under DDP, and it does not warn then.
        # self.log costs ~0.5 ms a call, so everything else goes straight to the loggers, at Lightning's step.
        direct = {}
        for k, v in metrics.items():
            if k in MONITORABLE:
                pl_module.log(k, float(v), on_step=False, on_epoch=True, sync_dist=True)
            else:
                direct[k] = v
        log_metrics(trainer, direct, step=step)

    def progress_bar_metrics(self) -> dict[str, str]:
        """The fit's live figures for a progress bar, formatted (``{"energy/power": "23.6 W", ...}``).

        Read by :class:`~lightning_green.GreenTQDMProgressBar` / :class:`~lightning_green.GreenRichProgressBar`
        (empty before the first counter read, or with ``progress_bar=False``).
        """
        out = {}
        if "W" in self._bar:
            out["energy/power"] = format_power(self._bar["W"])
        if "J" in self._bar:
            out["energy/total"] = format_energy_short(self._bar["J"])
        return out

    def _show(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, watts: float | None, joules: float, on_step: bool
    ) -> None:
        if watts is not None:
            self._bar["W"] = float(watts)
        self._bar["J"] = float(joules)
        bar = trainer.progress_bar_callback
        if bar is None or isinstance(bar, GreenProgressBarMixin):
            return  # no bar, or one that formats self._bar itself (progress_bar_metrics): no self.log call needed
        # Lightning's own bars show only what is logged, as numbers: progress bar only (logger=False), namespaced.
        # Equal on every rank; at epoch level sync_dist=True is what Lightning asks for under DDP (no warning).
        opts: dict[str, Any] = {"prog_bar": True, "logger": False, "on_step": on_step, "on_epoch": not on_step}
        opts["sync_dist"] = not on_step
        if watts is not None:
            pl_module.log("energy/power_W", float(watts), **opts)
        pl_module.log("energy/fit_J", float(joules), **opts)

    def _notify(self, trainer: pl.Trainer) -> None:
        for fn in self._listeners:
            fn(trainer, self)

    @rank_zero_only
    def _add_custom_scalars(self, trainer: pl.Trainer) -> None:
        layout = {
            "energy": {
                "energy per step / epoch (J)": ["Multiline", ["energy/step_J", "energy/epoch_J"]],
                "total energy (J)": ["Multiline", [r"energy/(total|gpu|cpu|dram|forecast_total)_J"]],
                "energy per sample (J)": ["Multiline", [r"energy/(fit_)?J_per_sample"]],
                "evaluation energy (J)": ["Multiline", [r"(validate|test|predict)/energy/(epoch|total)_J"]],
            },
            "power": {"average power (W)": ["Multiline", [r"(.*/)?power/(fit_)?avg_W"]]},
            "carbon": {"CO2e (g)": ["Multiline", [r"(.*/)?carbon/(total|forecast)_gCO2e"]]},
        }
        for lg in tensorboard_loggers(trainer):
            lg.experiment.add_custom_scalars(layout)

    @rank_zero_only
    def _log_hparams(self, trainer: pl.Trainer) -> None:
        fit = self.ledgers.get("fit")
        if fit is None:
            return
        metrics = {
            "hparams/energy_total_J": fit.total_j,
            "hparams/energy_kWh": fit.total_j / J_PER_KWH,
            "hparams/carbon_total_gCO2e": self.total_gco2e("fit"),
        }
        params = {
            "energy_monitor/carbon_intensity_g_per_kwh": self.carbon_tracker.as_dict(
                self.carbon_tracker.account.mean_intensity("fit")
            )["intensity_g_per_kwh"],
            "energy_monitor/pue": self.carbon.pue,
            "energy_monitor/label": self.label("fit"),
        }
        for lg in tensorboard_loggers(trainer):
            lg.log_hyperparams({**dict(lg.hparams), **params}, metrics=metrics, step=epoch_log_step(trainer))

    def _write_report(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Write the report (rank 0), with its status: the fit's, when this monitor measured one, else this run's.

        A stand-alone validate/test/predict that fails after the fit says so in its own stage's ``status``: the fit's
        figures are as complete as they were (``lightning-green report`` would call the fit unfinished).
        """
        stage = _trainer_stage(trainer)
        status = self._stage_status.get("fit" if "fit" in self._reported() else stage, "complete")
        report = self.report(status)
        for name, how in self._stage_status.items():
            if name in report["stages"]:
                report["stages"][name]["status"] = how
        # fast_dev_run: Lightning's smoke test writes no logs or checkpoints (and has no log dir): no report file.
        if self.report_filename is None or trainer.global_rank != 0 or trainer.fast_dev_run:
            return report
        path = os.path.join(self._log_dir or trainer.default_root_dir, self.report_filename)
        try:
            write_json_atomic(path, _beside_the_fit(path, report))
        except OSError as err:
            rank_zero_warn(f"EnergyMonitor: could not write the energy report to {path!r}: {err}")
            return report
        self._written = (path, status)
        return report

    def _report_written_for(self, trainer: pl.Trainer) -> tuple[str, str] | None:
        """The report file written for ``trainer``'s stage in progress, and its status; else ``None``.

        GreenReport's on_exception builds on it. ``None``: not written yet, or the write failed, or the stage in
        progress is another Trainer's.
        """
        return self._written if self._setup_for is not None and self._setup_for() is trainer else None


def _beside_the_fit(path: str, report: dict[str, Any]) -> dict[str, Any]:
    """What to write at ``path``: ``report``, or, with no fit of its own, the fit's report there plus its stages.

    ``lightning-green test --ckpt_path`` into the fit's log dir runs a new monitor: its report replaced the fit's
    figures with the test's alone.
    """
    if "fit" in report.get("stages", {}):
        return report
    try:
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    except (OSError, ValueError):
        return report
    if not isinstance(existing, dict) or "fit" not in (existing.get("stages") or {}):
        return report
    merged = {**existing, "stages": {**existing["stages"], **report.get("stages", {})}}
    # The fit's status stays: an interrupted test run says so in its own stage (see on_exception).
    merged["extra"] = {**(existing.get("extra") or {}), **(report.get("extra") or {})}  # both runs' sections
    return merged


def _trainer_stage(trainer: pl.Trainer) -> str:
    """The stage the Trainer runs: ``fit``, ``validate``, ``test`` or ``predict``."""
    return str(getattr(trainer.state.fn, "value", trainer.state.fn))


def _planned_samples(trainer: pl.Trainer) -> Callable[[int], int | None] | None:
    """What a callback that sizes the coming epochs (DataPruning's annealing epochs) says they will train on."""
    planners = [cb for cb in trainer.callbacks if callable(getattr(cb, "planned_samples", None))]  # type: ignore[attr-defined]
    if not planners:
        return None
    planner = planners[0]
    return lambda epoch: planner.planned_samples(trainer, epoch)


def _timer(trainer: pl.Trainer) -> Timer | None:
    """The Trainer's ``max_time`` Timer (Lightning adds one for ``max_time``), or ``None``."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining("train") is not None), None)


def _bound(limit: int | None) -> int | None:
    """A Trainer's ``max_epochs``/``max_steps`` for the report: ``None`` when unbounded (None or -1)."""
    return None if limit is None or limit < 0 else int(limit)


def _relative(path: str, start: str) -> str:
    """``path`` relative to ``start`` where it can be (the report moves with its folder), else absolute.

    Between the real paths: the OS resolves a ``..`` after following a symlink (an MLflow store linked to a big disk),
    so a path relative to the folder as named could lead elsewhere. :func:`~lightning_green.report.load_run` joins it
    to the run folder's real path.
    """
    try:
        return os.path.relpath(os.path.realpath(path), os.path.realpath(start))
    except ValueError:  # another drive (Windows)
        return os.path.abspath(path)


def _total(delta: Reading) -> float:
    """Joules over every component of a reading's difference."""
    return float(sum(delta.energy_j[c] for c in COMPONENTS))


def _zeus_gpus() -> tuple[int, str | None]:
    """How many GPUs Zeus sees, and why it sees none when its GPU library fails to start (else ``None``)."""
    from zeus.device import get_gpus

    try:
        return len(get_gpus()), None
    except Exception as err:  # NVML/AMDSMI missing or failing (driver, container, permission): Zeus wraps them all
        return 0, (
            f"Zeus could not open the GPUs ({type(err).__name__}: {err}). Check that `nvidia-smi` (or `amd-smi`) works "
            "in this environment: the driver is loaded, the container was started with GPU access (e.g. "
            "`docker run --gpus all`), and the NVML library (`nvidia-ml-py`) matches the driver"
        )


def _batch_size(batch: Any) -> int:
    """Samples in ``batch`` as Lightning counts them for ``self.log`` (1 if it holds no tensor)."""
    try:
        return int(extract_batch_size(batch))
    except (MisconfigurationException, RecursionError, TypeError):
        return 1


def _field(batch: Any, name: str) -> Any:
    if isinstance(batch, Mapping):  # dict, HF BatchEncoding, UserDict
        return batch.get(name)
    if is_dataclass(batch) and not isinstance(batch, type):
        return getattr(batch, name, None)
    return None


def _token_count(batch: Any) -> int | torch.Tensor | None:
    """Tokens in a language-model batch: the attention mask's ones, else ``input_ids``' elements; ``None`` if none.

    A tensor count stays on its device (no sync per batch); it is read when the window is flushed.
    """
    mask = _field(batch, "attention_mask")
    if isinstance(mask, torch.Tensor):
        return mask.detach().sum()
    ids = _field(batch, "input_ids")
    if isinstance(ids, torch.Tensor):
        return ids.numel()
    return None


def _rates(prefix: str, energy_j: float, time_s: float, samples: int, tokens: int, scope: str = "") -> dict[str, float]:
    """Average power, J/sample and J/token of a window or stage (only the ones with a non-zero denominator).

    ``prefix`` names the stage (``"validate/"``); ``scope`` what the figures average over (``"fit_"``: the whole fit
    so far, e.g. ``energy/fit_J_per_sample``, ``""``: the window or stage).
    """
    out = {}
    if time_s > 0:
        out[f"{prefix}power/{scope}avg_W"] = energy_j / time_s
    if samples > 0:
        out[f"{prefix}energy/{scope}J_per_sample"] = energy_j / samples
    if tokens > 0:
        out[f"{prefix}energy/{scope}J_per_token"] = energy_j / tokens
    return out
