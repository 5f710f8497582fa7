"""A finished run, read back from its log dir: the energy report plus the logged scalars, and what follows from them.

A *run directory* is the folder of one ``fit`` (``trainer.log_dir``, e.g. ``lightning_logs/version_0``; with a W&B or
MLflow logger first, ``<save_dir>/<name>/<version>``): it holds the ``energy_report.json`` that
:class:`~lightning_green.EnergyMonitor` writes, and the logger's scalars (TensorBoard event files or CSVLogger's
``metrics.csv``), else the TensorBoard/CSV log dirs that the energy report lists under ``logs``.

How the derived figures are read:

* Cumulative energy at the end of epoch *k* is the ``energy/total_J`` logged together with that epoch's
  ``energy/epoch_J`` (validation included, since validation runs inside the epoch); its split by component is
  the ``energy/{gpu,cpu,dram}_J`` logged at that step that adds up to it. A validation metric logged at
  an epoch end gets that value; one logged mid-epoch (``val_check_interval`` < 1) gets the running total at its
  step.
* Elapsed time at a validation comes from ``time/elapsed_s`` (logged by :class:`~lightning_green.GreenReport`
  with the validation metrics), else from TensorBoard's wall clock since the run's first event; a CSV log without
  ``time/elapsed_s`` has none, nor has a log that starts mid-fit (a resume into a new log dir) without it.
* *energy-to-target* / *time-to-target*: energy and time at the first validation whose metric reaches the target.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_green.energy.meter import COMPONENTS
from lightning_green.energy.report import read_report
from lightning_green.report.scalars import Point, Scalars, read_scalars

__all__ = [
    "METRIC_CANDIDATES",
    "CurvePoint",
    "EpochEnergy",
    "Run",
    "RunDirError",
    "TargetResult",
    "load_run",
    "metric_mode",
]

#: Validation metrics looked for, in order, when none is named.
METRIC_CANDIDATES = ("val_acc", "val_loss", "val_ppl")
_FIRST_LOADER = "dataloader_idx_0"  # Lightning's suffix of a metric logged by the first of several val dataloaders
ENERGY_REPORT = "energy_report.json"
# A logged name's token -> the torchmetrics class whose `higher_is_better` says its direction (module, class).
_TORCHMETRICS = {
    **dict.fromkeys(("acc", "accuracy"), ("classification", "MulticlassAccuracy")),
    **dict.fromkeys(("f1", "f1score"), ("classification", "MulticlassF1Score")),
    **dict.fromkeys(("precision", "prec"), ("classification", "MulticlassPrecision")),
    **dict.fromkeys(("recall", "rec"), ("classification", "MulticlassRecall")),
    "auroc": ("classification", "MulticlassAUROC"),
    **dict.fromkeys(("ap", "averageprecision"), ("classification", "MulticlassAveragePrecision")),
    **dict.fromkeys(("iou", "jaccard", "jaccardindex"), ("classification", "MulticlassJaccardIndex")),
    **dict.fromkeys(("mcc", "matthews"), ("classification", "MulticlassMatthewsCorrCoef")),
    **dict.fromkeys(("kappa", "cohenkappa"), ("classification", "MulticlassCohenKappa")),
    **dict.fromkeys(("ece", "calibrationerror"), ("classification", "MulticlassCalibrationError")),
    **dict.fromkeys(("hamming", "hammingdistance"), ("classification", "MulticlassHammingDistance")),
    **dict.fromkeys(("dice", "dicescore"), ("segmentation", "DiceScore")),
    **dict.fromkeys(("miou", "meaniou"), ("segmentation", "MeanIoU")),
    "mape": ("regression", "MeanAbsolutePercentageError"),
    "smape": ("regression", "SymmetricMeanAbsolutePercentageError"),
    **dict.fromkeys(("mse", "rmse"), ("regression", "MeanSquaredError")),
    "mae": ("regression", "MeanAbsoluteError"),
    "msle": ("regression", "MeanSquaredLogError"),
    "r2": ("regression", "R2Score"),
    **dict.fromkeys(("spearman", "spearmancorrcoef"), ("regression", "SpearmanCorrCoef")),
    "explainedvariance": ("regression", "ExplainedVariance"),
    **dict.fromkeys(("ppl", "perplexity"), ("text", "Perplexity")),
    "bleu": ("text", "BLEUScore"),
    "sacrebleu": ("text", "SacreBLEUScore"),
    "rouge": ("text", "ROUGEScore"),
    "wer": ("text", "WordErrorRate"),
    "cer": ("text", "CharErrorRate"),
    "psnr": ("image", "PeakSignalNoiseRatio"),
    "ssim": ("image", "StructuralSimilarityIndexMeasure"),
}
# The documented rule for names torchmetrics does not settle: a whole token (not a substring) in this set means
# higher is better; anything else (loss, error, perplexity, an unknown name) is minimised.
_HIGHER_IS_BETTER = frozenset({"score", "map", "top1", "top5", "auc", "reward", "return", "sim", "similarity"})


class RunDirError(ValueError):
    """A path is not a readable run directory (the message says why and what to pass instead)."""


def _tokens(name: str) -> list[str]:
    """``"val/MeanAbsoluteError_epoch"`` -> ``["val", "meanabsoluteerror", "epoch"]`` (split on non-alphanumerics)."""
    return [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]


def _torchmetrics_direction(token: str) -> bool | None:
    """Torchmetrics' ``higher_is_better`` for a token naming one of its metrics (alias or class name), else ``None``."""
    import torchmetrics

    found = _TORCHMETRICS.get(token)
    if found is not None:
        try:
            cls = getattr(_tm_module(found[0]), found[1])
        except AttributeError:  # a metric this torchmetrics version lacks (or whose extra is missing)
            return None
        return getattr(cls, "higher_is_better", None)
    for module in (torchmetrics, *(_tm_module(m) for m in ("classification", "regression", "text", "segmentation"))):
        cls = next((v for k, v in vars(module).items() if k.lower() == token and isinstance(v, type)), None)
        if cls is not None and getattr(cls, "higher_is_better", None) is not None:
            return cls.higher_is_better
    return None


