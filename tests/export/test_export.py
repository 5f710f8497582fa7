import importlib.util
import math
import os
import stat
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_green._internal.validation import InvalidArgumentError
from lightning_green.demos import DigitsDataModule, DigitsResNet, TinyGPT
from lightning_green.export import ExportError, export_checkpoint, export_model, load_checkpoint_module
from lightning_green.export.formats import load_exported
from tests.export.conftest import Gated, save_ckpt

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs the [export] extra (onnx, onnxscript, onnxruntime)")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
FORMATS = [pytest.param("onnx", marks=needs_onnx), "torch-export"]


@pytest.fixture(scope="module")
def digits_exports(digits_ckpts, tmp_path_factory):
    """Each (format, pruned/dense) exported once, on first use, for the module's tests."""
    out = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(fmt, kind):
        if (fmt, kind) not in cache:
            cache[(fmt, kind)] = export_checkpoint(
                digits_ckpts[kind],
                "lightning_green.demos.DigitsCNN",
                out / f"{kind}{SUFFIX[fmt]}",
                fmt,
                datamodule=DigitsDataModule(batch_size=16) if kind == "pruned" else None,
                verbose=False,
            )
        return cache[(fmt, kind)]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
def test_pruned_digits_round_trip(digits_exports, digits_ckpts, fmt):
    res = digits_exports(fmt, "pruned")
    assert [c.input for c in res.checks] == ["example input", "datamodule batch"]
    assert all(c.ok and c.max_abs_diff <= 1e-4 for c in res.checks)
    assert res.checks[1].batch_size == 16  # the dynamic batch axis took the datamodule's batch
    model = digits_ckpts["pruned_model"]
    run = load_exported(fmt, res.path)
    x = torch.randn(5, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(run(x)[0], model(x), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pruned_export_is_smaller(digits_exports, fmt):
    pruned, dense = digits_exports(fmt, "pruned"), digits_exports(fmt, "dense")
    assert pruned.params < dense.params
    assert pruned.size_bytes < dense.size_bytes
    assert pruned.size_bytes == sum(os.path.getsize(f) for f in pruned.files)


def test_summary_prints_size_params_and_tolerance(digits_exports):
    text = digits_exports("torch-export", "pruned").summary()
    assert "parameters" in text and "kB" in text and "atol 0.0001 + rtol 0.001" in text and "ok" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet_demo_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    model = DigitsResNet(channels=[8, 16]).eval()
    res = export_model(model, tmp_path / f"r{SUFFIX[fmt]}", fmt, verbose=False)
    assert all(c.ok for c in res.checks)
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(fmt, res.path)(x)[0], model(x), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_gpt_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    model = TinyGPT(d_model=32, n_layers=1, n_heads=4, block_size=32).eval()
    x = torch.randint(0, 256, (1, 16))
    res = export_model(model, tmp_path / f"g{SUFFIX[fmt]}", fmt, example_inputs=x, verbose=False)
    assert all(c.ok for c in res.checks)
    batch = torch.randint(0, 256, (4, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_exported(fmt, res.path)(batch)[0], model(batch), atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------------------------ datamodules
class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)
        self.example_input_array = (torch.randn(1, 4), torch.randn(1, 2))

    def forward(self, x, y):
        return self.a(x) + self.b(y)


class ValOnly(pl.LightningDataModule):
    """Serves ``batch`` (built per sample from ``make``) for validation only; ``fail_setup`` makes setup raise."""

    def __init__(self, make, fail_setup=False):
        super().__init__()
        self.make, self.fail_setup = make, fail_setup

    def setup(self, stage):
        if self.fail_setup:
            torch.load("/nonexistent/lightning-green/x.pt")  # the data directory is missing

    def val_dataloader(self):
        return DataLoader([self.make() for _ in range(8)], batch_size=4)


def test_a_datamodule_whose_setup_fails_is_one_line_naming_data(digits_ckpts, tmp_path):
    dm = ValOnly(lambda: (torch.randn(1, 24, 24), 0), fail_setup=True)
    with pytest.raises(
        InvalidArgumentError,
        match=r"export\(data=ValOnly\): `data` must serve a validate batch to check the export on; its "
        r"setup\('validate'\) raised FileNotFoundError: ",
    ) as e:
        export_checkpoint(digits_ckpts["dense"], "DigitsCNN", tmp_path / "m.pt2", "torch-export", datamodule=dm)
    assert "\n" not in str(e.value) and not (tmp_path / "m.pt2").exists()


def test_a_two_input_model_is_checked_on_the_first_two_items_of_each_batch(tmp_path):
    torch.manual_seed(0)
    model = TwoIn()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "two.ckpt")
    dm = ValOnly(lambda: (torch.randn(4), torch.randn(2), torch.tensor(0.0)))  # (x, y, label)
    res = export_checkpoint(tmp_path / "two.ckpt", TwoIn(), tmp_path / "m.pt2", "torch-export", datamodule=dm)
    assert [(c.input, c.batch_size, c.ok) for c in res.checks][1] == ("datamodule batch", 4, True)


def test_a_batch_without_the_model_inputs_is_one_line(tmp_path):
    torch.save({"state_dict": TwoIn().state_dict()}, tmp_path / "two.ckpt")
    dm = ValOnly(lambda: {"x": torch.randn(4), "y": torch.randn(2)})
    with pytest.raises(
        InvalidArgumentError,
        match=r"export\(data=ValOnly\): `data` must serve batches that start with the model's 2 input tensor\(s\) "
        r".*its validate batch is a dict with keys \['x', 'y'\]",
    ):
        export_checkpoint(tmp_path / "two.ckpt", TwoIn(), tmp_path / "m.pt2", "torch-export", datamodule=dm)


class Ids(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)
        self.example_input_array = torch.zeros(1, 8, dtype=torch.long)

    def forward(self, ids):
        return self.emb(ids)


def test_data_that_cannot_be_the_model_input_is_one_line_naming_data(tmp_path):
    # Images for a token model were traced in place of the example, and the failure was blamed on "the example input".
    torch.save({"state_dict": Ids().state_dict()}, tmp_path / "ids.ckpt")
    dm = ValOnly(lambda: (torch.randn(1, 8, 8), 0))
    with pytest.raises(
        InvalidArgumentError,
        match=r"^export\(data=ValOnly\): `data` must serve the model's inputs, like its example_input_array int64 "
        r"\(1, 8\); its batch is float32 \(4, 1, 8, 8\)\.$",
    ):
        export_checkpoint(tmp_path / "ids.ckpt", Ids(), tmp_path / "m.pt2", "torch-export", datamodule=dm)
    assert not (tmp_path / "m.pt2").exists()


class Flat(nn.Module):
    def __init__(self, flatten=True):
        super().__init__()
        self.fc, self.flatten = nn.Linear(64, 3), flatten
        self.example_input_array = torch.zeros(1, 64)

    def forward(self, x):
        return self.fc(x.flatten(1) if self.flatten else x)


def test_data_of_another_rank_is_taken_when_the_model_takes_it(tmp_path):
    # An MLP whose forward flattens takes (B, 1, 8, 8) images beside its flat example: that exported before the
    # data check and must still; one that cannot take them is refused naming `data`, with the model's error.
    torch.save({"state_dict": Flat().state_dict()}, tmp_path / "flat.ckpt")
    dm = ValOnly(lambda: (torch.randn(1, 8, 8), 0))
    res = export_checkpoint(tmp_path / "flat.ckpt", Flat(), tmp_path / "m.pt2", "torch-export", datamodule=dm)
    assert [(c.input, c.ok) for c in res.checks] == [("example input", True), ("datamodule batch", True)]
    with pytest.raises(
        InvalidArgumentError, match=r"^export\(data=ValOnly\): .*\(the model fails on it: RuntimeError: "
    ):
        export_checkpoint(tmp_path / "flat.ckpt", Flat(False), tmp_path / "n.pt2", "torch-export", datamodule=dm)


# ------------------------------------------------------------------------------------------------ Hugging Face
def tiny_llama(transformers):
    """A 1-layer LlamaForCausalLM with 64 tokens, seeded (no download)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def hf_module():
    """A LightningModule holding a tiny LlamaForCausalLM built from a config (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    import lightning.pytorch as pl

    class Holder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_llama(transformers)
            self.example_input_array = torch.randint(0, 64, (1, 12))

        def forward(self, input_ids):
            return self.model(input_ids=input_ids)  # a ModelOutput, not a tensor

    return Holder().eval()


@pytest.mark.parametrize("fmt", ["hf", "torch-export", pytest.param("onnx", marks=needs_onnx)])
def test_hf_model_round_trip(hf_module, tmp_path, fmt):
    out = tmp_path / ("hf" if fmt == "hf" else f"m{SUFFIX[fmt]}")
    res = export_model(hf_module, out, fmt, verbose=False)
    assert all(c.ok for c in res.checks)
    if fmt == "hf":
        assert (out / "config.json").is_file() and res.size_bytes > 0
        from transformers import LlamaForCausalLM

        reloaded = LlamaForCausalLM.from_pretrained(out).eval()
        x = torch.randint(0, 64, (2, 12))
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x).logits, hf_module(x).logits)
    else:
        x = torch.randint(0, 64, (3, 12))
        with torch.no_grad():
            torch.testing.assert_close(load_exported(fmt, out)(x)[0], hf_module(x).logits, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("fmt", ["torch-export", pytest.param("onnx", marks=needs_onnx)])
def test_token_model_export_takes_other_sequence_lengths(hf_module, tmp_path, fmt):
    shorter = torch.randint(0, 64, (2, 5))  # the example is (1, 12): another batch and another length
    res = export_model(hf_module, tmp_path / f"m{SUFFIX[fmt]}", fmt, check_inputs=[("short", shorter)], verbose=False)
    assert [c.input for c in res.checks] == [
        "example input with seeded token ids",
        "example input with seeded token ids, length 6",  # the dynamic time axis is checked off the traced length
        "short",
    ]
    assert all(c.ok for c in res.checks) and res.fixed_seq_len is None
    x = torch.randint(0, 64, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(load_exported(fmt, res.path)(x)[0], hf_module(x).logits, atol=1e-4, rtol=1e-3)


def test_an_export_wrong_off_the_traced_length_is_re_exported_at_a_fixed_one(hf_module, tmp_path, monkeypatch):
    import lightning_green.export.formats as formats

    real = formats.load_exported
    loads = []

    def traced_length_only(fmt, path, threads=None):  # e.g. a mask baked in as a constant of the traced length
        run = real(fmt, path, threads)
        loads.append(path)
        return lambda x: run(x) if x.shape[1] == 12 else tuple(t + 1 for t in run(x))

    monkeypatch.setattr(formats, "load_exported", traced_length_only)
    res = export_model(hf_module, tmp_path / "m.pt2", "torch-export", verbose=False)
    assert len(loads) == 2  # the dynamic export failed at length 6, so it was exported again, fixed
    assert res.fixed_seq_len == 12 and "sequence length fixed at 12" in res.summary()
    assert [c.input for c in res.checks] == ["example input with seeded token ids"] and res.checks[0].ok


class LenScale(nn.Module):
    """Takes any length eagerly, but ``math.sqrt`` of the length is a Python float: a trace bakes the length in."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.emb(x).sum(1) / math.sqrt(x.shape[1]))


class ListPos(nn.Module):
    """Takes any length eagerly; its positions, a Python list of the length, are a constant of the trace."""

    def __init__(self):
        super().__init__()
        self.emb, self.pos, self.head = nn.Embedding(50, 4), nn.Embedding(16, 4), nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.emb(x) + self.pos(torch.tensor(list(range(x.shape[1])))))


class FlatSeq(nn.Module):
    """Takes only length 8: the time axis is flattened into a Linear of fixed width."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 2), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.emb(x).flatten(1))


@pytest.mark.parametrize("model_cls", [LenScale, ListPos, FlatSeq])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_length_the_exporter_specialises_is_exported_fixed(tmp_path, fmt, model_cls, capsys):
    # torch.export with Dim.AUTO specialises such a length without raising (and the ONNX graph still names the axis
    # dynamic): the export must take the traced length only and say so, not fail its check at another length.
    torch.manual_seed(0)
    x = torch.zeros(1, 8, dtype=torch.long)
    res = export_model(model_cls().eval(), tmp_path / f"m{SUFFIX[fmt]}", fmt, example_inputs=x)
    assert res.fixed_seq_len == 8 and "sequence length fixed at 8" in capsys.readouterr().out
    assert [c.input for c in res.checks] == ["example input with seeded token ids"] and res.checks[0].ok


class Pixels(nn.Module):
    """uint8 pixels ``(batch, 1, 6, 6)``: an integer input, but no time axis."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.conv(x.float() / 255).mean((2, 3)))


def test_an_integer_image_has_no_sequence_length(tmp_path):
    x = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    res = export_model(Pixels().eval(), tmp_path / "m.pt2", "torch-export", example_inputs=x, verbose=False)
    assert res.fixed_seq_len is None and "sequence length" not in res.summary()


def test_fixed_sequence_length_is_said_and_a_check_at_another_length_is_one_line(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT(d_model=16, n_layers=1, n_heads=2, block_size=16).eval()  # caches its mask per length
    x = torch.randint(0, 256, (1, 8))
    res = export_model(model, tmp_path / "g.pt2", "torch-export", example_inputs=x, verbose=False)
    assert res.fixed_seq_len == 8 and "sequence length fixed at 8" in res.summary()
    with pytest.raises(
        ExportError,
        match=r"the export \(its sequence length is fixed at 8\) cannot run on the short \(shapes \(2, 5\); traced "
        r"on \(1, 8\)\): .*failed its check and is left at '.*g2\.pt2' only for inspection",
    ) as e:
        export_model(
            model,
            tmp_path / "g2.pt2",
            "torch-export",
            example_inputs=x,
            check_inputs=[("short", x[:, :5].repeat(2, 1))],
        )
    assert "\n" not in str(e.value)


def test_a_check_input_the_model_does_not_take_is_refused_before_exporting(tmp_path):
    with pytest.raises(
        ExportError, match=r"export\(format='onnx'\): Linear itself fails on the odd batch \(shapes \(1, 3\)\), so it "
    ) as e:
        export_model(
            nn.Linear(2, 2),
            tmp_path / "m.onnx",
            example_inputs=torch.zeros(1, 2),
            check_inputs=[("odd batch", torch.zeros(1, 3))],
        )
    assert "\n" not in str(e.value) and not (tmp_path / "m.onnx").exists()


def test_a_broken_positional_encoding_fails_the_check_on_an_all_zeros_example(hf_module, tmp_path, monkeypatch):
    import copy

    import lightning_green.export.formats as formats

    broken = copy.deepcopy(hf_module)
    broken.model.model.rotary_emb.inv_freq.mul_(7.0)  # wrong positions: identical tokens cannot show it
    monkeypatch.setattr(formats, "load_exported", lambda *a, **k: lambda *x: formats._as_tensors(broken(*x)))
    zeros = torch.zeros(1, 12, dtype=torch.long)
    with pytest.raises(ExportError, match=r"differ from the model's on the example input with seeded token ids"):
        export_model(hf_module, tmp_path / "m.pt2", "torch-export", example_inputs=zeros, verbose=False)


def test_seeded_token_ids_are_below_the_smallest_embedding_and_repeatable(tmp_path):
    from lightning_green.export.formats import _example_check

    torch.manual_seed(0)
    model = TinyGPT(d_model=16, n_layers=1, n_heads=2, block_size=16).eval()  # 256 tokens, 16 positions
    zeros = torch.zeros(1, 16, dtype=torch.long)
    res = export_model(model, tmp_path / "g.pt2", "torch-export", example_inputs=zeros, verbose=False)
    name, (ids,) = _example_check(model, (zeros,))
    assert res.checks[0].input == name == "example input with seeded token ids" and res.checks[0].ok
    assert ids.shape == zeros.shape and ids.dtype == zeros.dtype and len(ids.unique()) > 1 and int(ids.max()) < 16
    assert torch.equal(ids, _example_check(model, (zeros,))[1][0])


@pytest.fixture(scope="module")
def hf_masked():
    """A tiny LlamaForCausalLM whose forward takes ``(input_ids, attention_mask)``, and a left-padded example."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")

    class MaskedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tiny_llama(transformers)

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as batched generation pads
    return MaskedLM().eval(), (ids, mask)


@needs_onnx
def test_a_left_padded_example_exports_to_onnx_with_a_dynamic_length(hf_masked, tmp_path):
    # What the model computes for a padding query (a row of the mask with nothing to attend to) means nothing and the
    # ONNX graph computes it otherwise: the check compares real tokens only, and the dynamic length is kept.
    model, example = hf_masked
    res = export_model(model, tmp_path / "m.onnx", "onnx", example_inputs=example, verbose=False)
    assert res.fixed_seq_len is None and all(c.ok for c in res.checks)
    assert [c.padding_not_compared for c in res.checks] == [5, 5]  # at length 12 and at length 6
    assert "— ok (5 padding positions of the attention mask not compared)" in res.summary()
    assert "sequence length fixed" not in res.summary()
    ids = torch.randint(0, 64, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        ref = model(ids, mask)
    got = load_exported("onnx", res.path)(ids, mask)[0]
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-3)


def _off_by_one_at(monkeypatch, positions):
    """Make the loaded export add 1 to its output at ``positions`` of the (batch, time) grid (a boolean function)."""
    import lightning_green.export.formats as formats

    real = formats.load_exported

    def perturbed(fmt, path, threads=None):
        run = real(fmt, path, threads)

        def wrong(*x):
            (out,) = run(*x)
            return (out + positions(*x).unsqueeze(-1).to(out.dtype),)

        return wrong

    monkeypatch.setattr(formats, "load_exported", perturbed)


def test_outputs_at_padding_positions_are_not_compared(hf_masked, tmp_path, monkeypatch):
    model, example = hf_masked
    _off_by_one_at(monkeypatch, lambda ids, mask: mask == 0)
    res = export_model(model, tmp_path / "m.pt2", "torch-export", example_inputs=example, verbose=False)
    assert all(c.ok and c.max_abs_diff < 1e-4 for c in res.checks) and res.fixed_seq_len is None


def test_a_mismatch_at_a_real_token_of_a_padded_input_still_fails(hf_masked, tmp_path, monkeypatch):
    model, example = hf_masked
    _off_by_one_at(monkeypatch, lambda ids, mask: (mask == 1) & (torch.arange(ids.shape[1]) == ids.shape[1] - 1))
    with pytest.raises(
        ExportError,
        match=r"outputs differ from the model's on the example input with seeded token ids \(max \|diff\| 1 ",
    ):
        export_model(model, tmp_path / "m.pt2", "torch-export", example_inputs=example, verbose=False)


def test_a_batch_by_classes_output_is_compared_even_when_classes_equal_the_length():
    # A sequence classifier's (batch, classes) logits with classes == time: whole class columns were skipped.
    from lightning_green.export.formats import _compare

    padding = torch.tensor([[True, False, False, False], [False, False, False, False]])
    ref = torch.zeros(2, 4)
    got = ref.clone()
    got[0, 0] = 5.0  # class 0 of the first row, at a "padding" position by coincidence of shapes
    assert not _compare("x", (ref,), (got,), 1e-4, 1e-3, padding=padding).ok
    logits = torch.zeros(2, 4, 3)
    wrong = logits.clone()
    wrong[0, 0] = 5.0  # (batch, time, vocab): a padding query's outputs are not compared
    assert _compare("x", (logits,), (wrong,), 1e-4, 1e-3, padding=padding).ok


def test_an_upper_case_onnx_suffix_is_an_onnx_file(tmp_path):
    from lightning_green.export.formats import check_export_out

    assert check_export_out("export", tmp_path / "M.ONNX", "onnx") == tmp_path / "M.ONNX"


class Segments(nn.Module):
    """Token ids and 0/1 segment ids of the same shape: the segment ids are not an attention mask."""

    def __init__(self):
        super().__init__()
        self.tok, self.seg, self.head = nn.Embedding(50, 4), nn.Embedding(2, 4), nn.Linear(4, 3)

    def forward(self, input_ids, token_type_ids):
        return self.head(self.tok(input_ids) + self.seg(token_type_ids))


def test_zeros_of_an_input_not_named_attention_mask_are_compared(tmp_path, monkeypatch):
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1
    _off_by_one_at(monkeypatch, lambda ids, seg: seg == 0)
    with pytest.raises(ExportError, match=r"outputs differ from the model's on the example input"):
        export_model(Segments().eval(), tmp_path / "s.pt2", "torch-export", example_inputs=(ids, segments))


# ------------------------------------------------------------------------------------------------ bad input
def test_mismatched_checkpoint_is_one_line(digits_ckpts, tmp_path):
    with pytest.raises(
        ValueError, match=r"export\(ckpt='.*dense\.ckpt'\): `ckpt` must be a checkpoint of DigitsResNet"
    ) as e:
        export_checkpoint(digits_ckpts["dense"], "DigitsResNet", tmp_path / "m.onnx", "onnx")
    assert "\n" not in str(e.value) and "missing" in str(e.value)


def test_checkpoint_of_other_hyperparameters_is_one_line(digits_ckpts, tmp_path):
    config = {"model": {"class_path": "lightning_green.demos.DigitsCNN", "init_args": {"channels": [8, 16]}}}
    with pytest.raises(ValueError, match=r"`ckpt` .*DigitsCNN.*(unexpected|other shapes)") as e:
        load_checkpoint_module(digits_ckpts["pruned"], None, config=config, owner="export")
    assert "\n" not in str(e.value)


def test_a_model_the_format_cannot_take_names_the_module(tmp_path):
    with pytest.raises(
        ExportError, match=r"Gated cannot be exported to 'torch-export' \(blocked in module gate \(Gate\)"
    ) as e:
        export_model(Gated(), tmp_path / "g.pt2", "torch-export", example_inputs=torch.randn(1, 4), verbose=False)
    assert "\n" not in str(e.value)


class Eigh(nn.Module):
    def forward(self, x):
        return torch.linalg.eigh(x @ x.transpose(-1, -2)).eigenvalues  # no ONNX function for aten._linalg_eigh


class Spectral(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.eig = Eigh()

    def forward(self, x):
        return self.eig(self.lin(x))


@needs_onnx
def test_an_op_onnx_lacks_is_named_with_its_module(tmp_path):
    with pytest.raises(
        ExportError, match=r"blocked in module eig \(Eigh\); op <OpOverload\(op='aten._linalg_eigh'"
    ) as e:
        export_model(Spectral(), tmp_path / "s.onnx", "onnx", example_inputs=torch.randn(1, 3, 4), verbose=False)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_hf_format_needs_a_pretrained_model(tmp_path):
    with pytest.raises(
        ExportError, match=r"`format` 'hf' needs a module that is or holds a transformers PreTrainedModel"
    ):
        export_model(nn.Linear(2, 2), tmp_path / "hf", "hf", example_inputs=torch.zeros(1, 2), verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "tflite"}, r"export\(format='tflite'\): `format` must be one of \('onnx', 'torch-export', 'hf'\)"),
        ({"out": "missing/dir/m.onnx"}, r"`out` must be in an existing directory; '.*missing/dir' does not exist"),
        ({"out": "m.onnx", "format": "torch-export"}, r"`out` must end in '.pt2' for format 'torch-export'"),
        ({"out": "last.ckpt"}, r"export\(out='.*last\.ckpt'\): `out` must end in '.onnx' for format 'onnx'"),
        ({"atol": -1.0}, r"export\(atol=-1.0\): `atol` must be a number >= 0"),
        ({"example_inputs": {"x": 1}}, r"`example_inputs` must be a tensor or a tuple of tensors"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    kwargs = {"out": "m.onnx", **kwargs}
    kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(ValueError, match=match):
        export_model(nn.Linear(2, 2), **{"example_inputs": torch.zeros(1, 2), **kwargs}, verbose=False)


@pytest.mark.parametrize(
    ("fmt", "opset", "exc", "match"),
    [
        ("onnx", 7, ValueError, r"export\(opset=7\): `opset` must be an int from 18 to \d+ \(the opsets torch's ONNX"),
        ("onnx", 99, ValueError, r"export\(opset=99\): `opset` must be an int from 18 to \d+ "),
        ("onnx", -1, ValueError, r"export\(opset=-1\): `opset` must be an int from 18 to \d+ "),
        ("onnx", "abc", TypeError, r"export\(opset='abc'\): `opset` must be an int\."),
        ("torch-export", 18, ValueError, r"export\(opset=18\): `opset` must be None for format 'torch-export'"),
    ],
)
@needs_onnx
def test_an_opset_the_exporter_cannot_write_is_refused_before_exporting(tmp_path, monkeypatch, fmt, opset, exc, match):
    import lightning_green.export.formats as formats

    monkeypatch.setattr(formats, "tensor_outputs", lambda *a: pytest.fail("exported despite a bad `opset`"))
    with pytest.raises(exc, match=match) as e:
        export_model(nn.Linear(2, 2), tmp_path / f"m{SUFFIX[fmt]}", fmt, example_inputs=torch.zeros(1, 2), opset=opset)
    assert not isinstance(e.value, ExportError)  # the argument is at fault, not the model


@needs_onnx
def test_the_opset_written_is_recorded(tmp_path):
    import onnx

    res = export_model(nn.Linear(2, 2), tmp_path / "m.onnx", example_inputs=torch.zeros(1, 2), opset=20, verbose=False)
    written = [o.version for o in onnx.load(res.path).opset_import if o.domain in ("", "ai.onnx")]
    assert res.opset == 20 and written == [20] and res.as_dict()["opset"] == 20
    assert res.summary().startswith("exported onnx (opset 20): ")


@needs_onnx
def test_an_opset_the_export_did_not_get_is_an_error(tmp_path, monkeypatch):
    real = torch.onnx.export

    def ignores_opset(*args, **kwargs):  # as torch does where its version conversion fails: it only logs it
        return real(*args, **{**kwargs, "opset_version": 18})

    monkeypatch.setattr(torch.onnx, "export", ignores_opset)
    with pytest.raises(
        ExportError,
        match=r"export\(opset=20\): `opset` must be one torch's ONNX exporter can write Linear in; it wrote opset 18 "
        r"instead .* left at '.*m\.onnx' only for inspection",
    ) as e:
        export_model(nn.Linear(2, 2), tmp_path / "m.onnx", example_inputs=torch.zeros(1, 2), opset=20, verbose=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("fmt", "match"),
    [
        # The checkpoint reached through a link named as the export: the same file.
        ("torch-export", r"`out` must be another file than `ckpt`, the checkpoint being read \('.*dense\.ckpt'\): "),
        # ONNX writes its weights to <out>.data beside it.
        pytest.param(
            "onnx",
            r"export\(out='.*m\.onnx'\): `out` must be another file than `ckpt`, the checkpoint being read "
            r"\('.*m\.onnx\.data'\) \(it writes '.*m\.onnx\.data' beside it\): writing it would replace that file\.",
            marks=needs_onnx,
        ),
    ],
)
def test_an_export_never_writes_over_the_checkpoint_it_reads(digits_ckpts, tmp_path, monkeypatch, fmt, match):
    import lightning_green.export.api as api

    out = tmp_path / f"m{SUFFIX[fmt]}"
    if fmt == "onnx":
        ckpt = tmp_path / "m.onnx.data"
    else:
        ckpt = tmp_path / "dense.ckpt"
        out.symlink_to(ckpt)
    ckpt.write_bytes(Path(digits_ckpts["dense"]).read_bytes())
    before = ckpt.read_bytes()
    monkeypatch.setattr(api, "load_checkpoint_module", lambda *a, **k: pytest.fail("loaded before checking `out`"))
    with pytest.raises(InvalidArgumentError, match=match):
        export_checkpoint(ckpt, "DigitsCNN", out, fmt, verbose=False)
    assert ckpt.read_bytes() == before


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory no file can be created in: read-only bits, or for root (who ignores them) a kernel file system."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        (d / "probe").touch()
    except OSError:
        yield d
    else:
        (d / "probe").unlink()
        try:
            (Path("/sys/kernel") / "lightning-green-probe").touch()
        except OSError:
            yield Path("/sys/kernel")
        else:  # pragma: no cover - a writable /sys/kernel
            pytest.skip("no directory here refuses new files")
    finally:
        d.chmod(0o700)


@pytest.mark.parametrize(
    ("fmt", "out", "match"),
    [
        ("onnx", "adir", r"export\(out='.*adir'\): `out` must be a file path; it is an existing directory"),
        ("torch-export", "adir.pt2", r"`out` must be a file path; it is an existing directory"),
        ("hf", "afile", r"export\(out='.*afile'\): `out` must be a folder path .*; it is an existing file"),
    ],
)
def test_an_output_path_of_the_wrong_kind_is_refused_before_exporting(tmp_path, monkeypatch, fmt, out, match):
    import lightning_green.export.formats as formats

    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.pt2").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(formats, "tensor_outputs", lambda *a: pytest.fail("exported despite a bad `out`"))
    with pytest.raises(InvalidArgumentError, match=match) as e:
        export_model(nn.Linear(2, 2), tmp_path / out, fmt, example_inputs=torch.zeros(1, 2), verbose=False)
    assert not isinstance(e.value, ExportError)  # the path is at fault, not the model


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "m.onnx"), ("torch-export", "m.pt2"), ("hf", "hf")])
def test_an_unwritable_output_directory_is_refused_naming_out(unwritable_dir, fmt, name):
    with pytest.raises(
        InvalidArgumentError, match=r"`out` must be in a directory you can write to; creating a file in '.*' failed"
    ) as e:
        export_model(nn.Linear(2, 2), unwritable_dir / name, fmt, example_inputs=torch.zeros(1, 2), verbose=False)
    assert not isinstance(e.value, ExportError)


