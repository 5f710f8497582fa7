"""Layers torch-pruning's MAC counter does not know, counted like the ``nn.Linear`` they are.

Hugging Face's ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``) is a linear layer with a transposed weight;
torch-pruning 1.6's ``count_ops_and_params`` counts it as zero, so a GPT-2's MACs would be only its ``lm_head``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from torch_pruning.utils import op_counter

__all__ = ["extra_linear_types", "linear_like_counted"]


def extra_linear_types() -> list[type]:
    """Linear-like layer classes of libraries already imported (no import is triggered here)."""
    types: list[type] = []
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    if isinstance(conv1d, type):
        types.append(conv1d)
    return types


@contextlib.contextmanager
def linear_like_counted() -> Iterator[None]:
    """Within: torch-pruning's counter counts :func:`extra_linear_types` as linear layers.

    ``CUSTOM_MODULES_MAPPING`` is torch-pruning's own table for layer types it does not know (checked on 1.6.1);
    ``count_ops_and_params`` empties it after every count, and this context empties it on the way out as well, so
    nothing outlives one count.

    Example:
        >>> import torch, torch_pruning as tp
        >>> with linear_like_counted():
        ...     macs, _ = tp.utils.count_ops_and_params(torch.nn.Linear(4, 2), torch.zeros(1, 4))
        >>> macs, op_counter.CUSTOM_MODULES_MAPPING
        (10.0, {})
    """
    types = extra_linear_types()
    if not types or not hasattr(op_counter, "CUSTOM_MODULES_MAPPING"):
        yield
        return
    op_counter.CUSTOM_MODULES_MAPPING = {t: op_counter.linear_flops_counter_hook for t in types}
    try:
        yield
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = {}
