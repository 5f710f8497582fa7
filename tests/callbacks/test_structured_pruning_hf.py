"""StructuredPruning on Hugging Face causal LMs inside a LightningModule: fit, checkpoint, resume, load_pruned."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("transformers")

from lightning_green import StructuredPruning  # noqa: E402
from lightning_green.pruning import load_pruned  # noqa: E402
from lightning_green.pruning.llm import is_llm_entry  # noqa: E402
from tests.helpers import make_trainer  # noqa: E402
from tests.pruning.hf_models import TinyLM  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 250]])


def _fit(tmp_path, family: str, pruning: StructuredPruning, **kwargs) -> tuple[TinyLM, object]:
    model = TinyLM(family)
    settings = {
        "max_epochs": 3,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
        "enable_checkpointing": True,
        **kwargs,
    }
    trainer = make_trainer(tmp_path, callbacks=[pruning], **settings)
    trainer.fit(model)
    return model, trainer


def test_llama_gqa_fit_resume_and_load_pruned(tmp_path):
    """Activation importance, residual width too: 1.5x fewer MACs, checkpoint loads weights-only, resume and
    load_pruned rebuild the pruned shape."""
    args = {
        "target_speedup": 1.5,
        "start_epoch": 1,
        "end_epoch": 2,
        "importance": "activation",
        "importance_batches": 1,
        "prune_hidden": True,
        "verbose": False,
    }
    pruning = StructuredPruning(**args)
    model, trainer = _fit(tmp_path, "llama", pruning)
    assert pruning.speedup >= 1.5 and len(pruning.history) == 2
    cfg = model.model.config
    assert cfg.hidden_size < 64 and cfg.intermediate_size < 128
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    ckpt = trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=True)
    entries = [e for event in state["callbacks"][pruning.state_key]["history"] for e in event["entries"]]
    assert entries and all(is_llm_entry(e) for e in entries)

    inference = load_pruned(TinyLM("llama"), ckpt).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(inference(IDS), model(IDS))
    assert inference.model.config.hidden_size == cfg.hidden_size

    resumed = StructuredPruning(**args)
    again = TinyLM("llama")
    trainer2 = make_trainer(tmp_path, max_epochs=4, limit_train_batches=4, limit_val_batches=0, callbacks=[resumed])
    trainer2.fit(again, ckpt_path=ckpt)
    assert trainer2.global_step == 16
    assert again.model.config.intermediate_size == cfg.intermediate_size
    assert resumed.speedup == pytest.approx(pruning.speedup)


def test_qwen2_tied_taylor_keeps_optimizer_state_and_ties(tmp_path):
    pruning = StructuredPruning(
        pruning_ratio=0.5,
        start_epoch=1,
        end_epoch=1,
        importance="taylor",
        importance_batches=1,
        prune_hidden=True,
        verbose=False,
    )
    model, trainer = _fit(tmp_path, "qwen2", pruning, max_epochs=2)
    lm = model.model
    assert lm.get_input_embeddings().weight is lm.get_output_embeddings().weight
    assert lm.config.intermediate_size == 64 and lm.config.num_key_value_heads == 1
    opt = trainer.optimizers[0]
    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters()}
    carried = [p for p in params if p in opt.state]
    assert carried and all(opt.state[p]["exp_avg"].shape == p.shape for p in carried)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_pruning": True}, r"global_pruning=True.*every layer keeps the same widths"),
        ({"regularization": "group-norm"}, r"regularization='group-norm'.*'none' for a Hugging Face causal LM"),
        ({"importance": "bn-scale"}, r"importance='bn-scale'.*for a Hugging Face causal LM"),
        ({"num_heads": {"model.model.layers.0.mlp.up_proj": 4}}, r"keyed by attention projections"),
        ({"pruning_ratio": 0.8}, r"pruning_ratio=0.8.*would remove every attention head \(KV group\) of each layer"),
        ({"prune_layers": 2}, r"prune_layers=2.*from 0 to 1: LlamaForCausalLM has 2 decoder layers"),
        # Both were silently ignored: the model is counted and checked on token ids.
        ({"forward_fn": "torch.nn.functional.relu"}, r"forward_fn='torch.*: `forward_fn` must be None for a Hugging"),
        (
            {"example_input": torch.zeros(3, 5, 7)},
            r"example_input=<float32 tensor of shape \(3, 5, 7\)>\): `example_input` must be None or token ids",
        ),
    ],
)
def test_bad_settings_for_an_llm_refused_at_setup(tmp_path, kwargs, match):
    pruning = StructuredPruning(**{"pruning_ratio": 0.5, "verbose": False, **kwargs})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, "llama", pruning)
    assert time.perf_counter() - start < 5.0


def test_llm_only_options_refused_on_other_models(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    for kwargs, match in (
        ({"prune_hidden": True}, r"prune_hidden=True.*with a Hugging Face causal LM only"),
        ({"importance": "activation"}, r"importance='activation'.*with a Hugging Face causal LM only"),
        ({"prune_layers": 1}, r"prune_layers=1.*with a Hugging Face causal LM only"),
    ):
        trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[StructuredPruning(verbose=False, **kwargs)])
        model = BoringModel()
        model.example_input_array = torch.zeros(1, 32)
        with pytest.raises(ValueError, match=match):
            trainer.fit(model)


def test_unsupported_hf_model_refused_at_setup_fast(tmp_path):
    import transformers as tf

    model = TinyLM("llama")
    cfg = tf.MixtralConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
    )
    model.model = tf.MixtralForCausalLM(cfg)
    trainer = make_trainer(tmp_path, callbacks=[StructuredPruning(verbose=False)])
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match=r"StructuredPruning: cannot prune MixtralForCausalLM at 'model': it is a mixture"
    ):
        trainer.fit(model)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("family", ["mistral", "qwen3", "phi3", "gpt2"])
def test_fit_prunes_every_family(tmp_path, family):
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    model, _ = _fit(
        tmp_path, family, pruning, max_epochs=2, limit_train_batches=2, limit_val_batches=0, enable_checkpointing=False
    )
    # GPT-2 keeps its heads and residual width: only its MLP (a smaller share of the MACs) is cut.
    assert pruning.speedup > (1.15 if family == "gpt2" else 1.3) and len(pruning.history) == 1
    fresh = type(model.model)(model.model.config)  # the config describes the pruned weights
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.model.state_dict().items()
    }


@pytest.mark.slow
def test_ddp_ranks_cut_the_same_units(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("_ddp_pruning_hf_script.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["history"] == rank1["history"] and len(rank0["history"]) == 2
    assert rank0["state"]["model.model.layers.0.mlp.up_proj.weight"].shape[0] == 64  # 128 -> 96 -> 64
    assert rank0["history"][0]["entries"][0][0] == "model::layers::"  # one of the two decoder layers went
    assert not any(k.startswith("model.model.layers.1.") for k in rank0["state"])
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name


def test_activation_hooks_record_training_batches_only_and_go_after_the_last_prune(tmp_path):
    from lightning.pytorch import Callback

    pruning = StructuredPruning(
        pruning_ratio=0.5, start_epoch=1, end_epoch=1, importance="activation", importance_batches=4, verbose=False
    )
    seen = []

    class Spy(Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            # the window is the prune epoch's first 4 batches: all of epoch 1's, then its validation runs
            if not trainer.sanity_checking:
                seen.append(("val", pruning._llm.recording))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            hooks = sum(len(m._forward_hooks) for m in pl_module.model.modules())
            seen.append((trainer.current_epoch, len(pruning.history), hooks))

    trainer = make_trainer(
        tmp_path, callbacks=[pruning, Spy()], max_epochs=3, limit_train_batches=4, limit_val_batches=1
    )
    trainer.fit(TinyLM("llama"))
    assert len(pruning.history) == 1
    val = [recording for tag, recording in (x for x in seen if x[0] == "val")]
    assert len(val) == 3 and not any(val)
    train = [x for x in seen if x[0] != "val"]
    assert len(train) == 12 and all(h > 0 for _, n, h in train if n == 0)  # observing until the prune
    assert [h for _, n, h in train if n == 1] == [0] * 4  # the last prune is done: no hook runs per forward


@pytest.mark.parametrize("importance", ["magnitude-l2", "taylor"])
def test_prune_layers_fit_checkpoint_resume_and_load_pruned(tmp_path, monkeypatch, importance):
    """A decoder layer goes at the first prune (Block Influence recorded over the window's training batches, also
    for a criterion without a window of its own), widths make up the rest; the optimizer keeps the kept layers'
    state; the checkpoint loads weights-only, resumes and load_pruned rebuild the shape."""
    from lightning_green.pruning.llm import LLMPruner

    recorded = []
    real = LLMPruner._influence

    def spy(self, s, layers, ids):
        recorded.append(sorted(k for k in self._stats if k.startswith("layers::")))
        return real(self, s, layers, ids)

    monkeypatch.setattr(LLMPruner, "_influence", spy)
    args = {"target_speedup": 2.5, "start_epoch": 1, "end_epoch": 2, "importance_batches": 2, "verbose": False}
    pruning = StructuredPruning(importance=importance, prune_layers=1, **args)
    model, trainer = _fit(tmp_path, "llama", pruning)
    cfg = model.model.config
    assert cfg.num_hidden_layers == len(model.model.model.layers) == 1
    assert pruning.speedup >= 2.5 and len(pruning.history) == 2
    first = pruning.history[0]["entries"]
    assert first[0][0] == "model::layers::" and len(first[0][2]) == 1
    assert all(e[0] != "model::layers::" for e in pruning.history[1]["entries"])
    assert recorded == [["layers::0", "layers::1"]]  # once, from the window's training batches
    # The first prune waits for its window; once the layer is gone, a criterion without a window of its own prunes
    # at the epoch's start.
    steps = [event["global_step"] for event in pruning.history]
    assert steps == ([6, 10] if importance == "taylor" else [6, 8])
    assert pruning._grad_steps == 0 and not pruning._llm._hooks  # the window closed, the hooks went
    opt = trainer.optimizers[0]
    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters()}
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in params if p in opt.state)

    trainer.validate(model, verbose=False)  # another stage on the pruned model: setup checks the dense depth
    ckpt = trainer.checkpoint_callback.best_model_path
    torch.load(ckpt, weights_only=True)
    inference = load_pruned(TinyLM("llama"), ckpt).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(inference(IDS), model(IDS))
    assert inference.model.config.num_hidden_layers == 1

    resumed = StructuredPruning(importance=importance, prune_layers=1, **args)
    again = TinyLM("llama")
    trainer2 = make_trainer(tmp_path, max_epochs=4, limit_train_batches=4, limit_val_batches=0, callbacks=[resumed])
    trainer2.fit(again, ckpt_path=ckpt)
    assert trainer2.global_step == 16
    assert again.model.config.num_hidden_layers == 1
    assert again.model.config.intermediate_size == cfg.intermediate_size
    assert resumed.speedup == pytest.approx(pruning.speedup)


def test_prune_layers_beyond_the_target_warns(tmp_path):
    pruning = StructuredPruning(
        target_speedup=1.2, prune_layers=1, start_epoch=1, end_epoch=1, importance_batches=1, verbose=False
    )
    with pytest.warns(UserWarning, match=r"prune_layers=1\): removing the decoder layers alone gave .* more than"):
        model, _ = _fit(tmp_path, "llama", pruning, max_epochs=2)
    assert model.model.config.num_hidden_layers == 1 and pruning.speedup > 1.32


def test_removed_layer_moves_the_next_layers_optimizer_state_with_it(tmp_path, monkeypatch):
    """After layer 0 goes, the old layer 1 (now 0) keeps *its own* Adam moments, not those of the removed layer."""
    from lightning.pytorch import Callback

    from lightning_green.pruning.llm import LLMPruner

    monkeypatch.setattr(LLMPruner, "_influence", lambda self, s, layers, ids: {i: float(i) for i in layers})
    seen: dict = {}

    class Capture(Callback):  # runs just before / just after StructuredPruning's hook of the pruning batch
        def __init__(self, key: str) -> None:
            self.key = key

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:  # the batch whose start prunes (step 4 + one window batch)
                opt = trainer.optimizers[0]
                layers = pl_module.model.model.layers
                seen[self.key] = [{p: opt.state[p]["exp_avg"].clone() for p in b.parameters()} for b in layers]

    pruning = StructuredPruning(
        target_speedup=1.6, prune_layers=1, start_epoch=1, end_epoch=1, importance_batches=1, verbose=False
    )
    model = TinyLM("llama")
    callbacks = [Capture("before"), pruning, Capture("after")]
    trainer = make_trainer(tmp_path, callbacks=callbacks, max_epochs=2, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model)
    assert pruning.history[0]["entries"] == [["model::layers::", True, [0]]]  # the layer alone reached 1.6x
    removed, kept = seen["before"]
    (after,) = seen["after"]
    assert set(after) == set(kept)  # the same parameter objects, now layer 0
    for p, value in after.items():
        assert torch.equal(value, kept[p])
    assert not all(torch.equal(a, r) for a, r in zip(after.values(), removed.values(), strict=True))


def test_checkpoints_before_later_prunes_load_into_the_pruned_llm(tmp_path):
    """validate(ckpt_path=...) of each epoch, forth and back: decoder layers the prunes removed come back."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    pruning = StructuredPruning(
        target_speedup=2.0,
        start_epoch=1,
        end_epoch=2,
        prune_hidden=True,
        prune_layers=1,
        importance_batches=1,
        verbose=False,
    )
    every = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    model = TinyLM("llama")
    trainer = make_trainer(
        tmp_path, callbacks=[pruning, every], max_epochs=3, limit_train_batches=4, limit_val_batches=1
    )
    trainer.fit(model)
    assert model.model.config.num_hidden_layers == 1
    for name, layers in (("epoch=0-step=4", 2), ("epoch=2-step=12", 1), ("epoch=1-step=8", 1), ("epoch=0-step=4", 2)):
        path = tmp_path / f"{name}.ckpt"
        trainer.validate(model, ckpt_path=path, verbose=False)
        expected = load_pruned(TinyLM("llama"), path).eval()
        assert model.model.config.num_hidden_layers == len(model.model.model.layers) == layers
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(IDS), expected(IDS), rtol=0, atol=0)


