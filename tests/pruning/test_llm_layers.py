"""LLMPruner's depth pruning (``prune_layers``): whole decoder layers by Block Influence, then width cuts."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from lightning_green.pruning.history import replay  # noqa: E402
from lightning_green.pruning.llm import (  # noqa: E402
    LLMPruner,
    _renumber_paths,
    analyse,
    count_llm_macs,
    replay_llm,
)
from lightning_green.pruning.optim import ModuleSnapshot  # noqa: E402
from lightning_green.testing.hf import tiny_causal_lm  # noqa: E402
from tests.pruning.hf_models import FAMILIES  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 250]])
_OUT_PROJ = {"gpt2": ("attn.c_proj", "mlp.c_proj")}


def _make_identity(model: torch.nn.Module, layer: int) -> None:
    """Zero the attention and MLP output projections of ``layer``: it adds nothing to the residual stream."""
    s = analyse(model)
    block = s.blocks()[layer]
    for name in _OUT_PROJ.get(s.family, ("self_attn.o_proj", "mlp.down_proj")):
        m = block.get_submodule(name)
        with torch.no_grad():
            m.weight.zero_()
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_drops_the_layer_that_changes_nothing(family, tmp_path):
    """A layer whose output is its input has Block Influence 0: it goes, and the model computes the same logits;
    config, layer_idx, KV-cache generation, save_pretrained and replay all follow."""
    model = tiny_causal_lm(family, num_layers=4).eval()
    _make_identity(model, 1)
    before = _logits(model)
    dense = copy.deepcopy(model)
    result = LLMPruner(prune_layers=1).prune(model, ratio=0.0)
    assert result.entries == [["::layers::", True, [1]]]
    blocks = analyse(model).blocks()
    assert model.config.num_hidden_layers == len(blocks) == 3
    idx = [m.layer_idx for b in blocks for m in b.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(idx)) == [0, 1, 2]
    torch.testing.assert_close(_logits(model), before)
    assert result.macs < count_llm_macs(analyse(dense))[0]

    cached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    plain = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded), before)

    fresh = tiny_causal_lm(family, num_layers=4, seed=1).eval()
    replay(fresh, None, result.entries)  # the generic replay dispatches to replay_llm
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(_logits(fresh), before)


def test_layers_then_widths_reach_the_target():
    model = tiny_causal_lm("llama", num_layers=4).eval()
    dense_macs, _ = count_llm_macs(analyse(model))
    pruner = LLMPruner(prune_layers=1)
    result = pruner.prune(model, target_macs=dense_macs / 2)
    assert result.reached and result.macs <= dense_macs / 2
    assert result.entries[0][0] == "::layers::" and len(result.entries[0][2]) == 1
    assert any("::mlp::" in e[0] for e in result.entries[1:])
    assert model.config.num_hidden_layers == 3
    # A second prune of the same run removes no further layer: prune_layers counts in all.
    again = pruner.prune(model, target_macs=dense_macs / 2.5, dense_channels={"layers": [4, 4]})
    assert model.config.num_hidden_layers == 3 and all(e[0] != "::layers::" for e in again.entries)


def test_qwen2_layer_types_follow_the_kept_layers(tmp_path):
    types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    model = tiny_causal_lm(
        "qwen2", num_layers=4, config={"layer_types": types, "use_sliding_window": True, "sliding_window": 4}
    ).eval()
    _make_identity(model, 2)
    before = _logits(model)
    LLMPruner(prune_layers=1).prune(model, ratio=0.0)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert [b.self_attn.layer_type for b in analyse(model).blocks()] == model.config.layer_types
    torch.testing.assert_close(_logits(model), before)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(type(model).from_pretrained(tmp_path).eval()), before)


def test_recorded_block_influence_decides_and_activations_are_renumbered():
    """Influence recorded over training batches wins over a measurement on the example; activation statistics of
    the layers after a removed one follow their new numbers."""
    model = tiny_causal_lm("llama", num_layers=3).eval()
    pruner = LLMPruner(importance="activation", prune_layers=1)
    pruner.observe(model)
    pruner.recording = True
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 16)))
    pruner.recording = False
    assert {f"layers::{i}" for i in range(3)} <= set(pruner._stats)
    # Make the record say layer 0 matters least (a measurement would not: the layers are alike).
    pruner._stats["layers::0"] = torch.zeros(1)
    for i in (1, 2):
        pruner._stats[f"layers::{i}"] = torch.ones(1)
    old_layer1 = analyse(model).blocks()[1]
    stats1 = pruner._stats["mlp::1"].clone()
    down = old_layer1.mlp.down_proj.weight.detach().clone()
    result = pruner.prune(model, ratio=0.5)
    assert result.entries[0] == ["::layers::", True, [0]]
    new0 = analyse(model).blocks()[0]
    assert new0 is old_layer1
    keep = sorted(torch.argsort(stats1, descending=True)[: down.shape[1] // 2].tolist())
    torch.testing.assert_close(new0.mlp.down_proj.weight, down[:, keep])


def test_renumber_paths_moves_gradients_to_the_new_layer_numbers():
    grads = {"model.model.layers.0.mlp.up_proj.weight": 0, "model.model.layers.2.mlp.up_proj.weight": 2, "x": 9}
    assert _renumber_paths(grads, "model.model.layers.", {0: 0, 2: 1}) == {
        "model.model.layers.0.mlp.up_proj.weight": 0,
        "model.model.layers.1.mlp.up_proj.weight": 2,
        "x": 9,
    }
    assert _renumber_paths(grads, "model.model.layers.", {2: 0}) == {
        "model.model.layers.0.mlp.up_proj.weight": 2,
        "x": 9,
    }


def test_ignored_block_is_kept():
    model = tiny_causal_lm("llama", num_layers=3).eval()
    _make_identity(model, 2)
    result = LLMPruner(prune_layers=1, ignored_layers=["model.layers.2"]).prune(model, ratio=0.0)
    assert result.entries[0][2] != [2]


def test_snapshot_puts_a_removed_layer_back():
    """The accuracy guard's rollback restores a removed layer (weights, list, config after sync_config)."""
    model = tiny_causal_lm("mistral", num_layers=3).eval()
    before = _logits(model)
    snapshot = ModuleSnapshot(model)
    pruner = LLMPruner(prune_layers=1)
    pruner.prune(model, ratio=0.25)
    assert model.config.num_hidden_layers == 2
    snapshot.restore(model)
    pruner.structure(model).sync_config()
    assert model.config.num_hidden_layers == 3 and model.config.intermediate_size == 128
    assert [b.self_attn.layer_idx for b in analyse(model).blocks()] == [0, 1, 2]
    torch.testing.assert_close(_logits(model), before)


