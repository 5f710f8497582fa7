"""The precision modes AMPScheduler switches between, their autocast dtypes and their logged codes."""

from __future__ import annotations

import torch

__all__ = ["FP32", "LOW_MODES", "MODES", "MODE_CODES", "SCHEDULE_VALUES", "autocast_dtype", "mode_code"]

FP32 = "32-true"
#: Lightning precision strings a schedule may name (plus ``"auto"``, the policy's low precision).
MODES = ("32-true", "bf16-mixed", "16-mixed")
LOW_MODES = ("bf16-mixed", "16-mixed")
SCHEDULE_VALUES = (*MODES, "auto")

#: ``precision/mode`` is logged as a number so every logger can plot it: fp32 → 32, fp16 → 16 and bf16 → 16.5
#: (a 16-bit format, drawn just above fp16 so the two stay apart in a plot).
MODE_CODES = {"32-true": 32.0, "16-mixed": 16.0, "bf16-mixed": 16.5}
#: Short names of the modes, for reports and plots.
SHORT_NAMES = {"32-true": "fp32", "16-mixed": "fp16", "bf16-mixed": "bf16"}


def mode_code(mode: str) -> float:
    """The number logged as ``precision/mode`` for ``mode``.

    Example:
        >>> mode_code("32-true"), mode_code("16-mixed"), mode_code("bf16-mixed")
        (32.0, 16.0, 16.5)
    """
    return MODE_CODES[mode]


def autocast_dtype(mode: str) -> torch.dtype:
    """The dtype of autocast regions (matmuls, convolutions) under ``mode``.

    Example:
        >>> autocast_dtype("bf16-mixed")
        torch.bfloat16
    """
    return {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[mode]