def test_hf_causal_lm_load_from_checkpoint_rebuilds_a_pruned_model(tmp_path):
    # HFCausalLM.load_from_checkpoint of a pruned checkpoint failed with torch's 15-line size mismatch.
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_green.demos import HFCausalLM, StdlibTextDataModule

    kw = {"family": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
    data = StdlibTextDataModule(seq_len=16, batch_size=4, train_bytes=2048, val_bytes=512, batch_format="causal_lm")
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=2, end_step=2, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = HFCausalLM(intermediate_size=64, max_positions=32, **kw)
    trainer = make_trainer(
        tmp_path, max_steps=3, limit_val_batches=1, enable_checkpointing=True, callbacks=[pruning, ckpt]
    )
    trainer.fit(model, data)
    assert model.model.config.intermediate_size == 32
    loaded = HFCausalLM.load_from_checkpoint(tmp_path / "last.ckpt", map_location="cpu").eval()
    assert loaded.model.config.intermediate_size == 32
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS[:, :8] % 32), model.eval()(IDS[:, :8] % 32))


def test_example_input_token_ids_size_the_mac_count(tmp_path):
    # example_input was ignored for an HF model: the MACs (and target_speedup) were always counted at 32 tokens.
    dense = []
    for example in (None, torch.arange(16).unsqueeze(0) % 200, torch.arange(64).unsqueeze(0) % 200):
        pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False, example_input=example)
        _fit(tmp_path, "llama", pruning, max_epochs=1)
        dense.append(pruning.dense_macs)
    assert dense[1] < dense[0] < dense[2]


def test_round_to_holds_after_a_schedule_whose_earlier_prunes_went_below_it(tmp_path):
    # 128 MLP units towards 0.7 with round_to=64: the earlier prunes cut to 53 units, and the last one, unable to
    # round up to 64 nor down to 0, cut nothing: the width ended at 53, no multiple, the goal silently missed.
    pruning = StructuredPruning(
        pruning_ratio=0.7, schedule="cubic", round_to=64, start_step=1, end_step=4, frequency=1, verbose=False
    )
    model, _ = _fit(tmp_path, "llama", pruning, max_epochs=-1, max_steps=6)
    assert len(pruning.history) >= 2
    assert model.model.config.intermediate_size == 64
    assert all(layer.mlp.up_proj.out_features == 64 for layer in model.model.model.layers)
