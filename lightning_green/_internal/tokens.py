"""Is a model input a batch of tokens? Then MACs are counted per token, not per sample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["tokens_per_sample"]


def tokens_per_sample(example: Any) -> int | None:
    """Token positions in one sample of ``example`` when it is token ids (``None`` otherwise).

    Token ids are an integer tensor ``(batch, time)``, or a dict (``BatchEncoding``) with such ``input_ids``. The count
    is ``time``, padding included: the model computes every position, so the MACs counted on ``example`` are spread
    over all of them (an ``attention_mask`` would make MACs per token depend on how padded that one batch was, not on
    the model).

    Example:
        >>> tokens_per_sample(torch.zeros(1, 64, dtype=torch.long)), tokens_per_sample(torch.zeros(1, 3, 8, 8))
        (64, None)
        >>> tokens_per_sample({"input_ids": torch.zeros(2, 8, dtype=torch.long),
        ...                    "attention_mask": torch.tensor([[1] * 8, [1] * 4 + [0] * 4])})
        8
    """
    if isinstance(example, Mapping):
        example = example.get("input_ids")
    elif isinstance(example, (tuple, list)) and example:
        example = example[0]
    if not isinstance(example, torch.Tensor) or example.dim() != 2 or example.is_floating_point():
        return None
    if example.dtype == torch.bool or example.shape[0] == 0 or example.shape[1] == 0:
        return None
    return int(example.shape[1])