def test_a_failed_write_names_out_not_the_model(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.export, "save", full)
    with pytest.raises(InvalidArgumentError, match=r"export\(out='.*m\.pt2'\): writing `out` failed \(OSError: "):
        export_model(nn.Linear(2, 2), tmp_path / "m.pt2", "torch-export", example_inputs=torch.zeros(1, 2))


def test_outputs_beyond_tolerance_fail(tmp_path, monkeypatch):
    import lightning_green.export.formats as formats

    real = formats.load_exported

    def off_by_one(fmt, path, threads=None):
        run = real(fmt, path, threads)
        return lambda *x: tuple(t + 1 for t in run(*x))

    monkeypatch.setattr(formats, "load_exported", off_by_one)
    with pytest.raises(
        ExportError, match=r"outputs differ from the model's on the example input \(max \|diff\| 1 > atol"
    ):
        export_model(
            nn.Linear(2, 2), tmp_path / "m.pt2", "torch-export", example_inputs=torch.zeros(1, 2), verbose=False
        )


class MaskedLogProbs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.register_buffer("allowed", torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool))

    def forward(self, x):
        return self.lin(x).masked_fill(~self.allowed, float("-inf")).log_softmax(-1)  # -inf where masked


def test_equal_infinite_outputs_match(tmp_path):
    res = export_model(MaskedLogProbs(), tmp_path / "m.pt2", "torch-export", example_inputs=torch.randn(3, 4))
    assert res.checks[0].ok and res.checks[0].max_abs_diff <= 1e-4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_mismatch_is_reported_as_infinite(tmp_path, monkeypatch, bad):
    import lightning_green.export.formats as formats

    real = formats.load_exported

    def one_bad_value(fmt, path, threads=None):
        run = real(fmt, path, threads)

        def wrong(*x):
            (out,) = run(*x)
            out = out.clone()
            out[0, 0] = bad
            return (out,)

        return wrong

    monkeypatch.setattr(formats, "load_exported", one_bad_value)
    with pytest.raises(ExportError, match=r"on the example input \(max \|diff\| inf > atol"):
        export_model(MaskedLogProbs(), tmp_path / "m.pt2", "torch-export", example_inputs=torch.randn(1, 4))