def _tm_module(name: str) -> Any:
    import importlib
    import types

    try:
        return importlib.import_module(f"torchmetrics.{name}")
    except ImportError:  # pragma: no cover - an optional part of torchmetrics
        return types.ModuleType(name)


def metric_mode(name: str, mode: str = "auto") -> Literal["max", "min"]:
    """Whether the logged metric ``name`` is maximised (``"max"``) or minimised (``"min"``).

    In order: an explicit ``mode`` (``"max"``/``"min"``); else torchmetrics' ``higher_is_better`` for the metric
    the name's last recognised token names (``acc``, ``f1``, ``mape``, ``ppl``, ``bleu``, ... or a torchmetrics
    class name such as ``MeanAbsoluteError``); else the documented rule: a whole token among ``score``, ``map``,
    ``auc``, ``top1``, ``top5``, ``reward``, ``return``, ``similarity`` means higher is better, and anything else
    (``loss``, an error, an unknown name) is minimised. Tokens are the name split on non-alphanumerics, so
    ``val_mape`` (mean absolute percentage error) is never mistaken for ``map``.

    Example:
        >>> metric_mode("val_acc"), metric_mode("val_ppl"), metric_mode("val_mape"), metric_mode("val/mAP")
        ('max', 'min', 'min', 'max')
        >>> metric_mode("val_loss", mode="max")
        'max'
    """
    if mode in ("max", "min"):
        return mode  # type: ignore[return-value]
    tokens = _tokens(name)
    for token in reversed(tokens):
        higher = _torchmetrics_direction(token)
        if higher is not None:
            return "max" if higher else "min"
    return "max" if any(t in _HIGHER_IS_BETTER for t in tokens) else "min"


def target_sign(mode: str) -> str:
    """``≥`` for a metric to maximise, ``≤`` for one to minimise (how a target reads in the report)."""
    return "≥" if mode == "max" else "≤"


@dataclass(frozen=True)
class EpochEnergy:
    """Energy of one training epoch (validation included): total and per component, J."""

    epoch: int
    step: int
    total_j: float
    components_j: dict[str, float]
    cumulative_j: float


@dataclass(frozen=True)
class CurvePoint:
    """One validation: its metric, and the cumulative energy and elapsed time when it was logged."""

    step: int
    epoch: int | None
    value: float
    energy_j: float | None
    time_s: float | None


@dataclass(frozen=True)
class TargetResult:
    """When (if ever) a run first reached a target value of its metric."""

    metric: str
    target: float
    mode: str
    reached: bool
    epoch: int | None = None
    step: int | None = None
    value: float | None = None
    energy_j: float | None = None
    time_s: float | None = None
    #: Set when this log dir holds the fit's validations from this epoch on only (a run resumed with
    #: ``fit(ckpt_path=...)`` into a new log dir): a target reached is reached *by* ``epoch``, so ``energy_j`` and
    #: ``time_s`` are upper bounds; one not reached may have been reached in the epochs logged elsewhere.
    logged_from_epoch: int | None = None


