"""LLMPruner on tiny Hugging Face causal LMs of every supported family (no Trainer)."""

from __future__ import annotations

import copy
import time

import pytest
import torch

pytest.importorskip("transformers")

import transformers as tf  # noqa: E402

from lightning_green.pruning.engine import ChannelPruner  # noqa: E402
from lightning_green.pruning.history import replay  # noqa: E402
from lightning_green.pruning.llm import LLMPruner, analyse, count_llm_macs, is_llm_entry, replay_llm  # noqa: E402
from tests.pruning.hf_models import FAMILIES, tiny_lm  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 250]])


@pytest.fixture(scope="module", params=FAMILIES)
def pruned(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, torch.nn.Module, object, float]:
    """(family, dense model, the same model pruned by half of every width, the result, dense MACs)."""
    family = request.param
    dense = tiny_lm(family).eval()
    model = copy.deepcopy(dense)
    macs, _ = count_llm_macs(analyse(model))
    result = LLMPruner(prune_hidden=family != "gpt2").prune(model, ratio=0.5)
    return family, dense, model.eval(), result, macs


def test_macs_fall(pruned):
    family, _, model, result, dense_macs = pruned
    assert result.entries and all(is_llm_entry(e) for e in result.entries)
    # GPT-2 keeps its heads and residual width (its config cannot express them cut): only its MLP shrinks.
    assert result.macs < (0.85 if family == "gpt2" else 0.4) * dense_macs
    assert result.macs == count_llm_macs(analyse(model))[0]


def test_config_matches_weights(pruned):
    """A model built from the pruned config has exactly the pruned shapes (so from_pretrained can load it)."""
    family, dense, model, _, _ = pruned
    fresh = type(model)(copy.deepcopy(model.config))
    want = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == want
    assert want != {k: v.shape for k, v in dense.state_dict().items()}


def test_generate_same_with_and_without_cache(pruned):
    _, _, model, _, _ = pruned
    with_cache = model.generate(IDS, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    without = model.generate(IDS, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert with_cache.shape[1] == IDS.shape[1] + 8
    assert torch.equal(with_cache, without)


def test_save_pretrained_round_trip(pruned, tmp_path):
    _, _, model, _, _ = pruned
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits)


def test_replay_rebuilds_the_pruned_model(pruned):
    """The history entries cut a fresh dense model to the same architecture; its weights then load strictly."""
    family, _, model, result, _ = pruned
    fresh = tiny_lm(family, seed=1).eval()
    lineage = replay(fresh, None, result.entries)  # the generic replay dispatches to replay_llm
    assert len(lineage) > 0
    fresh.load_state_dict(model.state_dict())
    fields = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size", "n_inner")
    assert {f: getattr(fresh.config, f, None) for f in fields} == {f: getattr(model.config, f, None) for f in fields}
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits)


def test_tied_embeddings_stay_one_tensor(pruned):
    family, dense, model, _, _ = pruned
    tied = dense.get_input_embeddings().weight is dense.get_output_embeddings().weight
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    if family in ("qwen2", "gpt2"):
        assert tied


def test_gqa_keeps_whole_kv_groups():
    """Removing a KV head removes the query heads that read it, and nothing else: the survivors are unchanged."""
    dense = tiny_lm("llama").eval()  # 4 query heads, 2 KV heads, head_dim 16
    model = copy.deepcopy(dense)
    result = LLMPruner().prune(model, ratio=0.5)
    heads = {e[0]: e[2] for e in result.entries if "::heads::" in e[0]}
    assert set(heads) == {"::heads::0", "::heads::1"}
    for layer, removed in heads.items():
        (gone,) = removed
        kept = 1 - gone
        d, m = dense.model.layers[int(layer[-1])].self_attn, model.model.layers[int(layer[-1])].self_attn
        torch.testing.assert_close(m.q_proj.weight, d.q_proj.weight[kept * 32 : (kept + 1) * 32])
        torch.testing.assert_close(m.k_proj.weight, d.k_proj.weight[kept * 16 : (kept + 1) * 16])
        torch.testing.assert_close(m.v_proj.weight, d.v_proj.weight[kept * 16 : (kept + 1) * 16])
        torch.testing.assert_close(m.o_proj.weight, d.o_proj.weight[:, kept * 32 : (kept + 1) * 32])
        assert m.num_key_value_groups == 2
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)