@needs_onnx
def test_an_export_onnx_runtime_cannot_load_is_one_line(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).to(torch.bfloat16).eval()  # no bf16 Gemm kernel on ORT's CPU provider
    with pytest.raises(
        ExportError,
        match=r"export\(format='onnx'\): the export cannot be loaded to check it; it is left at '.*m\.onnx' only for "
        r"inspection: onnx_session\(path='.*m\.onnx'\): `path` must be an ONNX model that ONNX Runtime's CPU "
        r"provider can load; it refused it \(NotImplemented: .*float32",
    ) as e:
        export_model(model, tmp_path / "m.onnx", example_inputs=torch.randn(1, 4, dtype=torch.bfloat16), verbose=False)
    assert "\n" not in str(e.value)


def test_a_file_torch_export_cannot_load_is_one_line(tmp_path):
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(ExportError, match=r"load_exported\(path='.*junk\.pt2'\): `path` must be a torch.export prog"):
        load_exported("torch-export", tmp_path / "junk.pt2")


def test_missing_onnx_extra_is_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ExportError, match=r"`format` 'onnx' needs onnxscript \(not installed\); install the extra"):
        export_model(nn.Linear(2, 2), tmp_path / "m.onnx", "onnx", example_inputs=torch.zeros(1, 2), verbose=False)


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"`ckpt` must be an existing checkpoint file"):
        export_checkpoint(tmp_path / "nope.ckpt", "DigitsCNN", tmp_path / "m.onnx")


