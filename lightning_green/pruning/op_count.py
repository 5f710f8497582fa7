"""Linear layers as torch-pruning's MAC counter should count them.

Hugging Face's ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``) is a linear layer with a transposed weight;
torch-pruning 1.6's ``count_ops_and_params`` counts it as zero, so a GPT-2's MACs would be only its ``lm_head``.
And its ``nn.Linear`` count adds the bias once per call, not once per output row: per sample, a batch of 16 counted
fewer MACs than a batch of 1 (``8.125`` against ``10`` for ``nn.Linear(4, 2)``). Both are counted here with one hook:
a MAC per weight per row, and an add per output element for the bias, as torch-pruning counts convolutions.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

from torch import nn
from torch_pruning.utils import op_counter

__all__ = ["extra_linear_types", "linear_like_counted", "linear_macs_hook"]


def extra_linear_types() -> list[type]:
    """Linear-like layer classes of libraries already imported (no import is triggered here)."""
    types: list[type] = []
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    if isinstance(conv1d, type):
        types.append(conv1d)
    return types


def linear_macs_hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
    """Torch-pruning counter hook: ``in * out`` MACs per row of the input, plus one add per output element (bias)."""
    rows = math.prod(inputs[0].shape[:-1])
    bias = output.numel() if getattr(module, "bias", None) is not None else 0
    module.__flops__ += int(rows * inputs[0].shape[-1] * output.shape[-1] + bias)


@contextlib.contextmanager
def linear_like_counted() -> Iterator[None]:
    """Within: torch-pruning counts ``nn.Linear`` and :func:`extra_linear_types` with :func:`linear_macs_hook`.

    ``CUSTOM_MODULES_MAPPING`` is torch-pruning's own table for layer types it does not know, which it consults before
    its own (checked on 1.6.1); ``count_ops_and_params`` empties it after every count, and this context empties it on
    the way out as well, so nothing outlives one count.

    Example:
        >>> import torch, torch_pruning as tp
        >>> def per_sample(batch):
        ...     with linear_like_counted():  # one count per context: torch-pruning empties its table after a count
        ...         return tp.utils.count_ops_and_params(torch.nn.Linear(4, 2), torch.zeros(batch, 4))[0]
        >>> per_sample(1), per_sample(16), op_counter.CUSTOM_MODULES_MAPPING
        (10.0, 10.0, {})
    """
    if not hasattr(op_counter, "CUSTOM_MODULES_MAPPING"):
        yield
        return
    op_counter.CUSTOM_MODULES_MAPPING = {t: linear_macs_hook for t in (nn.Linear, *extra_linear_types())}
    try:
        yield
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = {}