def test_phi3_fused_qkv_and_gate_up_cut_together():
    dense = tiny_lm("phi3").eval()
    model = copy.deepcopy(dense)
    result = LLMPruner(importance="magnitude-l1").prune(model, ratio=0.25)
    (removed,) = [e[2] for e in result.entries if e[0] == "::mlp::0"]
    kept = torch.tensor([i for i in range(128) if i not in removed])
    d, m = dense.model.layers[0].mlp, model.model.layers[0].mlp
    torch.testing.assert_close(m.gate_up_proj.weight, d.gate_up_proj.weight[torch.cat([kept, kept + 128])])
    torch.testing.assert_close(m.down_proj.weight, d.down_proj.weight[:, kept])
    assert model.config.intermediate_size == 96


def test_target_macs_reached_with_few_cuts():
    model = tiny_lm("llama")
    pruner = LLMPruner()
    dense, _ = count_llm_macs(analyse(model))
    result = pruner.prune(model, target_macs=dense / 1.5)
    assert result.reached and result.macs <= dense / 1.5
    assert result.macs > dense / 2.2  # the smallest cut that reaches it, not a much larger one


@pytest.mark.parametrize("importance", ["magnitude-l1", "magnitude-l2", "taylor", "lamp", "random", "activation"])
def test_every_importance_prunes(importance):
    model = tiny_lm("qwen2")
    pruner = LLMPruner(importance=importance)
    gradients = None
    if importance == "taylor":
        model(input_ids=IDS, labels=IDS).loss.backward()
        gradients = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    if importance == "activation":
        pruner.observe(model)
        pruner.recording = True
        with torch.no_grad():
            model(input_ids=IDS)
        pruner.recording = False
    result = pruner.prune(model, ratio=0.25, gradients=gradients)
    assert model.config.intermediate_size == 96
    assert all(p.grad is None for p in model.parameters())
    pruner.release()
    assert result.entries


def test_a_non_finite_batch_adds_nothing_to_the_recorded_activations_and_block_influence():
    # A batch whose forward went NaN (a step AMPScheduler skips) made every activation sum and Block Influence NaN:
    # the prune then cut the first units and layer by index.
    from lightning_green.testing.hf import tiny_causal_lm

    def record(model, batches):
        pruner = LLMPruner(importance="activation", prune_layers=1)
        pruner.observe(model)
        pruner.recording = True
        with torch.no_grad():
            for ids, poison in batches:
                handle = model.model.embed_tokens.register_forward_hook(
                    lambda mod, args, out, poison=poison: out * float("nan") if poison else None
                )
                model(input_ids=ids)
                handle.remove()
        recorded = {k: v.clone() for k, v in pruner.recorded.items()}
        pruner.release()
        return recorded

    model = tiny_causal_lm("llama", num_layers=3).eval()
    clean = record(model, [(IDS, False)])
    mixed = record(model, [(IDS, False), (IDS, True)])
    assert set(mixed) == set(clean) and {"layers::0", "mlp::0", "heads::0"} <= set(clean)
    for key, value in clean.items():
        torch.testing.assert_close(mixed[key], value, msg=key)
    # An inf in one unit leaves that batch out of the whole layer: masking the unit alone ranked the most active
    # unit (the one that overflowed) least, so it was cut first.
    up = model.model.layers[0].mlp.up_proj
    handle = up.register_forward_hook(lambda mod, args, out: out.index_fill(-1, torch.tensor([5]), float("inf")))
    pruner = LLMPruner(importance="activation")
    pruner.observe(model)
    pruner.recording = True
    with torch.no_grad():
        model(input_ids=IDS)  # the overflowing batch
    handle.remove()
    with torch.no_grad():
        model(input_ids=IDS)
    torch.testing.assert_close(pruner.recorded["mlp::0"], clean["mlp::0"])
    pruner.release()
    # Nothing finite recorded: refused, not a cut by index.
    pruner = LLMPruner(importance="activation")
    pruner.observe(model)
    pruner.recording = True
    handle = model.model.embed_tokens.register_forward_hook(lambda mod, args, out: out * float("nan"))
    with torch.no_grad():
        model(input_ids=IDS)
    handle.remove()
    with pytest.raises(ValueError, match=r"no \(finite\) activations were recorded for mlp of layer 0"):
        pruner.prune(model, ratio=0.25)


