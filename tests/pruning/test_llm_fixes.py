"""LLMPruner keeps the config saveable, prunes the trained HF model, and leaves frozen and ignored modules whole."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import transformers as tf  # noqa: E402
from lightning.pytorch import LightningModule, Trainer  # noqa: E402

from lightning_green import StructuredPruning  # noqa: E402
from lightning_green.pruning import llm  # noqa: E402
from lightning_green.pruning.llm import LLMPruner, analyse, find_hf_model  # noqa: E402
from lightning_green.testing.hf import tiny_causal_lm  # noqa: E402
from tests.helpers import make_trainer  # noqa: E402
from tests.pruning.hf_models import token_data  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 250]])


def _round_trip(model: torch.nn.Module, path) -> None:
    """``save_pretrained`` → ``from_pretrained`` gives a model with the same logits (the config validates)."""
    model.eval().save_pretrained(path)
    loaded = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits)


def _mha_llama(heads: int) -> torch.nn.Module:
    """Llama without grouped-query attention (as Llama-2-7B), 128 wide."""
    return tiny_causal_lm("llama", hidden_size=128, num_heads=heads, num_kv_heads=heads)


def _longrope_phi3() -> torch.nn.Module:
    """Phi-3 with longrope factors for 32 rotary dimensions (as the Phi-3-*-128k configs)."""
    cfg = tf.Phi3Config(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0] * 16,
            "long_factor": [1.5] * 16,
        },
    )
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg)


def _target_prunes(model: torch.nn.Module, pruner: LLMPruner, speedups: tuple[float, ...]) -> tuple[float, bool]:
    """Prune to each speedup in turn (as a schedule does); the last speedup reached and whether it was reached."""
    dense, _ = pruner.count(model)
    channels = pruner.channels(model)
    for speedup in speedups:
        result = pruner.prune(model, target_macs=dense / speedup, dense_channels=channels)
    return dense / result.macs, result.reached


# ------------------------------------------------------------------------------------------ valid configs
@pytest.mark.parametrize("heads", [4, 8])
def test_llama_mha_target_keeps_heads_dividing_hidden(heads, tmp_path):
    """The README preset on a Llama without GQA: 8 heads of 128 go to a count LlamaConfig accepts, near the target."""
    model = _mha_llama(heads)
    with pytest.warns(UserWarning, match=r"requires hidden_size to be a multiple of num_attention_heads"):
        speedup, reached = _target_prunes(model, LLMPruner(), (1.25, 1.5))
    cfg = model.config
    assert reached and speedup < 1.6  # the MLP makes up what the heads cannot: no overshoot to 2x
    assert cfg.hidden_size % cfg.num_attention_heads == 0
    _round_trip(model, tmp_path)


@pytest.mark.parametrize(("ratio", "heads"), [(0.25, 4), (0.5, 2)])
def test_llama_head_ratio_rounds_to_an_accepted_count(ratio, heads, tmp_path):
    """4 heads of 128 at ratio 0.25 would leave 3: the nearest count LlamaConfig accepts, on a tie the larger."""
    model = tiny_causal_lm("llama", hidden_size=128, num_heads=4, num_kv_heads=4)
    LLMPruner().prune(model, ratio=ratio)
    assert model.config.num_attention_heads == heads
    assert model.config.intermediate_size == int(256 * (1 - ratio))
    _round_trip(model, tmp_path)


@pytest.mark.parametrize("speedups", [(1.33, 1.67, 2.0), (1.3, 1.7, 2.2)])
@pytest.mark.parametrize(("heads", "kv_heads", "hidden"), [(8, 8, 128), (12, 4, 96)])
def test_llama_target_schedule_lands_on_every_step(heads, kv_heads, hidden, speedups, tmp_path):
    """Head counts LlamaConfig accepts are coarse: the MLP makes up each step, not one strength for every kind."""
    model = tiny_causal_lm("llama", hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads)
    pruner = LLMPruner()
    dense, _ = pruner.count(model)
    channels = pruner.channels(model)
    got = []
    for speedup in speedups:
        result = pruner.prune(model, target_macs=dense / speedup, dense_channels=channels)
        assert result.reached
        got.append(dense / result.macs)
    assert got == pytest.approx(list(speedups), rel=0.02)
    cfg = model.config
    assert cfg.num_attention_heads < heads and cfg.hidden_size % cfg.num_attention_heads == 0
    _round_trip(model, tmp_path)


def test_llama_hidden_cut_is_a_multiple_of_the_heads(tmp_path):
    model = tiny_causal_lm("llama", hidden_size=128)
    pruner = LLMPruner(prune_hidden=True)
    dense, _ = pruner.count(model)
    result = pruner.prune(model, target_macs=0.66 * dense)
    cfg = model.config
    assert result.reached and cfg.hidden_size < 128
    assert cfg.hidden_size % cfg.num_attention_heads == 0
    _round_trip(model, tmp_path)


def test_heads_the_config_could_cut_but_the_plan_keeps_are_told_the_real_reason(tmp_path):
    # The green_llama preset's Llama (128 wide, 4 query / 2 KV heads): the first prune's plan cuts only the MLP, since
    # one KV group of 2 is half the attention. The warning blamed the config ("requires hidden_size to be a multiple
    # of num_attention_heads"), which accepts 2 query heads in 128 channels.
    from lightning_green.demos import HFCausalLM, StdlibTextDataModule

    module = HFCausalLM(
        family="llama", hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=384
    )
    data = StdlibTextDataModule(seq_len=64, batch_size=32, train_bytes=32768, val_bytes=4096, batch_format="causal_lm")
    pruning = StructuredPruning(target_speedup=1.5, importance="taylor", schedule="cubic", start_epoch=1, end_epoch=3)
    trainer = make_trainer(
        tmp_path, max_epochs=2, limit_train_batches=5, enable_checkpointing=False, callbacks=[pruning]
    )
    kept = r"attention heads are kept whole at this prune: .*less even .*the other kinds are cut instead"
    with pytest.warns(UserWarning, match=kept) as caught:
        trainer.fit(module, data)
    assert not [w for w in caught if "would break its config" in str(w.message)]
    cfg = module.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2) and cfg.intermediate_size < 384


def test_phi3_longrope_keeps_heads_without_a_hidden_cut(tmp_path):
    model = _longrope_phi3()
    with pytest.warns(UserWarning, match=r"attention heads of this Phi3Config are kept whole.*prune_hidden=True"):
        LLMPruner().prune(model, ratio=0.5)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (4, 128, 128)
    _round_trip(model, tmp_path)


@pytest.mark.parametrize("speedups", [(), (1.5,), (1.25, 2.0)])
def test_phi3_longrope_cuts_heads_with_the_hidden_width(speedups, tmp_path):
    model = _longrope_phi3()
    pruner = LLMPruner(prune_hidden=True)
    if speedups:
        speedup, reached = _target_prunes(model, pruner, speedups)
        assert reached and speedup < speedups[-1] * 1.1
    else:
        pruner.prune(model, ratio=0.5)
        assert (model.config.num_attention_heads, model.config.hidden_size) == (2, 64)
    cfg = model.config
    assert cfg.hidden_size // cfg.num_attention_heads in (32, 33)
    _round_trip(model, tmp_path)


def test_a_cut_the_config_refuses_is_left_out(monkeypatch, tmp_path):
    """Rules the plan does not know are still kept: transformers' own config check runs before every cut."""
    monkeypatch.setattr(llm, "_config_rule", lambda s: None)
    model = tiny_causal_lm("llama", hidden_size=128, num_heads=4, num_kv_heads=4)
    with pytest.warns(
        UserWarning, match=r"LlamaConfig refuses the widths.*not a multiple.*attention heads are not cut"
    ):
        result = LLMPruner().prune(model, ratio=0.25)
    assert not any("::heads::" in e[0] for e in result.entries)
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (4, 192)
    _round_trip(model, tmp_path)


