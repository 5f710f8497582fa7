"""HFCausalLM: a transformers causal LM from a config, trained on the stdlib text with dict batches."""

import ast
import math
import os

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from lightning_green.demos import HFCausalLM, StdlibTextDataModule  # noqa: E402
from lightning_green.demos.hf import FAMILIES, causal_lm_config, to_causal_lm_batch  # noqa: E402
from lightning_green.testing.hf import TINY_FAMILIES, tiny_causal_lm, tiny_hf_module  # noqa: E402
from tests.helpers import QUIET  # noqa: E402

LINEAR_ROPE = {"rope_type": "linear", "factor": 2.0}
SMALL_DATA = {"seq_len": 32, "batch_size": 8, "train_bytes": 16_384, "val_bytes": 2_048, "batch_format": "causal_lm"}


class SeenBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(batch)


def fit(tmp_path, model, *, callbacks=(), max_epochs=1, batches=3, **kw):
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=batches,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
        **{**QUIET, **kw},
    )
    trainer.fit(model, StdlibTextDataModule(**SMALL_DATA))
    return trainer


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_fits_with_dict_batches_and_logs_loss_and_perplexity(tmp_path, family):
    seen = SeenBatches()
    model = tiny_hf_module(family, hidden_size=32, num_layers=1)
    trainer = fit(tmp_path, model, callbacks=[seen], batches=2)
    batch = seen.batches[0]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (8, 32) and bool(batch["attention_mask"].eq(1).all())
    assert torch.equal(batch["labels"], batch["input_ids"])
    metrics = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_ppl"} <= set(metrics)
    assert float(metrics["val_ppl"]) == pytest.approx(math.exp(float(metrics["val_loss"])), rel=1e-5)
    assert model.example_input_array.shape == (1, 32)  # follows the datamodule's seq_len
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_tiny_configs_keep_what_makes_each_family_hard_to_prune():
    llama = tiny_causal_lm("llama")
    attn = llama.model.layers[0].self_attn
    assert (llama.config.num_attention_heads, llama.config.num_key_value_heads) == (4, 2)
    assert attn.q_proj.out_features == 2 * attn.k_proj.out_features
    qwen2 = tiny_causal_lm("qwen2")
    assert qwen2.lm_head.weight is qwen2.model.embed_tokens.weight
    assert all(getattr(qwen2.model.layers[0].self_attn, p).bias is not None for p in ("q_proj", "k_proj", "v_proj"))
    qwen3 = tiny_causal_lm("qwen3")
    assert qwen3.model.layers[0].self_attn.q_norm.weight.shape == (16,)  # per head_dim, not the default 128
    gpt2 = tiny_causal_lm("gpt2")
    assert type(gpt2.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    phi3 = tiny_causal_lm("phi3")
    assert phi3.model.layers[0].self_attn.qkv_proj.out_features == (4 + 2 + 2) * 16
    assert phi3.model.layers[0].mlp.gate_up_proj.out_features == 2 * 128
    assert set(TINY_FAMILIES) == set(FAMILIES)
    # seeded: the same weights twice
    assert torch.equal(tiny_causal_lm("llama").lm_head.weight, llama.lm_head.weight)


def test_the_loss_falls_below_a_uniform_guess(tmp_path):
    seed_everything(0)
    model = tiny_hf_module("llama", hidden_size=32, num_layers=1, lr=1e-2)
    dm = StdlibTextDataModule(**SMALL_DATA)
    dm.setup("fit")
    with torch.no_grad():
        start = float(model._loss(next(iter(dm.val_dataloader())))[0])
    trainer = fit(tmp_path, model, batches=12)
    end = float(trainer.callback_metrics["val_loss"])
    assert start == pytest.approx(math.log(256), abs=0.3)  # random init: about a uniform guess over bytes
    assert end < start - 0.4


def test_byte_pairs_are_read_as_causal_lm_batches_with_a_warning(tmp_path):
    seen = SeenBatches()
    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[seen],
        **QUIET,
    )
    with pytest.warns(UserWarning, match=r"HFCausalLM: the datamodule serves \(x, y\) pairs.*batch_format='causal_lm'"):
        trainer.fit(model, StdlibTextDataModule(**{**SMALL_DATA, "batch_format": "pairs"}))
    assert isinstance(seen.batches[0], list) and math.isfinite(float(trainer.callback_metrics["val_loss"]))
    x, y = seen.batches[0]
    pair_loss, n = model._loss((x, y))
    dict_loss, n2 = model._loss(to_causal_lm_batch((x, y)))
    assert n == n2 == 8 * 31 and float(pair_loss) == float(dict_loss)