def test_activation_importance_keeps_the_active_units():
    """Units that carry no activation (zeroed up_proj rows) are the ones activation importance removes."""
    model = tiny_lm("llama")
    silent = [3, 10, 50, 77]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[silent] = 0.0
    pruner = LLMPruner(importance="activation")
    pruner.observe(model)
    pruner.recording = True
    with torch.no_grad():
        model(input_ids=IDS)
    result = pruner.prune(model, ratio=4 / 128)
    assert {tuple(e[2]) for e in result.entries if "::mlp::" in e[0]} == {tuple(silent)}


def test_analysis_is_fast_and_linear_in_layers():
    def cost(layers: int) -> float:
        cfg = tf.LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=layers,
        )
        model = tf.LlamaForCausalLM(cfg)
        start = time.perf_counter()
        s = analyse(model)
        groups = s.groups(["mlp", "heads", "hidden"])
        assert len(groups) == 2 * layers + 1
        return time.perf_counter() - start

    assert cost(8) < 1.0


# ------------------------------------------------------------------------------------------------ refusals
def _refused_fast(model: torch.nn.Module, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        LLMPruner().check_module(torch.nn.ModuleDict({"lm": model}))
    assert time.perf_counter() - start < 1.0


def test_refuses_mixture_of_experts_fast():
    cfg = tf.MixtralConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
    )
    _refused_fast(tf.MixtralForCausalLM(cfg), r"cannot prune MixtralForCausalLM at 'lm': it is a mixture-of-experts")


def test_refuses_encoder_decoder_fast():
    cfg = tf.BartConfig(
        vocab_size=256,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
    )
    _refused_fast(tf.BartForConditionalGeneration(cfg), r": it is an encoder-decoder model \('bart'\)")


def test_refuses_state_space_model_fast():
    cfg = tf.MambaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, state_size=4)
    _refused_fast(tf.MambaForCausalLM(cfg), r": it is a state-space model \('mamba'\)")


def test_refuses_unknown_family_fast():
    cfg = tf.OPTConfig(
        vocab_size=256, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32
    )
    _refused_fast(tf.OPTForCausalLM(cfg), r": its model_type 'opt' is not a family it knows \(supported model_types")


def test_refuses_custom_attention_fast():
    model = tiny_lm("llama")

    class MyAttention(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("never called")

    model.model.layers[1].self_attn = MyAttention()
    _refused_fast(
        model, r"layer 1 has MyAttention at 'self_attn' without 'self_attn.q_proj', where a llama block has Linear"
    )


def test_refuses_a_model_without_logits():
    model = tf.LlamaModel(
        tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    )
    _refused_fast(model, r"LlamaModel at 'lm': it has no language-model head, so its forward returns no logits")


# ----------------------------------------------------------------------------------------------- bad input
def test_num_heads_must_name_attention():
    with pytest.raises(ValueError, match=r"num_heads=.*keyed by attention projections.*'model.layers.0.mlp.up_proj'"):
        LLMPruner(num_heads={"model.layers.0.mlp.up_proj": 4}).check_module(tiny_lm("llama"))


def test_num_heads_must_match_config():
    with pytest.raises(ValueError, match=r"`num_heads` must be 4 for 'model.layers.0.self_attn.q_proj'"):
        LLMPruner(num_heads={"model.layers.0.self_attn.q_proj": 8}).check_module(tiny_lm("llama"))


def test_ratio_removing_every_head_refused():
    with pytest.raises(ValueError, match=r"pruning_ratio=1.0.*would remove every head of a layer"):
        LLMPruner().prune(tiny_lm("llama"), ratio=1.0)
    pattern = r"pruning_ratio=0.8.*would remove every attention head \(KV group\) of each layer \(2 of 2\)"
    with pytest.raises(ValueError, match=pattern):
        LLMPruner().prune(tiny_lm("llama"), ratio=0.8)
    LLMPruner(ignored_layers=["*self_attn*"]).check_ratio(tiny_lm("llama"), 0.8)  # heads kept: allowed


def test_coarse_heads_follow_an_iterative_schedule():
    """Two KV groups under step ratios 0.25 then 1/3 (a linear schedule to 0.5): 2 -> 2 -> 1."""
    model = tiny_lm("llama")
    pruner = LLMPruner()
    dense = pruner.channels(model)
    pruner.prune(model, ratio=0.25, dense_channels=dense)
    assert model.config.num_key_value_heads == 2 and model.config.intermediate_size == 96
    pruner.prune(model, ratio=1 / 3, dense_channels=dense)
    assert model.config.num_key_value_heads == 1 and model.config.intermediate_size == 64


def test_importance_must_fit_llms():
    with pytest.raises(ValueError, match=r"importance='bn-scale'.*for a Hugging Face causal LM"):
        LLMPruner(importance="bn-scale").check_module(tiny_lm("llama"))


def test_activation_without_records_refused():
    with pytest.raises(ValueError, match=r"no \(finite\) activations were recorded for mlp of layer 0"):
        LLMPruner(importance="activation").prune(tiny_lm("llama"), ratio=0.25)


def test_gpt2_residual_width_refused():
    with pytest.raises(ValueError, match=r"prune_hidden=True.*False for GPT-2"):
        LLMPruner(prune_hidden=True).check_module(tiny_lm("gpt2"))
    # The pruner alone (the README's `LLMPruner().prune(...)`) cut only the tied embedding, and the model no longer ran.
    model = tiny_lm("gpt2")
    shapes = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match=r"prune_hidden=True.*False for GPT-2"):
        LLMPruner(prune_hidden=True).prune(model, ratio=0.5)
    assert [p.shape for p in model.parameters()] == shapes