# ------------------------------------------------------------------------------------------- which model
class _Distill(LightningModule):
    """A frozen teacher registered before the trained student."""

    def __init__(self, train_teacher: bool = False) -> None:
        super().__init__()
        self.teacher = tiny_causal_lm("llama", seed=1).requires_grad_(train_teacher)
        self.student = tiny_causal_lm("llama", seed=2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids=input_ids).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(input_ids=batch["input_ids"]).logits.log_softmax(-1)
        student = self(batch["input_ids"]).log_softmax(-1)
        return torch.nn.functional.kl_div(student, target, log_target=True, reduction="batchmean")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.student.parameters(), lr=1e-3)

    def train_dataloader(self):
        return token_data()


def test_the_trainable_model_is_found_not_the_frozen_teacher():
    module = _Distill()
    path, model = find_hf_model(module)
    assert path == "student" and model is module.student
    assert find_hf_model(module.teacher) == ("", module.teacher)  # named by `module=`: itself, frozen or not


def test_several_trainable_models_need_module():
    pattern = r"StructuredPruning\(module=None\): `module` must be the name of .* holds 2 trainable ones \('teacher', "
    with pytest.raises(ValueError, match=pattern + r"'student'\), e.g. StructuredPruning\(module='student'\)"):
        analyse(_Distill(train_teacher=True))