def test_batch_encoding_and_masked_tokens(tmp_path):
    from transformers import BatchEncoding

    model = tiny_hf_module("qwen2", hidden_size=32, num_layers=1)
    ids = torch.randint(1, 256, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding: not predicted
    batch = BatchEncoding({"input_ids": ids, "attention_mask": mask})
    assert to_causal_lm_batch(batch) is batch
    loss, n = model._loss(batch)
    assert n == 11 + 7 and torch.isfinite(loss)
    # the padded positions do not change the loss
    ids2 = ids.clone()
    ids2[1, 8:] = 5
    loss2, _ = model._loss(BatchEncoding({"input_ids": ids2, "attention_mask": mask}))
    assert float(loss2) == pytest.approx(float(loss), abs=1e-5)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_checkpointing_trains_in_every_precision(tmp_path, precision):
    # In bf16 on a CPU the forward chose the math attention kernel, and the backward's recompute (outside that
    # choice) another one, whose saved tensors differ: torch's CheckpointError.
    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)
    model.model.gradient_checkpointing_enable()
    trainer = fit(tmp_path, model, batches=2, precision=precision)
    assert trainer.global_step == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_save_pretrained_loads_back_through_pretrained_path(tmp_path):
    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)
    model.model.save_pretrained(tmp_path / "llama")
    loaded = HFCausalLM(pretrained_path=str(tmp_path / "llama"))
    x = torch.randint(0, 256, (2, 10))
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.model.config.num_key_value_heads == 2
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path):
    model = tiny_hf_module("gpt2", hidden_size=32, num_layers=1)
    trainer = fit(tmp_path, model, batches=2)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = HFCausalLM.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    x = torch.randint(0, 256, (1, 16))
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_generate_with_and_without_the_cache_agree():
    model = tiny_hf_module("mistral", hidden_size=32, num_layers=1)
    out = model.generate(b"def ", max_new_bytes=6)
    assert out.startswith(b"def ") and len(out) == 10
    assert model.generate(b"def ", max_new_bytes=6, use_cache=False) == out


def test_config_overrides_reach_the_model():
    model = HFCausalLM(
        family="llama", hidden_size=32, num_layers=1, config={"rope_theta": 1234.0, "rms_norm_eps": 1e-3}
    )
    assert model.model.config.rms_norm_eps == 1e-3 and model.model.config.rope_parameters["rope_theta"] == 1234.0
    cfg = causal_lm_config("qwen3", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=1, intermediate_size=96)
    # transformers 5 keeps the legacy `rope_scaling` keyword (a property for rope_parameters): it was refused
    scaled = HFCausalLM(family="llama", hidden_size=32, num_layers=1, config={"rope_scaling": LINEAR_ROPE})
    assert scaled.model.config.rope_parameters["rope_type"] == "linear"
    assert scaled.model.config.rope_parameters["factor"] == 2.0
    with pytest.raises(ValueError, match=r"GPT2Config has no field\(s\) \['rope_scaling'\]"):  # no RoPE: no effect
        HFCausalLM(family="gpt2", hidden_size=32, num_layers=1, config={"rope_scaling": LINEAR_ROPE})
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.intermediate_size) == (16, 1, 96)


@pytest.mark.parametrize(
    ("kwargs", "match", "exc"),
    [
        ({"family": "mixtral"}, r"HFCausalLM\(family='mixtral'\): `family` must be one of \('llama', ", ValueError),
        (
            {"hidden_size": 30},
            r"HFCausalLM\(hidden_size=30\): `hidden_size` must be a multiple of num_heads",
            ValueError,
        ),
        (
            {"num_kv_heads": 3},
            r"HFCausalLM\(num_kv_heads=3\): `num_kv_heads` must be a divisor of num_heads",
            ValueError,
        ),
        ({"family": "gpt2", "num_kv_heads": 2}, r"`num_kv_heads` must be None or num_heads \(4\) for gpt2", ValueError),
        ({"num_layers": 0}, r"HFCausalLM\(num_layers=0\): `num_layers` must be an int >= 1", ValueError),
        ({"config": {"no_such_field": 1}}, r"LlamaConfig has no field\(s\) \['no_such_field'\]", ValueError),
        ({"config": [1]}, r"HFCausalLM\(config=\[1\]\): `config` must be None or a dict", TypeError),
        ({"attn_implementation": "flash"}, r"`attn_implementation` must be one of \('sdpa', 'eager'\)", ValueError),
        ({"lr": 0}, r"HFCausalLM\(lr=0\): `lr` must be a number > 0", ValueError),
        ({"tie_word_embeddings": "yes"}, r"`tie_word_embeddings` must be a bool", TypeError),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(kwargs, match, exc):
    with pytest.raises(exc, match=match):
        HFCausalLM(**{"hidden_size": 32, "num_layers": 1, **kwargs})


def test_pretrained_path_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"HFCausalLM\(pretrained_path='.*'\): no config.json there"):
        HFCausalLM(pretrained_path=str(tmp_path))


def test_a_loaded_model_trains_in_train_mode(tmp_path):
    # from_pretrained returns the model in eval mode: dropout was off and activation checkpointing did nothing.
    tiny_hf_module("gpt2", hidden_size=32, num_layers=1).model.save_pretrained(tmp_path / "gpt2")
    loaded = HFCausalLM(pretrained_path=str(tmp_path / "gpt2"))
    assert loaded.model.training and all(m.training for m in loaded.model.modules())


def test_pretrained_folders_that_are_no_causal_lm_are_refused_in_one_line(tmp_path):
    import transformers as tf

    bert = tf.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    tf.BertForMaskedLM(bert).save_pretrained(tmp_path / "bert")
    t5 = tf.T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
    tf.T5ForConditionalGeneration(t5).save_pretrained(tmp_path / "t5")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((tmp_path / "bert" / "config.json").read_text())
    cases = {
        "bert": r"BertLMHeadModel \('bert'\) is not causal: its logits read later tokens",
        "t5": r"not loadable as a causal LM \(its model_type 't5' has no causal-LM class in transformers\)",
        "no_weights": r"not loadable as a causal LM \(OSError: .*model.safetensors",
    }
    for folder, match in cases.items():
        with pytest.raises(ValueError, match=rf"HFCausalLM\(pretrained_path='.*{folder}'\): {match}") as err:
            HFCausalLM(pretrained_path=str(tmp_path / folder))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("family", "ids", "match"),
    [
        ("llama", torch.full((2, 8), 300), r"a batch has token id 300, outside the model's vocabulary of 256"),
        ("llama", -torch.ones(2, 8, dtype=torch.long), r"a batch has token id -1, outside the model's vocabulary"),
        ("llama", torch.zeros(2, 8), r"must be token ids of dtype torch.int64 or torch.int32, not torch.float32"),
        ("gpt2", torch.zeros(2, 80, dtype=torch.long), r"sequences of 80 tokens are longer than the model's n_pos"),
    ],
)
def test_token_ids_the_model_cannot_read_are_refused_in_words(family, ids, match):
    # torch said "index out of range in self" from inside the embedding (or a device-side assert on a GPU).
    model = tiny_hf_module(family, hidden_size=32, num_layers=1, max_positions=64)
    for step in (model.training_step, model.predict_step):
        with pytest.raises(ValueError, match=rf"HFCausalLM: .*{match}"):
            step({"input_ids": ids}, 0)