@dataclass
class Run:
    """A finished run: its energy report (plain dict, as written) and its scalars."""

    path: Path
    energy: dict[str, Any]
    scalars: Scalars
    name: str = ""
    _curves: dict[str, list[CurvePoint]] = field(default_factory=dict, repr=False)
    _fit_series: dict[str, list[Point]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------- energy report
    def stage(self, stage: str = "fit") -> dict[str, Any] | None:
        """The energy report's section for ``stage``."""
        return self.energy.get("stages", {}).get(stage)

    @property
    def total_energy_j(self) -> float | None:
        """Joules of fit (all components and ranks)."""
        fit = self.stage("fit")
        return float(fit["energy_j"]["total"]) if fit else None

    @property
    def time_s(self) -> float | None:
        """Wall seconds of fit as metered."""
        fit = self.stage("fit")
        return float(fit.get("time_s", 0.0)) if fit else None

    @property
    def status(self) -> str:
        """The energy report's status: ``complete``, ``interrupted: <exception>``, or ``unknown`` when not recorded."""
        status = self.energy.get("status")
        return status if isinstance(status, str) and status else "unknown"

    @property
    def label(self) -> str:
        """``measured``, ``estimated``, ``mixed`` or ``none`` for fit's energy."""
        fit = self.stage("fit")
        return str(fit.get("label", "none")) if fit else "none"

    def extra(self, name: str) -> Any:
        """A section other callbacks added to the energy report (``None`` if absent)."""
        return self.energy.get("extra", {}).get(name)

    # ------------------------------------------------------------------------------------------------ epochs
    def epoch_of(self, point: Point) -> int | None:
        """The epoch a value was logged in (from the ``epoch`` scalar Lightning logs with epoch-level metrics)."""
        same = self.scalars.with_("epoch", point)
        if same is not None:
            return int(same.value)
        before = [p for p in self.scalars.series("epoch") if p.step <= point.step]
        return int(before[-1].value) if before else None

    def epoch_energy(self) -> list[EpochEnergy]:
        """Energy of every training epoch, split by component where the components were logged.

        Falls back to the energy report's ``epochs_j`` (totals only) when the scalars lack ``energy/epoch_J``, and
        takes the epochs the log lacks at its start (a run resumed into a new log dir) from there too. An epoch whose
        split at its start is not in the log (the first one logged after such a resume) has no components.
        """
        anchors = self.scalars.series("energy/epoch_J")
        fit = self.stage("fit") or {}
        epochs_j = [float(e) for e in fit.get("epochs_j") or [] if isinstance(e, (int, float))]
        out: list[EpochEnergy] = []
        if not anchors:
            cumulative = 0.0
            for i, e in enumerate(epochs_j):
                cumulative += e
                out.append(EpochEnergy(i, -1, e, {}, cumulative))
            return out
        prev: dict[str, float] | None = None
        cumulative = 0.0
        for i, anchor in enumerate(anchors):
            total_p = self.scalars.with_("energy/total_J", anchor)
            cumulative = total_p.value if total_p is not None else cumulative + anchor.value
            at = self._components_at(anchor.step, cumulative)
            if i == 0 and cumulative - anchor.value <= 1e-6 * max(1.0, abs(cumulative)):
                prev = dict.fromkeys(COMPONENTS, 0.0)  # the fit's first epoch: components count from zero
            # Else energy was spent before this log began (a resume into a new log dir): the split at its start is
            # not known, so this epoch's components would be cumulative figures, not the epoch's.
            comps = {c: v - prev[c] for c, v in at.items() if c in prev} if prev is not None else {}
            prev = {**(prev or {}), **at} if (prev is not None or at) else None
            epoch = self.epoch_of(anchor)
            out.append(EpochEnergy(epoch if epoch is not None else i, anchor.step, anchor.value, comps, cumulative))
        first = out[0].epoch
        if 0 < first <= len(epochs_j) and all(e.epoch < len(epochs_j) for e in out):
            # The energy report covers the whole fit: the epochs before this log come from its epochs_j.
            cumulative = out[0].cumulative_j - out[0].total_j - sum(epochs_j[:first])
            head = []
            for i in range(first):
                cumulative += epochs_j[i]
                head.append(EpochEnergy(i, -1, epochs_j[i], {}, cumulative))
            out = head + out
        return out

    # Asked at every curve point: computed once (the scalars do not change after the run is read).
    @functools.cached_property
    def _first_logged_epoch(self) -> int | None:
        return self.first_logged_epoch()

    @functools.cached_property
    def _start_wall_time(self) -> float | None:
        return self.scalars.start_wall_time

    def first_logged_epoch(self) -> int | None:
        """The fit's first epoch in this log when the epochs before it are not in it, else ``None``.

        That is a run resumed with ``fit(ckpt_path=...)`` logging into a new version dir, as Lightning's loggers do by
        default: its log holds only the resumed epochs' validations, while the energy report covers the whole fit.
        """
        anchors = self.scalars.series("energy/epoch_J")
        if not anchors:
            return None
        first = self.epoch_of(anchors[0])
        return first if first is not None and first > 0 else None

    def _components_at(self, step: int, total_j: float) -> dict[str, float]:
        """The cumulative per-component energy logged at ``step`` that adds up to ``total_j``.

        Components are logged together, several times at an epoch's last step (a logging window, the epoch end,
        the end of fit); the set whose sum is the epoch-end total is the epoch end's.
        """
        columns = {c: self.scalars.at_step(f"energy/{c}_J", step) for c in COMPONENTS}
        columns = {c: pts for c, pts in columns.items() if pts}
        if not columns:
            return {}
        n = min(len(pts) for pts in columns.values())
        best = min(range(n), key=lambda i: abs(sum(pts[i].value for pts in columns.values()) - total_j))
        return {c: pts[best].value for c, pts in columns.items()}

    # ------------------------------------------------------------------------------------------------ metric
    def metric_name(self, preferred: str | None = None) -> str | None:
        """``preferred`` if it was logged, else the first of :data:`METRIC_CANDIDATES` that was, else ``None``.

        A metric logged per validation dataloader (Lightning's ``<name>/dataloader_idx_N`` with two or more) is
        followed on the first one's, ``<name>/dataloader_idx_0``.
        """
        for name in (preferred,) if preferred is not None else METRIC_CANDIDATES:
            key = self.logged_as(name)
            if key is not None:
                return key
        return None

    def logged_as(self, metric: str) -> str | None:
        """The key ``metric`` was logged under: itself, or the first validation dataloader's; ``None`` if neither."""
        return next((k for k in (metric, f"{metric}/{_FIRST_LOADER}") if k in self.scalars), None)

    def time_at(self, point: Point) -> float | None:
        """Elapsed fit time when ``point`` was logged (``None`` if the log cannot tell).

        GreenReport's ``time/elapsed_s`` logged with it, else TensorBoard's wall clock since the log's first event,
        except in a log that starts mid-fit (:meth:`first_logged_epoch`): that clock starts at the resume, not at the
        fit's start, so the time is not known there.
        """
        logged = self.scalars.with_("time/elapsed_s", point)
        if logged is not None:
            return logged.value
        if self._first_logged_epoch is not None:
            return None
        start = self._start_wall_time
        if point.wall_time is not None and start is not None:
            return point.wall_time - start
        return None

    def fit_series(self, metric: str) -> list[Point]:
        """The values of ``metric`` logged by the fit: without those of a stand-alone ``trainer.validate()``.

        Each validation logs the EnergyMonitor's ``validate/energy/total_J`` before its metrics; each of the fit's
        logs ``validate/energy/epoch_J`` with it (same CSV row, next in written order), a stand-alone one does not. A
        value belongs to the validation it was logged in (:meth:`validation_of`), so a stand-alone validation at the
        same step as one of the fit's (a baseline ``validate()`` before a fit that validates at step 0) is told apart;
        its metrics are not part of the fit's curve (their cumulative energy and elapsed time would be wrong).
        """
        if metric not in self._fit_series:
            fit = {v.order for e in self.scalars.series("validate/energy/epoch_J") if (v := self.validation_of(e))}
            series = self.scalars.series(metric)
            self._fit_series[metric] = [p for p in series if (v := self.validation_of(p)) is None or v.order in fit]
        return list(self._fit_series[metric])

    def validation_of(self, point: Point) -> Point | None:
        """The ``validate/energy/total_J`` of the validation ``point`` was logged in (``None``: none at its step).

        The one in its CSV row, else the last one written before it at its step (the EnergyMonitor logs a validation's
        figures before Lightning logs its metrics), else the first one at its step.
        """
        totals, same_row = self.scalars.in_step_and_row("validate/energy/total_J", point)
        if same_row is not None or not totals:
            return same_row
        before = [t for t in totals if t.order < point.order]
        return before[-1] if before else totals[0]

    def curve(self, metric: str) -> list[CurvePoint]:
        """Every value of ``metric`` the fit logged, with the cumulative energy and time at it."""
        if metric not in self._curves:
            ends = {e.step: e.cumulative_j for e in self.epoch_energy() if e.step >= 0}
            points = []
            for p in self.fit_series(metric):
                energy = ends.get(p.step)
                if energy is None:
                    energy = self.scalars.max_up_to("energy/total_J", p.step)
                points.append(CurvePoint(p.step, self.epoch_of(p), p.value, energy, self.time_at(p)))
            self._curves[metric] = points
        return list(self._curves[metric])

    def final_metric(self, metric: str) -> float | None:
        """The last value of ``metric`` the fit logged."""
        points = self.fit_series(metric)
        return points[-1].value if points else None

    def best_metric(self, metric: str, mode: str) -> float | None:
        """The best value of ``metric`` the fit logged (``mode`` ``"max"`` or ``"min"``)."""
        vals = [p.value for p in self.fit_series(metric) if math.isfinite(p.value)]
        if not vals:
            return None
        return max(vals) if mode == "max" else min(vals)

    def to_target(self, metric: str, target: float, mode: str) -> TargetResult:
        """The first validation at which ``metric`` reached ``target`` (``>=`` for ``max``, ``<=`` for ``min``)."""
        partial = self.first_logged_epoch()
        for cp in self.curve(metric):
            if math.isfinite(cp.value) and (cp.value >= target if mode == "max" else cp.value <= target):
                return TargetResult(
                    metric, target, mode, True, cp.epoch, cp.step, cp.value, cp.energy_j, cp.time_s, partial
                )
        return TargetResult(metric, target, mode, False, logged_from_epoch=partial)

    # ------------------------------------------------------------------------------------------------ model
    def macs(self) -> tuple[float | None, float | None]:
        """(MACs, params) of the final model: GreenReport's final count, else the last prune's.

        GreenReport counts the start (:meth:`dense_macs`) and the end on one input and the whole LightningModule, and
        :meth:`macs_unit` is that input's: ``pruning/macs`` may be counted on another one (a pruned submodule, the
        fixed token ids of a Hugging Face LM), so it is the fallback only, for a run without GreenReport's count.
        """
        model = self.extra("model") or {}
        if model.get("macs") is not None and model.get("macs_start") is not None:
            return float(model["macs"]), model.get("params")
        macs, params = self.scalars.last("pruning/macs"), self.scalars.last("pruning/params")
        if macs is not None:
            return macs.value, params.value if params is not None else None
        return model.get("macs"), model.get("params")

    def tokens_per_sample(self) -> int | None:
        """Tokens in one sample of the model's input when it reads tokens (a language model), else ``None``."""
        tokens = (self.extra("model") or {}).get("tokens_per_sample")
        return int(tokens) if isinstance(tokens, (int, float)) and tokens > 0 else None

    def macs_unit(self) -> tuple[str, float]:
        """What one MAC figure is counted per, and the divisor from per-sample MACs: per token for language models.

        ``("token", tokens_per_sample)`` when the model reads tokens, else ``("sample", 1.0)``.
        """
        tokens = self.tokens_per_sample()
        return ("token", float(tokens)) if tokens else ("sample", 1.0)

    def dense_macs(self) -> float | None:
        """MACs before any prune (from the first prune's MACs × speedup, else the recorded start MACs)."""
        model = self.extra("model") or {}
        if model.get("macs_start") is not None:
            return float(model["macs_start"])
        first = self.scalars.series("pruning/macs")
        speed = self.scalars.series("pruning/speedup")
        if first and speed:
            return first[0].value * speed[0].value
        return model.get("macs")


_SKIP_DIRS = {"checkpoints", "green_report_files", "__pycache__", ".git"}
_MAX_DIRS = 2000  # folders looked into at most: a hint in an error message must not walk a dataset tree


def _runs_below(path: Path, energy_report: str, limit: int = 8, depth: int = 5) -> list[str]:
    """Run directories under ``path``, nearest first, for the error message.

    Up to ``depth`` levels down: ``runs/fp32/lightning_logs/version_0`` is 3. A run directory is not searched further,
    nor are checkpoint and report folders, so a big tree is not walked.
    """
    found: list[str] = []
    level = [path]
    visited = 0
    for _ in range(depth):
        below: list[Path] = []
        for folder in level[: max(0, _MAX_DIRS - visited)]:
            visited += 1
            try:
                children = sorted(c for c in folder.iterdir() if c.is_dir() and c.name not in _SKIP_DIRS)
            except OSError:
                continue
            for child in children:
                if (child / energy_report).is_file():
                    found.append(str(child))
                else:
                    below.append(child)
        if len(found) >= limit or not below:
            break
        level = below
    return found[:limit]


_MAX_JSON_BYTES = 50_000_000  # a JSON file larger than this is a data file, not an energy report


def _energy_reports_in(folder: Path) -> list[Path]:
    """The lightning-green energy reports directly in ``folder`` (JSON files that read as one), sorted."""
    found = []
    for f in sorted(folder.glob("*.json"))[:100]:
        try:
            if f.is_file() and f.stat().st_size <= _MAX_JSON_BYTES:
                read_report(f)
                found.append(f)
        except (OSError, ValueError, RecursionError):
            continue
    return found


def load_run(path: str | os.PathLike[str], name: str | None = None, energy_report: str = ENERGY_REPORT) -> Run:
    """Read a run directory.

    Args:
        path: The run's log dir.
        name: Name of the run in reports; ``None``: ``parent/version_N`` or the folder name.
        energy_report: File name of the energy report in it (``EnergyMonitor(report_filename=...)``). With the
            default, a run dir without ``energy_report.json`` but with one other energy report (JSON) uses that.

    Raises:
        RunDirError: ``path`` is missing, not a directory, has no energy report (the message lists run
            directories found below it), several ones none of which is ``energy_report.json``, or an unreadable one.
    """
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"run directory {os.fspath(path)!r} does not exist.")
    if not p.is_dir():
        raise RunDirError(
            f"{os.fspath(path)!r} is not a directory; pass a run's log dir (e.g. lightning_logs/version_0)."
        )
    report_path = p / energy_report
    if not report_path.is_file() and energy_report == ENERGY_REPORT:
        # EnergyMonitor(report_filename=...) may have named it otherwise: a lone energy report in the dir is the run's.
        found = _energy_reports_in(p)
        if len(found) > 1:
            raise RunDirError(
                f"{os.fspath(path)!r} has no {ENERGY_REPORT} but several lightning-green energy reports "
                f"({', '.join(f.name for f in found)}); name the run's with `--energy-report NAME` "
                "(load_run(energy_report=...))."
            )
        if found:
            report_path = found[0]
    if not report_path.is_file():
        below = _runs_below(p, energy_report)
        hint = (
            f"runs found below it: {', '.join(below)}"
            if below
            else "pass the log dir of a fit run with an EnergyMonitor (e.g. lightning_logs/version_0), or name its "
            "energy report with `--energy-report NAME` (EnergyMonitor's report_filename)"
        )
        raise RunDirError(f"{os.fspath(path)!r} is not a run directory (no {energy_report}); {hint}.")
    try:
        energy = read_report(report_path)
    except (OSError, ValueError) as err:
        raise RunDirError(f"cannot read {os.fspath(report_path)!r}: {err}") from err
    started = energy.get("started_s")
    since = float(started) if isinstance(started, (int, float)) else None
    # The run's own folder first; then the TensorBoard/CSV log dirs the monitor recorded (``logs``), where the first
    # logger (W&B, MLflow) writes no scalars a report can read and a TensorBoard or CSV logger beside it does.
    real = Path(os.path.realpath(p))  # `logs` are relative to the run folder's real path (EnergyMonitor)
    logs = energy.get("logs") if isinstance(energy.get("logs"), list) else []
    where = [p, *(real / d for d in logs if isinstance(d, str) and d)]
    scalars = Scalars("none")
    for folder in where:
        if not folder.is_dir():
            continue
        try:
            scalars = read_scalars(folder, since_s=since)
        except Exception as err:  # a corrupt event file or CSV: say which run, not a traceback from TensorBoard
            raise RunDirError(f"cannot read the logged scalars in {os.fspath(folder)!r}: {err}") from err
        if len(scalars):
            break
    return Run(path=p, energy=energy, scalars=scalars, name=name or _default_name(p))


def _default_name(p: Path) -> str:
    """``parent/version_N`` for Lightning's version folders, else the folder name."""
    p = p.resolve()
    if p.name.startswith("version_") and p.parent.name:
        parent = p.parent.parent.name if p.parent.name == "lightning_logs" and p.parent.parent.name else p.parent.name
        return f"{parent}/{p.name}"
    return p.name