def test_a_config_without_a_model_section_keeps_the_saved_hyperparameters(tmp_path):
    from lightning_green.demos import DigitsCNN

    save_ckpt(tmp_path / "m.ckpt", DigitsCNN(channels=[8, 16]))  # not the default channels
    config = {"data": {"class_path": "lightning_green.demos.DigitsDataModule"}}
    model = load_checkpoint_module(tmp_path / "m.ckpt", "DigitsCNN", config=config)
    assert model.classifier.in_features == 16


def test_pruned_module_rebuilt_without_history_is_refused(digits_ckpts, tmp_path):
    ckpt = torch.load(digits_ckpts["pruned"], weights_only=True)
    ckpt.pop("callbacks")
    torch.save(ckpt, tmp_path / "nohist.ckpt")
    with pytest.raises(ValueError, match=r"`ckpt` does not match DigitsCNN: .*no StructuredPruning history"):
        load_checkpoint_module(tmp_path / "nohist.ckpt", "DigitsCNN", owner="export")


def test_unknown_module_path(digits_ckpts):
    with pytest.raises(ValueError, match=r"`module` must be an importable class path"):
        load_checkpoint_module(digits_ckpts["dense"], "no_such_pkg.Model")
    assert save_ckpt  # shared helper imported for other tests


class BoundedBatch(nn.Module):
    """Takes batches up to ``bound`` only: 65535 as CUDA's pooling kernels do (their grid's limit, seen on an H200)."""

    bound = 65535

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        torch._check(x.shape[0] <= self.bound)
        return self.lin(x)