class _OnAccelerator(torch.Tensor):
    """A CPU tensor that says it is on a GPU (the accelerator path of the id check, without one)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_on_an_accelerator_the_id_range_of_the_first_good_batch_is_checked():
    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)
    on_gpu = lambda t: torch.Tensor._make_subclass(_OnAccelerator, t)  # noqa: E731
    bad, good = torch.full((1, 4), 300), torch.ones(1, 4, dtype=torch.long)
    model._check_ids(good)  # a CPU batch (a smoke test) does not stand for the accelerator's first one
    for _ in range(2):  # a refused batch is refused again (it turned the check off)
        with pytest.raises(ValueError, match="token id 300"):
            model._check_ids(on_gpu(bad))
    model._check_ids(on_gpu(good))
    model._check_ids(on_gpu(bad))  # after the first good one: no sync per step


def test_a_batch_that_is_no_token_dict_is_refused_in_prediction_too():
    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)
    for batch in (torch.ones(2, 4, dtype=torch.long), [torch.ones(2, 4, dtype=torch.long)]):
        with pytest.raises(ValueError, match=r"HFCausalLM: a batch must be a dict with `input_ids`"):
            model.predict_step(batch, 0)


def test_a_gpt2_folder_with_fewer_than_four_positions_loads(tmp_path):
    # The causality check ran a 4-token forward: past GPT-2's 3 learned positions ("index out of range").
    tiny_hf_module("gpt2", hidden_size=32, num_layers=1, max_positions=3).model.save_pretrained(tmp_path / "g")
    assert HFCausalLM(pretrained_path=str(tmp_path / "g")).max_positions == 3


def test_context_and_vocabulary_the_model_cannot_read_are_refused_in_setup(tmp_path):
    with pytest.raises(ValueError, match=r"HFCausalLM\(max_positions=16\): the datamodule's seq_len=32 is longer"):
        fit(tmp_path, HFCausalLM(hidden_size=32, num_layers=1, max_positions=16))
    small_vocab = HFCausalLM(hidden_size=32, num_layers=1, config={"vocab_size": 100})
    with pytest.raises(ValueError, match=r"the datamodule's vocab_size=256 is larger than the model's \(100\)"):
        fit(tmp_path, small_vocab)


def test_a_batch_that_is_not_token_ids_is_a_clear_error():
    model = HFCausalLM(hidden_size=32, num_layers=1)
    with pytest.raises(ValueError, match=r"HFCausalLM: a batch must be a dict with `input_ids`.*got Tensor"):
        model._loss(torch.zeros(2, 4))


@pytest.mark.parametrize("path", ["lightning_green/demos/hf.py", "lightning_green/testing/hf.py"])
def test_transformers_is_imported_only_inside_functions(path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in top if isinstance(n, ast.ImportFrom)]
    assert names and not any(name.split(".")[0] == "transformers" for name in names)


def test_forward_under_activation_checkpointing_reads_no_deprecated_flag():
    # `is_gradient_checkpointing` is deprecated in transformers 5 (a FutureWarning on every forward; gone in v6).
    import warnings

    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)
    model.model.gradient_checkpointing_enable()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model(torch.zeros(1, 8, dtype=torch.long))