def test_ignored_layers_stop_a_kind_and_must_match():
    model = tiny_lm("llama")
    pruner = LLMPruner(ignored_layers=["model.layers.*.self_attn"])
    result = pruner.prune(model, ratio=0.5)
    assert model.config.num_key_value_heads == 2 and model.config.intermediate_size == 64
    assert not any("::heads::" in e[0] for e in result.entries)
    with pytest.raises(ValueError, match=r"'nope\.\*' matches none"):
        LLMPruner(ignored_layers=["nope.*"]).check_module(model)


def test_no_hf_model_is_not_mine():
    assert analyse(torch.nn.Linear(2, 2)) is None
    ChannelPruner().check_module(torch.nn.Sequential(torch.nn.Linear(2, 2)))  # the generic path is unchanged


def test_replay_llm_refuses_a_history_of_another_model():
    with pytest.raises(ValueError, match=r"cuts mlp of layer '5', which the model lacks"):
        replay_llm(tiny_lm("llama"), [["::mlp::5", True, [0]]])


def test_rollback_restores_weights_and_config():
    """The accuracy guard's ModuleSnapshot puts the weights back; sync_config then makes the config follow."""
    from lightning_green.pruning.optim import ModuleSnapshot

    model = tiny_lm("phi3").eval()
    with torch.no_grad():
        before = model(IDS).logits
    snapshot = ModuleSnapshot(model)
    pruner = LLMPruner(prune_hidden=True)
    pruner.prune(model, ratio=0.5)
    snapshot.restore(model)
    pruner.structure(model).sync_config()
    assert (model.config.intermediate_size, model.config.num_key_value_heads, model.config.hidden_size) == (128, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, before)


def test_mac_count_copies_no_weights(monkeypatch):
    # torch-pruning's counter deep-copies the model it is given: for an LLM on an accelerator that is its memory
    # again, so the count runs on a meta-device copy (as count_macs_params does for every other model).
    model = tiny_lm("llama")
    copied = []
    real = copy.deepcopy

    def spy(obj, memo=None):
        out = real(obj, memo)
        if isinstance(obj, torch.nn.Module):
            copied.extend(p.device.type for p in out.parameters())
        return out

    monkeypatch.setattr(copy, "deepcopy", spy)
    macs, params = count_llm_macs(analyse(model), IDS)
    assert copied and set(copied) == {"meta"}
    assert params == sum(p.numel() for p in model.parameters()) and macs > params * IDS.shape[1] / 2
    copied.clear()
    result = LLMPruner().prune(model, IDS, target_macs=macs / 1.5)  # the search's layer-wise count too
    assert result.reached and copied and set(copied) == {"meta"}


def test_looking_for_an_hf_model_does_not_load_transformers_modeling():
    """`import transformers` (torchmetrics does it) is lazy; finding no HF model must not load its models (~0.6 s)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, transformers\n"
        "from lightning_green.pruning.llm import analyse, find_hf_model\n"
        "net = torch.nn.Sequential(torch.nn.Linear(2, 2))\n"
        "assert find_hf_model(net) is None and analyse(net) is None\n"
        "assert 'transformers.modeling_utils' not in sys.modules, 'loaded'\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "                  num_attention_heads=2, num_key_value_heads=1)\n"
        "wrapped = torch.nn.ModuleDict({'lm': LlamaForCausalLM(cfg)})\n"
        "path, model = find_hf_model(wrapped)\n"
        "assert path == 'lm' and model is wrapped['lm']\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