@pytest.mark.parametrize(
    ("kwargs", "family", "match"),
    [
        ({"prune_layers": 2}, "llama", r"prune_layers=2.*from 0 to 1: LlamaForCausalLM has 2 decoder layers"),
        (
            {"prune_layers": 1, "ignored_layers": ["model.layers.0", "model.layers.1"]},
            "llama",
            r"prune_layers=1.*at most 0: `ignored_layers` keeps 2 of the 2 decoder layers",
        ),
        ({"prune_layers": 1, "config": {"scale_attn_by_inverse_layer_idx": True}}, "gpt2", r"prune_layers=1.*0 for"),
    ],
)
def test_bad_prune_layers_refused(kwargs, family, match):
    config = kwargs.pop("config", None)
    model = tiny_causal_lm(family, **({"config": config} if config else {}))
    with pytest.raises(ValueError, match=match):
        LLMPruner(**kwargs).check_module(model)


def test_replay_refuses_a_layer_history_that_does_not_fit():
    with pytest.raises(ValueError, match=r"removes decoder layers \[5\]"):
        replay_llm(tiny_causal_lm("llama"), [["::layers::", True, [5]]])


def test_heterogeneous_config_refused(monkeypatch):
    """transformers' per-layer overrides (`per_layer_config`) give layers their own shapes: not cut alike, refused."""
    model = tiny_causal_lm("llama")
    monkeypatch.setattr(type(model.config), "is_heterogeneous", property(lambda self: True))
    with pytest.raises(ValueError, match=r"config is heterogeneous \(`per_layer_config`"):
        LLMPruner().check_module(model)
