"""Export a trained (pruned) model and measure what a prediction costs.

* :func:`export_checkpoint` / :func:`export_model`: ONNX (``torch.onnx.export(..., dynamo=True)``, dynamic batch
  axis), ``torch.export`` (``.pt2``) or Hugging Face ``save_pretrained``, each checked against the original model's
  outputs within a printed tolerance, with the file size and parameter count.
* :func:`bench_inference`: latency (median, p90), throughput and energy per 1,000 predictions (or tokens) per format
  (``eager``, ``bf16``, ``onnx``, ``torch-export``) and batch size, dense vs pruned side by side in alternating order,
  energy labelled measured/estimated.
* :func:`attach_to_run`: store a benchmark as the "inference cost" section of a run's green report.

The same from the command line: ``lightning-green export ...`` and ``lightning-green bench-inference ...``.
ONNX needs the ``[export]`` extra (``onnx``, ``onnxscript``, ``onnxruntime``), imported only when used.
"""

from lightning_green.export.api import export_checkpoint
from lightning_green.export.bench import BENCH_FORMATS, REPORT_ROW_FIELDS, BenchResult, BenchRow, bench_inference
from lightning_green.export.formats import FORMATS, CheckResult, ExportError, ExportResult, export_model
from lightning_green.export.load import load_checkpoint_module
from lightning_green.export.report import attach_to_run, find_run_dir

__all__ = [
    "BENCH_FORMATS",
    "FORMATS",
    "REPORT_ROW_FIELDS",
    "BenchResult",
    "BenchRow",
    "CheckResult",
    "ExportError",
    "ExportResult",
    "attach_to_run",
    "bench_inference",
    "export_checkpoint",
    "export_model",
    "find_run_dir",
    "load_checkpoint_module",
]