def test_distillation_prunes_the_student(tmp_path):
    module = _Distill()
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=1, verbose=False)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        callbacks=[pruning],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert module.student.config.intermediate_size == 64
    assert module.teacher.config.intermediate_size == 128
    assert tuple(module.teacher.model.layers[0].mlp.up_proj.weight.shape) == (128, 64)


# ------------------------------------------------------------------------------------- frozen and ignored
def test_frozen_layer_and_embeddings_keep_every_width():
    model = tiny_causal_lm("llama")
    model.model.layers[0].requires_grad_(False)
    model.model.embed_tokens.requires_grad_(False)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.warns(
        UserWarning,
        match=r"MLP units, attention heads and the residual width are not cut.*"
        r"'model.layers.0.mlp.gate_proj.weight' is frozen",
    ):
        result = LLMPruner(prune_hidden=True).prune(model, ratio=0.5)
    assert result.entries == []
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def test_frozen_embeddings_keep_only_the_residual_width():
    model = tiny_causal_lm("llama")
    model.model.embed_tokens.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"the residual width is not cut.*'model.embed_tokens.weight' is frozen"):
        result = LLMPruner(prune_hidden=True).prune(model, ratio=0.5)
    assert {e[0].split("::")[1] for e in result.entries} == {"mlp", "heads"}
    assert model.config.hidden_size == 64 and not model.model.embed_tokens.weight.requires_grad


def test_frozen_layer_is_not_removed():
    model = tiny_causal_lm("llama", num_layers=3)
    frozen = model.model.layers[1]
    frozen.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"'model.layers.1.mlp.gate_proj.weight' is frozen"):
        LLMPruner(prune_layers=2).prune(model, ratio=0.0)
    assert list(model.model.layers) == [frozen]


@pytest.mark.parametrize("name", ["model.layers.1", "*.layers.1", "model.layers.1.self_attn"])
def test_ignored_block_keeps_its_kinds_in_every_layer(name):
    model = tiny_causal_lm("llama")
    block = copy.deepcopy(model.model.layers[1])
    with pytest.warns(UserWarning, match=r"attention heads .*not cut in any decoder layer.*`ignored_layers` names"):
        result = LLMPruner(ignored_layers=[name]).prune(model, ratio=0.5)
    assert not any("::heads::" in e[0] for e in result.entries)
    kept = model.model.layers[1]
    assert kept.self_attn.q_proj.weight.shape == block.self_attn.q_proj.weight.shape
    assert (kept.mlp.up_proj.weight.shape == block.mlp.up_proj.weight.shape) == (name != "model.layers.1.self_attn")


def test_ignored_block_kept_after_a_layer_before_it_goes():
    """Removing layer 0 renumbers the ignored block 1 to 0: it still keeps its widths."""
    model = tiny_causal_lm("llama")
    block = model.model.layers[1]
    with pytest.warns(UserWarning, match=r"`ignored_layers` names 'model.layers.1'"):
        result = LLMPruner(ignored_layers=["model.layers.1"], prune_layers=1).prune(model, ratio=0.5)
    assert [e[0] for e in result.entries] == ["::layers::"]
    assert list(model.model.layers) == [block] and block.mlp.up_proj.weight.shape == (128, 64)


