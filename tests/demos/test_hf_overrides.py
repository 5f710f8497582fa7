"""HFCausalLM(config=...): override values are checked, and what transformers refuses names `config` and the field."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from lightning_green._internal.validation import InvalidArgumentError  # noqa: E402
from lightning_green.demos import HFCausalLM  # noqa: E402

SIZES = {"hidden_size": 64, "num_layers": 1, "num_kv_heads": 2}


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"head_dim": 0}, r"`config\['head_dim'\]` must be an int >= 1 or None; got 0"),
        ({"intermediate_size": 0}, r"`config\['intermediate_size'\]` must be an int >= 1; got 0"),
        ({"num_hidden_layers": True}, r"`config\['num_hidden_layers'\]` must be an int >= 1; got True"),
        ({"num_attention_heads": 2.0}, r"`config\['num_attention_heads'\]` must be an int >= 1; got 2.0"),
        (
            {"num_key_value_heads": 3},
            r"`config\['num_key_value_heads'\]` must be a divisor of num_attention_heads \(4\); got 3",
        ),
        (
            {"num_attention_heads": 3},
            r"`config\['num_attention_heads'\]` must be a multiple of num_key_value_heads \(2\); got 3",
        ),
        (
            {"num_attention_heads": 6},
            r"`config\['num_attention_heads'\]` must be a divisor of hidden_size \(64\), "
            r"or give `config\['head_dim'\]`; got 6",
        ),
        ({"rms_norm_eps": "abc"}, r"`config\['rms_norm_eps'\]` must be a value LlamaConfig accepts; got 'abc' \("),
        ({"hidden_act": "no_such_act"}, r"`config\['hidden_act'\]` must be a value the model can be built with; got"),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "",
)
def test_bad_override_values_name_config_the_field_and_what_is_allowed(config, match):
    with pytest.raises(InvalidArgumentError, match=r"^HFCausalLM\(config=\{.*\}\): " + match):
        HFCausalLM(**SIZES, config=config)


def test_gpt2_overrides_are_checked_by_its_own_field_names():
    with pytest.raises(InvalidArgumentError, match=r"`config\['n_head'\]` must be a divisor of n_embd \(64\); got 3"):
        HFCausalLM(family="gpt2", hidden_size=64, num_layers=1, config={"n_head": 3})
    model = HFCausalLM(family="gpt2", hidden_size=64, num_layers=1, config={"n_inner": None})
    assert model.model.config.n_inner is None  # transformers' default: 4 * n_embd


@pytest.mark.parametrize(
    ("config", "head_dim", "kv_width"),
    [({"num_attention_heads": 8}, 8, 16), ({"hidden_size": 96}, 24, 48), ({"head_dim": 8}, 8, 16)],
    ids=["num_attention_heads", "hidden_size", "head_dim"],
)
def test_the_head_width_follows_overridden_sizes_unless_given(config, head_dim, kv_width):
    model = HFCausalLM(**SIZES, config=config)
    attention = model.model.model.layers[0].self_attn
    assert model.model.config.head_dim == head_dim and attention.k_proj.out_features == kv_width
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 256)
