"""Helpers shared by the benchmark scripts (side-by-side ratios in one process, never timed assertions)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from lightning.pytorch import Callback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lightning_green.precision.capability import cpu_bf16_supported  # noqa: E402


class EpochTimer(Callback):
    """Wall time of each training epoch (put it last in the callbacks so the others' epoch-end work counts)."""

    def __init__(self) -> None:
        self.epoch_s: list[float] = []
        self.epoch_cpu_s: list[float] = []  # process CPU time: far less sensitive to a shared machine's neighbours
        self._t0 = self._c0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        self.epoch_s.append(time.perf_counter() - self._t0)
        self.epoch_cpu_s.append(time.process_time() - self._c0)


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(values))


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_bf16": cpu_bf16_supported(),  # bf16 figures on a CPU depend on it (~15x slower without)
    }


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (fewer rounds/epochs)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def emit(results: dict[str, Any], path: str | None) -> None:
    """Print results as JSON (and write them to ``path``)."""
    print(json.dumps(results, indent=2))
    save_json(results, path)


def save_json(results: dict[str, Any], path: str | None) -> None:
    """Write ``results`` as JSON to ``path`` (nothing when ``path`` is None)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(results, indent=2) + "\n")