class FixedBatch(nn.Module):
    def forward(self, x):
        return x.reshape(2, -1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_kernel_that_bounds_the_batch_exports_for_the_batches_it_takes(tmp_path, fmt):
    x = torch.randn(1, 4)
    model = BoundedBatch().eval()
    res = export_model(model, tmp_path / f"b{SUFFIX[fmt]}", fmt, example_inputs=x, verbose=False)
    assert all(c.ok for c in res.checks)
    run = load_exported(fmt, res.path)
    for n in (1, 3, 300):
        batch = torch.randn(n, 4)
        torch.testing.assert_close(run(batch)[0], model(batch), rtol=1e-4, atol=1e-5)


def test_a_model_that_fixes_the_batch_is_still_refused(tmp_path):
    with pytest.raises(ExportError, match=r"FixedBatch cannot be exported to 'torch-export'") as e:
        export_model(FixedBatch(), tmp_path / "f.pt2", "torch-export", example_inputs=torch.randn(1, 4), verbose=False)
    assert "\n" not in str(e.value)


class OwnBound(BoundedBatch):
    """A bound of the model's own (not a kernel's): its export stays refused, as the exporter's message suggests."""

    bound = 16


def test_a_batch_bound_of_the_models_own_is_still_refused(tmp_path):
    with pytest.raises(ExportError, match=r"OwnBound cannot be exported to 'torch-export'.*Dim\('batch', max=16\)"):
        export_model(OwnBound(), tmp_path / "o.pt2", "torch-export", example_inputs=torch.randn(1, 4), verbose=False)


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="needs the [export] extra")
def test_onnx_packages_too_old_for_torch_say_so_instead_of_blaming_the_model(tmp_path, monkeypatch):
    # torch 2.13's exporter imports `onnx_ir` (onnxscript >= 0.3) and a `_framework_apis.torch_2_11` module
    # (onnxscript >= 0.6): with older packages every model failed as "blocked in module features.0 (Conv2d)".
    def old_onnxscript(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnx_ir'", name="onnx_ir")

    monkeypatch.setattr(torch.onnx, "export", old_onnxscript)
    with pytest.raises(
        ExportError, match=r"needs newer ONNX packages .*onnx_ir.*pip install -U 'lightning-green\[export\]'"
    ) as err:
        export_model(nn.Linear(3, 2).eval(), tmp_path / "m.onnx", "onnx", example_inputs=torch.zeros(1, 3))
    assert "blocked in module" not in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_re_export_keeps_the_earlier_export(tmp_path, fmt):
    # A second export to the same `out` that failed its check replaced the good file with the failed one.
    class Noisy(nn.Sequential):
        noise = 0.0

        def forward(self, x):  # noise: the export's outputs never match the model's
            return super().forward(x) + self.noise * torch.rand(x.shape[0], 3)

    out = tmp_path / f"m{SUFFIX[fmt]}"
    net, x = Noisy(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(2, 4)
    first = export_model(net, out, fmt, example_inputs=x, verbose=False)
    good = {Path(f).name: Path(f).read_bytes() for f in first.files}
    net.noise = 1.0
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    with pytest.raises(ExportError, match=r"failed its check and is left at '.*\.failed.*' .*earlier export at") as e:
        export_model(net, out, fmt, example_inputs=x, verbose=False)
    assert "\n" not in str(e.value)
    assert {Path(f).name: Path(f).read_bytes() for f in first.files} == good
    failed = tmp_path / f"{out.name}.failed" / out.name
    assert failed.is_file() and failed.read_bytes() != good[out.name]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(failed.parent.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's 700
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*good, f"{out.name}.failed"])  # nothing staged left
    # A re-export that passes replaces it, and leaves no earlier sidecar or staging folder behind.
    net.noise = 0.0
    second = export_model(net, out, fmt, example_inputs=x, verbose=False)
    assert second.path == os.fspath(out) and all(Path(f).parent == tmp_path for f in second.files)
    assert out.read_bytes() != good[out.name]
    assert load_exported(fmt, out)(x)[0].allclose(net(x), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*good, f"{out.name}.failed"])


