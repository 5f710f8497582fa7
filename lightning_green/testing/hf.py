"""Tiny Hugging Face causal language models of every family lightning-green supports, for tests and benchmarks.

Each family's tiny config keeps what makes the family hard to prune: Llama grouped-query attention (4 query / 2 KV
heads), Mistral the same with its own classes, Qwen2 tied embeddings and q/k/v biases, Qwen3 q/k norms (and GQA),
GPT-2 the fused ``c_attn`` Conv1D, Phi-3 the fused ``qkv_proj`` and ``gate_up_proj``. Byte vocabulary (256), random
initialisation (seeded), nothing downloaded; ``transformers`` is imported when a model is built.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_green.demos.hf import FAMILIES, HFCausalLM, causal_lm_config

__all__ = ["TINY_FAMILIES", "tiny_causal_lm", "tiny_causal_lm_config", "tiny_hf_module"]

#: Per family: the sizes (and feature switches) of its tiny config.
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"num_heads": 4, "num_kv_heads": 2},
    "mistral": {"num_heads": 4, "num_kv_heads": 2},
    "qwen2": {"num_heads": 4, "num_kv_heads": 2, "tie_word_embeddings": True},
    "qwen3": {"num_heads": 4, "num_kv_heads": 2},
    "gpt2": {"num_heads": 4},
    "phi3": {"num_heads": 4, "num_kv_heads": 2},
}
assert set(TINY_FAMILIES) == set(FAMILIES)


def _sizes(family: str, hidden_size: int, num_layers: int, intermediate_size: int | None, **overrides: Any) -> dict:
    if family not in TINY_FAMILIES:
        # causal_lm_config raises the house message for an unknown family
        return {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": 4}
    sizes = {
        **TINY_FAMILIES[family],
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "intermediate_size": intermediate_size if intermediate_size is not None else 2 * hidden_size,
        "max_positions": 128,
    }
    sizes.update(overrides)
    return sizes


def tiny_causal_lm_config(
    family: str, hidden_size: int = 64, num_layers: int = 2, intermediate_size: int | None = None, **overrides: Any
) -> Any:
    """The tiny ``transformers`` config of ``family`` (``overrides``: sizes as :func:`causal_lm_config` names them).

    Example:
        >>> cfg = tiny_causal_lm_config("qwen2")
        >>> type(cfg).__name__, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.tie_word_embeddings
        ('Qwen2Config', 4, 2, True)
    """
    sizes = _sizes(family, hidden_size, num_layers, intermediate_size, **overrides)
    config = sizes.pop("config", None)
    return causal_lm_config(family, **sizes, overrides=config, owner="tiny_causal_lm_config")


def tiny_causal_lm(
    family: str,
    hidden_size: int = 64,
    num_layers: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
    attn_implementation: str = "eager",
    **overrides: Any,
) -> Any:
    """A tiny randomly initialised ``AutoModelForCausalLM`` of ``family`` (fp32, eval mode off: as built).

    Example:
        >>> model = tiny_causal_lm("gpt2", num_layers=1)
        >>> type(model).__name__, model(torch.zeros(1, 8, dtype=torch.long)).logits.shape
        ('GPT2LMHeadModel', torch.Size([1, 8, 256]))
    """
    from transformers import AutoModelForCausalLM

    cfg = tiny_causal_lm_config(family, hidden_size, num_layers, intermediate_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)


def tiny_hf_module(
    family: str, hidden_size: int = 64, num_layers: int = 2, intermediate_size: int | None = None, seed: int = 0, **kw
) -> HFCausalLM:
    """A tiny :class:`~lightning_green.demos.HFCausalLM` of ``family`` (``kw``: its other constructor arguments).

    Example:
        >>> module = tiny_hf_module("phi3", num_layers=1)
        >>> type(module.model).__name__, module.model.config.num_key_value_heads
        ('Phi3ForCausalLM', 2)
    """
    sizes = _sizes(family, hidden_size, num_layers, intermediate_size)
    sizes.update(kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HFCausalLM(family=family, **sizes)