def test_ignored_block_alone_refused_in_setup(tmp_path):
    """With nothing else to cut, StructuredPruning refuses the setting in setup, saying why."""
    from tests.pruning.hf_models import TinyLM

    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=1, ignored_layers=["model.model.layers.1"])
    trainer = Trainer(default_root_dir=tmp_path, max_steps=2, callbacks=[pruning], logger=False, accelerator="cpu")
    pattern = r"ignored_layers=\['model.model.layers.1'\]\): .*leaves some MLP or attention to cut.*layers.1', which"
    with pytest.raises(ValueError, match=pattern):
        trainer.fit(TinyLM())


@pytest.mark.parametrize(
    ("ignored", "pattern"),
    [
        ([], r"MLP units: 'model.layers.0.mlp.gate_proj.weight' is frozen.*attention heads: .* is frozen"),
        (["model.layers.1.self_attn"], r"attention heads: `ignored_layers` names 'model.layers.1.self_attn'"),
    ],
)
def test_all_frozen_model_refused(ignored, pattern):
    """A LoRA-like model (every base weight frozen) leaves nothing to cut: refused before any prune, saying why."""
    model = tiny_causal_lm("llama")
    model.requires_grad_(False)
    if ignored:
        model.model.layers[1].self_attn.requires_grad_(True)
    pattern = r"nothing of LlamaForCausalLM can be cut.*" + pattern + r".*Unfreeze"
    with pytest.raises(ValueError, match=pattern):
        LLMPruner(ignored_layers=ignored).check_module(model)


def test_a_frozen_model_is_refused_for_fit_only():
    """A model frozen after training (``LightningModule.freeze()``) is still validated, tested and predicted."""
    model = tiny_causal_lm("llama")
    model.requires_grad_(False)
    structure = LLMPruner().check_module(model, training=False)  # validate/test/predict: nothing is cut
    assert structure.family == "llama"
    with pytest.raises(ValueError, match="nothing of LlamaForCausalLM can be cut"):
        LLMPruner().check_module(model)


def test_validate_runs_on_a_frozen_model_under_structured_pruning():
    from lightning.pytorch import Trainer

    from lightning_green import StructuredPruning
    from lightning_green.testing.hf import tiny_hf_module

    module = tiny_hf_module("llama", num_layers=1)
    module.freeze()
    seen = []
    module.validation_step = lambda batch, batch_idx: seen.append(batch_idx)
    module.val_dataloader = lambda: torch.utils.data.DataLoader(torch.zeros(4, 8, dtype=torch.long), batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=1,
                      callbacks=[StructuredPruning(pruning_ratio=0.25, verbose=False)])  # fmt: skip
    trainer.validate(module, verbose=False)
    assert seen == [0]