def test_export_leaves_the_model_in_its_own_mode(tmp_path):
    # export_model (and bench_inference) put a model in eval mode for good: a callback exporting mid-fit left the rest
    # of training with BatchNorm and Dropout in eval mode.
    from lightning_green.export import bench_inference

    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(), nn.Linear(8, 3)).train()
    net[3].eval()
    modes = [m.training for m in net.modules()]
    stats = net[1].running_mean.clone()
    export_model(net, tmp_path / "m.pt2", "torch-export", example_inputs=torch.randn(2, 4), verbose=False)
    assert [m.training for m in net.modules()] == modes
    bench_inference({"net": net}, torch.randn(2, 4), formats="eager", batch_sizes="2", repeats=1, warmup=0, rounds=1)
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(net[1].running_mean, stats)  # nothing ran in train mode (the MAC count neither)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"junk\n", r"not a complete torch checkpoint \(truncated, or another kind of file\): \w+"),
        (None, r"not a complete torch checkpoint \(truncated, or another kind of file\): \w+"),  # cut short
    ],
)
def test_an_unreadable_checkpoint_says_why_in_words(digits_ckpts, tmp_path, content, match):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content if content is not None else Path(digits_ckpts["dense"]).read_bytes()[:20000])
    with pytest.raises(
        InvalidArgumentError, match=r"`ckpt` must be a Lightning checkpoint readable with weights_only=True; " + match
    ) as e:
        load_checkpoint_module(bad, "lightning_green.demos.DigitsCNN")
    assert "\n" not in str(e.value)


@needs_onnx
def test_a_re_export_that_fails_before_its_checks_keeps_the_earlier_export(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    export_model(nn.Linear(2, 2), out, example_inputs=torch.zeros(1, 2), verbose=False)
    good = out.read_bytes()
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: real(*a, **{**k, "opset_version": 18}))
    with pytest.raises(
        ExportError,
        match=r"left at '.*m\.onnx\.failed/m\.onnx' only for inspection; the earlier export at '.*m\.onnx' "
        r"is kept\.$",
    ):
        export_model(nn.Linear(2, 2), out, example_inputs=torch.zeros(1, 2), opset=20, verbose=False)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "m.onnx.failed"]
