import json

import pytest
import torch
from torch import nn

from lightning_green.export import REPORT_ROW_FIELDS, bench_inference, load_checkpoint_module
from lightning_green.export.bench import format_bench, parse_batch_sizes
from lightning_green.export.report import headline
from lightning_green.report import Document
from lightning_green.report.green import _inference
from tests.export.conftest import Gated


@pytest.fixture(scope="module")
def pair(digits_ckpts):
    return {
        "dense": load_checkpoint_module(digits_ckpts["dense"], "DigitsCNN"),
        "pruned": load_checkpoint_module(digits_ckpts["pruned"], "DigitsCNN"),
    }


@pytest.fixture(scope="module")
def result(pair):
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnxscript", reason="needs the [export] extra")
    return bench_inference(pair, formats="eager,bf16,onnx", batch_sizes="1,8", repeats=3, warmup=1, rounds=2)


def test_every_model_format_and_batch_has_a_row(result):
    keys = {(r.model, r.format, r.batch_size) for r in result.rows}
    assert keys == {(m, f, b) for m in ("dense", "pruned") for f in ("eager", "bf16", "onnx") for b in (1, 8)}
    for r in result.rows:
        assert r.calls == 6  # repeats × rounds
        assert r.latency_ms_p90 >= r.latency_ms_median > 0
        assert r.energy_per_1k_j == pytest.approx(1000 * r.energy_j / (r.calls * r.batch_size))
        assert r.energy_j > 0 and r.label == "estimated"  # no RAPL/GPU here: the estimate, labelled
        assert r.unit == "prediction"


def test_ratios_are_pruned_over_dense(result):
    assert result.baseline == "dense" and result.subject == "pruned"
    q = next(q for q in result.ratios() if (q["format"], q["batch_size"]) == ("onnx", 8))
    p, d, e = result.row("pruned", "onnx", 8), result.row("dense", "onnx", 8), result.row("dense", "eager", 8)
    assert q["energy_per_1k_ratio"] == pytest.approx(p.energy_per_1k_j / d.energy_per_1k_j)
    assert q["energy_per_1k_ratio_vs_baseline_eager"] == pytest.approx(p.energy_per_1k_j / e.energy_per_1k_j)
    assert result.models["pruned"]["params"] < result.models["dense"]["params"]
    assert result.models["pruned"]["macs"] < result.models["dense"]["macs"]


def test_json_has_the_fields_the_report_reads(result, tmp_path):
    data = json.loads(json.dumps(result.as_dict()))
    assert data["kind"] == "inference_cost" and data["version"] == 1 and data["label"] == "estimated"
    for row in data["rows"]:
        assert set(REPORT_ROW_FIELDS) <= set(row)
    doc = Document("t")
    from lightning_green.report.run import Run
    from lightning_green.report.scalars import Scalars

    run = Run(path=tmp_path, energy={"extra": {"inference_cost": data}}, scalars=Scalars())
    _inference(doc, run)
    md = doc.to_markdown("img")
    assert "## Inference cost" in md and "energy / 1k predictions" in md and "| pruned | onnx | 8 |" in md
    top = headline(data)
    assert top["energy_per_1k_j"] == min(r["energy_per_1k_j"] for r in data["rows"] if r["model"] == "pruned")


def test_table_prints_rows_and_ratios(result):
    text = format_bench(result)
    assert "J/1k predictions" in text and "pruned vs dense" in text and "1 thread(s)" in text


def test_token_models_count_per_token():
    emb = nn.Sequential(nn.Embedding(16, 4), nn.Linear(4, 16)).eval()
    res = bench_inference(
        {"lm": emb},
        torch.zeros(1, 10, dtype=torch.long),
        formats="eager",
        batch_sizes=[2],
        repeats=2,
        warmup=0,
        rounds=1,
    )
    (row,) = res.rows
    assert res.unit == "token" and row.unit == "token"
    assert row.energy_per_1k_j == pytest.approx(1000 * row.energy_j / (2 * 2 * 10))


class Pixels(nn.Module):
    """uint8 pixels ``(batch, 1, 8, 8)``: integers, but 64 pixels are not 64 tokens."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.example_input_array = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        return self.fc(x.float().flatten(1) / 255)


def test_an_integer_image_counts_per_prediction():
    res = bench_inference({"img": Pixels().eval()}, formats="eager", batch_sizes=[2], repeats=2, warmup=0, rounds=1)
    (row,) = res.rows
    assert res.unit == "prediction" and row.unit == "prediction"
    assert row.energy_per_1k_j == pytest.approx(1000 * row.energy_j / (2 * 2))


def test_an_integer_image_is_refused_per_token():
    with pytest.raises(
        ValueError, match=r"`per` must be 'auto' or 'prediction' for a model whose first input is not integer token ids"
    ) as e:
        bench_inference({"img": Pixels().eval()}, formats="eager", batch_sizes=[2], repeats=1, rounds=1, per="token")
    assert "(it is uint8 (1, 1, 8, 8))" in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"batch_sizes": "1,0"},
            r"bench_inference\(batch_sizes='1,0'\): `batch_sizes` must be a comma-separated list of ints >= 1",
        ),
        ({"batch_sizes": [-4]}, r"`batch_sizes` must be a comma-separated list of ints >= 1"),
        ({"formats": "eager,tflite"}, r"`formats` must be a comma-separated list of .* \(got 'tflite'\)"),
        ({"repeats": 0}, r"bench_inference\(repeats=0\): `repeats` must be an int >= 1"),
        ({"threads": 0}, r"`threads` must be an int >= 1"),
        ({"per": "image"}, r"`per` must be one of \('auto', 'prediction', 'token'\)"),
        ({"baseline": "nope"}, r"`baseline` must be one of the model names \('a',\)"),
        (
            {"per": "token"},
            r"bench_inference\(per='token'\): `per` must be 'auto' or 'prediction' .* \(it is float32 \(1, 2\)\)",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bench_inference({"a": nn.Linear(2, 2)}, torch.zeros(1, 2), **kwargs)


def test_parse_batch_sizes_refuses_words():
    with pytest.raises(ValueError, match=r"`batch_sizes` must be"):
        parse_batch_sizes("1,big")


def test_run_dir_is_found_above_the_checkpoint_or_refused(tmp_path):
    from lightning_green.export import attach_to_run, find_run_dir

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert find_run_dir(ckpt) is None
    (tmp_path / "run" / "energy_report.json").write_text('{"version": 1, "stages": {}}')
    assert find_run_dir(ckpt) == (tmp_path / "run").resolve()
    with pytest.raises(ValueError, match=r"`run_dir` must be a fit run's log dir holding energy_report.json"):
        attach_to_run(tmp_path, {"rows": []})


def test_a_model_the_format_cannot_take_is_one_line_naming_the_module():
    from lightning_green.export import ExportError

    with pytest.raises(
        ExportError,
        match=r"bench_inference\(formats=\['torch-export'\]\): Gated cannot be exported to 'torch-export' \(blocked in "
        r"module gate \(Gate\)",
    ) as e:
        bench_inference({"g": Gated()}, torch.randn(1, 4), formats="eager,torch-export", repeats=1, rounds=1)
    assert "\n" not in str(e.value)
