"""The green report: plots and tables of a finished run, and side-by-side comparisons of several runs.

Built from the files a run leaves in its log dir — ``energy_report.json`` (:class:`~lightning_green.EnergyMonitor`)
and the logger's scalars (TensorBoard event files or CSVLogger's ``metrics.csv``) — so it can be regenerated at
any time: ``lightning-green report RUN_DIR [RUN_DIR ...]``. :class:`~lightning_green.GreenReport` writes it at
the end of fit.
"""

from lightning_green.report.compare import Comparison, ComparisonRow, compare_runs, format_comparison, write_comparison
from lightning_green.report.document import Document, ReportFiles
from lightning_green.report.green import build_report, write_report
from lightning_green.report.run import CurvePoint, EpochEnergy, Run, RunDirError, TargetResult, load_run, metric_mode
from lightning_green.report.scalars import Point, Scalars, read_scalars

__all__ = [
    "Comparison",
    "ComparisonRow",
    "CurvePoint",
    "Document",
    "EpochEnergy",
    "Point",
    "ReportFiles",
    "Run",
    "RunDirError",
    "Scalars",
    "TargetResult",
    "build_report",
    "compare_runs",
    "format_comparison",
    "load_run",
    "metric_mode",
    "read_scalars",
    "write_comparison",
    "write_report",
]