class _NarrowLM(LightningModule):
    """A tiny Llama with an MLP of 10 units and 2 KV heads (4 query heads), on the repeated-pattern tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_causal_lm("llama", hidden_size=32, num_layers=2, intermediate_size=10)

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_many_llm_prunes_end_at_the_pruning_ratio(tmp_path):
    # Each prune cut its share of the units left, rounded: over 8 prunes towards 0.5, an MLP of 10 units ended with 4
    # (the roundings added up) and 2 KV heads with 2 (each step's share of 2 heads rounded to none).
    model = _NarrowLM()
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=8, frequency=1, verbose=False)
    make_trainer(tmp_path, max_steps=9, callbacks=[pruning]).fit(model, token_data(n=80))
    assert pruning.prunes_done == 8
    assert [layer.mlp.gate_proj.out_features for layer in model.model.model.layers] == [5, 5]
    assert model.model.config.num_key_value_heads == 1 and model.model.config.num_attention_heads == 2


# ------------------------------------------------------------------------------------------ round_to
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("speedups", [(1.33, 1.67, 2.0), (1.05, 1.1, 1.15, 1.2)])
def test_round_to_target_schedule_keeps_multiples_near_the_target(family, speedups):
    """With ``round_to`` the residual width keeps a multiple at every prune: the final one rounds to it without going
    far past the target (the width ended at 40 with round_to=16, or was rounded from 40 to 32 at 2.5x for 2x)."""
    model = tiny_causal_lm(family)
    pruner = LLMPruner(round_to=16, prune_hidden=True)
    dense, _ = pruner.count(model)
    channels = pruner.channels(model)
    for i, speedup in enumerate(speedups, 1):
        result = pruner.prune(model, target_macs=dense / speedup, dense_channels=channels, final=i == len(speedups))
        assert result.reached
        assert model.config.hidden_size % 16 == 0
    cfg = model.config
    assert cfg.intermediate_size % 16 == 0
    assert dense / result.macs < speedups[-1] * 1.1


def test_round_to_applies_at_the_final_prune_when_the_target_was_already_reached():
    """An earlier prune past the final target left 97 MLP units: the final prune, with nothing to cut for MACs,
    still rounds to ``round_to``."""
    model = tiny_causal_lm("llama")
    pruner = LLMPruner(round_to=16)
    dense, _ = pruner.count(model)
    channels = pruner.channels(model)
    pruner.prune(model, ratio=0.24, dense_channels=channels, final=False)  # 97 units
    assert model.config.intermediate_size % 16 != 0
    result = pruner.prune(model, target_macs=dense, dense_channels=channels, final=True)
    assert result.reached and model.config.intermediate_size == 96
    assert all(layer.mlp.up_proj.out_features == 96 for layer in model.model.layers)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_final_prune_whose_target_is_met_only_rounds(family):
    # The search also cut the residual width (already a multiple, 384 -> 376), past the target for no reason.
    model = tiny_causal_lm(family, hidden_size=512)
    pruner = LLMPruner(round_to=8, prune_hidden=True)
    dense, _ = pruner.count(model)
    channels = pruner.channels(model)
    pruner.prune(model, target_macs=dense / 2.0, dense_channels=channels, final=False)
    hidden, mlp = model.config.hidden_size, model.config.intermediate_size
    assert hidden % 8 == 0 and mlp % 8
    pruner.prune(model, target_macs=dense / 1.5, dense_channels=channels, final=True)
    assert (model.config.hidden_size, model.config.intermediate_size) == (hidden, mlp // 8 * 8)


@pytest.mark.parametrize("speedups", [(1.3,), (1.1, 1.2, 1.3), (1.3, 1.3)])
def test_a_dense_residual_width_off_round_to_is_cut_to_a_multiple_at_once(speedups):
    # 96 with round_to=64: kept whole until the last prune, the MLP was cut for the target meanwhile, and the last
    # prune then cut both (1.86x, or 2.45x, for 1.3x asked); a single prune gives 1.5x.
    model = tiny_causal_lm("llama", hidden_size=96)
    pruner = LLMPruner(round_to=64, prune_hidden=True)
    dense, _ = pruner.count(model)
    channels = pruner.channels(model)
    for k, speedup in enumerate(speedups, 1):
        result = pruner.prune(model, target_macs=dense / speedup, dense_channels=channels, final=k == len(speedups))
        assert model.config.hidden_size == 64
    assert result.reached and dense / result.macs < 1.6


def test_round_to_that_max_layer_ratio_leaves_nothing_to_cut_is_told():
    model = tiny_causal_lm("llama")
    pruner = LLMPruner(round_to=64, max_layer_ratio=0.3)
    with pytest.warns(UserWarning, match=r"MLP units are never cut: round_to=64 with max_layer_ratio=0.3 .* 90 .* 128"):
        pruner.prune(model, ratio=0.3)
    assert model.config.intermediate_size == 128
    with pytest.warns(UserWarning, match=r"the residual width is never cut: round_to=256"):
        LLMPruner(round_to=256, prune_hidden=True).prune(tiny_causal_lm("llama"), ratio=0.3)
