import json
import os
import re
import shutil

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_green import StructuredPruning
from lightning_green.cli import main
from lightning_green.demos import DigitsCNN, TinyGPT
from lightning_green.export import load_checkpoint_module
from lightning_green.report import load_run
from tests.export.conftest import save_ckpt
from tests.report.runs import fit_digits


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([os.fspath(a) for a in args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dense and a pruned digits run (EnergyMonitor + GreenReport + a checkpoint each)."""
    root = tmp_path_factory.mktemp("runs")
    dense = fit_digits(root / "dense", "tb", epochs=2)
    pruning = StructuredPruning(target_speedup=2.0, start_epoch=0, end_epoch=0, round_to=2, verbose=False)
    pruned = fit_digits(root / "pruned", "tb", epochs=2, callbacks=[pruning])
    return {
        name: (t.log_dir, t.checkpoint_callback.best_model_path or t.checkpoint_callback.last_model_path)
        for name, t in (("dense", dense), ("pruned", pruned))
    }


def test_export_cli_writes_and_checks(runs, tmp_path, capsys):
    _, ckpt = runs["pruned"]
    out = tmp_path / "m.pt2"
    code, text, err = run_main(
        [
            "export",
            ckpt,
            "--module",
            "DigitsCNN",
            "--format",
            "torch-export",
            "--out",
            out,
            "--data",
            "lightning_green.demos.DigitsDataModule",
            "--json",
            tmp_path / "e.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.is_file() and "check datamodule batch (batch 64)" in text and "parameters" in text
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["format"] == "torch-export" and all(c["ok"] for c in data["checks"])
    dense = load_checkpoint_module(runs["dense"][1], "DigitsCNN")
    assert data["params"] < sum(p.numel() for p in dense.parameters())  # the run pruned, the export holds the cut


def test_bench_cli_adds_the_section_and_the_comparison_shows_it(runs, tmp_path, capsys):
    for name, other in (("pruned", "dense"), ("dense", None)):
        log_dir, ckpt = runs[name]
        args = [
            "bench-inference",
            ckpt,
            "--module",
            "DigitsCNN",
            "--formats",
            "eager",
            "--batch-sizes",
            "1,4",
            "--repeats",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--json",
            tmp_path / f"{name}.json",
        ]
        if other:
            args += ["--against", runs[other][1]]
        code, text, err = run_main(args, capsys)
        assert code == 0, err
        assert "J/1k predictions" in text and f"inference cost added to {log_dir}" in text.replace("\n", " ")
        with open(os.path.join(log_dir, "green_report.md"), encoding="utf-8") as f:
            md = f.read()
        assert "## Inference cost" in md
        section = load_run(log_dir).extra("inference_cost")
        assert section == json.loads((tmp_path / f"{name}.json").read_text())
    assert "| model | eager | 4 |" in md
    code, text, err = run_main(["report", runs["dense"][0], runs["pruned"][0], "--out", tmp_path, "--no-html"], capsys)
    assert code == 0, err
    assert "inference J/1k" in text and "/1k pred (eager, b" in text


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--batch-sizes", "0,64"], r"bench-inference\(batch_sizes='0,64'\): `batch_sizes` must be a comma-separated"),
        (["--formats", "eager,gguf"], r"`formats` must be a comma-separated list"),
        (["--module", "DigitsResNet"], r"`ckpt` must be a checkpoint of DigitsResNet as built here; missing: "),
        (["--json", "no/such/dir/b.json"], r"`json` must be in an existing directory"),
        (["--against", "no/such.ckpt"], r"bench-inference\(against='no/such.ckpt'\): `against` must be an existing "),
        (
            ["--per", "token"],
            r"`per` must be 'auto' or 'prediction' for a model whose first input is not integer token",
        ),
        (
            ["--device", "tpu"],
            r"bench-inference\(device='tpu'\): `device` must be 'auto', 'cpu', 'cuda' or 'cuda:N' \(N a visible GPU",
        ),
        (["--device", "cpu:1"], r"bench-inference\(device='cpu:1'\): `device` must be 'auto', 'cpu', 'cuda'"),
    ],
)
def test_bench_cli_bad_input_is_one_line_exit_2(runs, capsys, args, match):
    args = ["bench-inference", runs["dense"][1], *(["--module", "DigitsCNN"] if "--module" not in args else []), *args]
    code, _, err = run_main(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lightning-green bench-inference: error: ")
    import re

    assert re.search(match, err), err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--format", "tflite", "--out", "m.x"], r"export\(format='tflite'\): `format` must be one of"),
        (["--format", "onnx", "--out", "missing/m.onnx"], r"`out` must be in an existing directory"),
        (["--format", "hf", "--out", "hfdir"], r"`format` 'hf' needs a module that is or holds a transformers"),
    ],
)
def test_export_cli_bad_input_is_one_line_exit_2(runs, tmp_path, capsys, args, match):
    args = [a if not a.endswith(("m.x", "m.onnx", "hfdir")) else str(tmp_path / a) for a in args]
    code, _, err = run_main(["export", runs["dense"][1], "--module", "DigitsCNN", *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lightning-green export: error: ")
    import re

    assert re.search(match, err), err


def test_export_cli_reads_model_and_data_from_a_config(digits_ckpts, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  class_path: lightning_green.demos.DigitsCNN\n  init_args:\n    channels: [8, 16, 32]\n"
        "data:\n  class_path: lightning_green.demos.DigitsDataModule\n  init_args:\n    batch_size: 8\n"
    )
    out = tmp_path / "p.pt2"
    code, text, err = run_main(
        ["export", digits_ckpts["pruned"], "--config", config, "--format", "torch-export", "--out", out], capsys
    )
    assert code == 0, err
    assert "check datamodule batch (batch 8)" in text and out.is_file()


def test_export_cli_missing_config_is_one_line(digits_ckpts, tmp_path, capsys):
    code, _, err = run_main(
        ["export", digits_ckpts["dense"], "--config", tmp_path / "nope.yaml", "--out", tmp_path / "m.onnx"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "`config` must be an existing YAML file" in err


def test_export_cli_checks_a_language_model_on_its_datamodule_windows(tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("transformers")
    import torch

    from lightning_green.testing.hf import tiny_hf_module

    model = tiny_hf_module("llama", hidden_size=32, num_layers=1)  # example_input_array: (1, 64) token ids
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "lm.ckpt")
    data = {"seq_len": 16, "batch_size": 2, "train_bytes": 4096, "val_bytes": 1024, "batch_format": "causal_lm"}
    config = {
        "model": {"class_path": "lightning_green.demos.HFCausalLM", "init_args": dict(model.hparams)},
        "data": {"class_path": "lightning_green.demos.StdlibTextDataModule", "init_args": data},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["export", tmp_path / "lm.ckpt", "--config", tmp_path / "config.yaml", "--format", "torch-export"]
    code, text, err = run_main([*args, "--out", tmp_path / "lm.pt2"], capsys)
    assert code == 0, err
    assert "check datamodule batch (batch 2)" in text and "FAILED" not in text


@pytest.mark.parametrize(
    ("command", "args", "match"),
    [
        (
            "bench-inference",
            ["--json", "{dir}"],
            r"bench-inference\(json='.*'\): `json` must be a file path; it is an ",
        ),
        (
            "bench-inference",
            ["--run-dir", "{dir}"],
            r"`run_dir` must be a fit run's log dir holding energy_report.json",
        ),
        ("export", ["--json", "{dir}", "--out", "{dir}/m.pt2"], r"export\(json='.*'\): `json` must be a file path"),
    ],
)
def test_where_results_go_is_checked_before_the_work(digits_ckpts, tmp_path, capsys, monkeypatch, command, args, match):
    import lightning_green.export.api as api
    import lightning_green.export.bench as bench

    def never(*a, **k):
        pytest.fail("the work ran before its destination was checked")

    monkeypatch.setattr(bench, "bench_inference", never)
    monkeypatch.setattr(api, "export_checkpoint", never)
    args = [a.format(dir=tmp_path) for a in args]
    code, _, err = run_main([command, digits_ckpts["dense"], "--module", "DigitsCNN", *args], capsys)
    assert code == 2 and err.count("\n") == 1
    import re

    assert re.search(match, err), err


@pytest.fixture
def fake_run(digits_ckpts, tmp_path):
    """A run's log dir: two checkpoints, the energy report, the config LightningCLI saved."""
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("epoch=2-step=15.ckpt", "last.ckpt"):
        shutil.copyfile(digits_ckpts["dense"], ckpts / name)
    report = {"version": 1, "stages": {"fit": {"energy_j": {"total": 12.5}}}}
    (tmp_path / "run" / "energy_report.json").write_text(json.dumps(report))
    (tmp_path / "run" / "config.yaml").write_text("model:\n  class_path: lightning_green.demos.DigitsCNN\n")
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("command", "args", "match"),
    [
        (
            "export",
            ["--out", "{run}/checkpoints/last.ckpt"],
            r"export\(out='.*last\.ckpt'\): `out` must end in '\.onnx' for format 'onnx'",
        ),
        (
            "export",
            ["--out", "{run}/m.onnx", "--json", "{run}/energy_report.json"],
            r"export\(json='.*energy_report\.json'\): `json` must not be an existing lightning-green energy report: ",
        ),
        (
            "export",
            ["--out", "{run}/m.onnx", "--json", "{ckpt}"],
            r"`json` must be another file than `ckpt`, the checkpoint being read \('.*epoch=2-step=15\.ckpt'\): "
            r"writing it would replace that file\.",
        ),
        (
            "export",
            ["--out", "{run}/m.onnx", "--json", "{run}/m.onnx"],
            r"`json` must be another file than `out`, the export being written",
        ),
        (
            "export",
            ["--out", "{run}/m.onnx", "--json", "{run}/config.yaml"],
            r"`json` must be another file than a config LightningCLI saved near `ckpt` ",
        ),
        (
            "bench-inference",
            ["--json", "{run}/energy_report.json"],
            r"bench-inference\(json='.*energy_report\.json'\): `json` must be another file than the energy report of "
            r"`run_dir`, which the benchmark updates",
        ),
        (
            "bench-inference",
            ["--no-report", "--json", "{run}/energy_report.json"],
            r"`json` must not be an existing lightning-green energy report",
        ),
        (
            "bench-inference",
            ["--against", "{run}/checkpoints/last.ckpt", "--json", "{run}/checkpoints/last.ckpt"],
            r"`json` must be another file than `against`, the baseline checkpoint \('.*last\.ckpt'\)",
        ),
        (  # an earlier hf export's config.json (or its weights) in that folder
            "export",
            ["--format", "hf", "--out", "{run}", "--json", "{run}/checkpoints/config.json"],
            r"`json` must be outside `out` '.*', the Hugging Face folder being written",
        ),
    ],
)
def test_results_never_overwrite_what_the_command_reads_or_the_runs_report(
    fake_run, capsys, monkeypatch, command, args, match
):
    import lightning_green.export.api as api

    def never(*a, **k):
        pytest.fail("the work ran before its destination was checked")

    monkeypatch.setattr(api, "load_checkpoint_module", never)
    monkeypatch.setattr("lightning_green.export.load.load_checkpoint_module", never)
    ckpt = fake_run / "checkpoints" / "epoch=2-step=15.ckpt"
    before = {p: p.read_bytes() for p in fake_run.rglob("*") if p.is_file()}
    args = [a.format(run=fake_run, ckpt=ckpt) for a in args]
    code, _, err = run_main([command, ckpt, "--module", "DigitsCNN", *args], capsys)
    assert code == 2 and err.count("\n") == 1
    import re

    assert re.search(match, err), err
    assert {p: p.read_bytes() for p in fake_run.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible")
def test_bench_cli_asked_for_a_gpu_without_one_says_so_before_loading(digits_ckpts, capsys):
    code, _, err = run_main(
        ["bench-inference", digits_ckpts["dense"], "--module", "DigitsCNN", "--device", "cuda"], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "bench-inference(device='cuda'): `device` must be 'cpu' or 'auto' here: no CUDA GPU is visible" in err


def test_bench_cli_device_auto_without_a_gpu_benchmarks_on_the_cpu(digits_ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    args = ["bench-inference", digits_ckpts["dense"], "--module", "DigitsCNN", "--device", "auto", "--no-report"]
    args += ["--batch-sizes", "2", "--repeats", "1", "--rounds", "1", "--warmup", "0", "--json", tmp_path / "b.json"]
    code, text, err = run_main(args, capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["device"] == "cpu" and sorted({r["format"] for r in data["rows"]}) == ["bf16", "eager", "onnx"]


def test_bench_cli_refuses_a_run_dir_with_no_report(digits_ckpts, tmp_path, capsys):
    # --run-dir was silently ignored (and never checked) next to --no-report.
    args = ["bench-inference", digits_ckpts["dense"], "--module", "DigitsCNN", "--no-report", "--run-dir", tmp_path]
    code, text, err = run_main(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "`run_dir` must be left out with --no-report" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--repeats", "0"], r"bench-inference\(repeats=0\): `repeats` must be an int >= 1"),
        (["--threads", "0"], r"bench-inference\(threads=0\): `threads` must be an int >= 1"),
        (["--per", "sample"], r"bench-inference\(per='sample'\): `per` must be one of"),
    ],
)
def test_bench_settings_are_checked_before_any_checkpoint_loads(digits_ckpts, capsys, monkeypatch, args, match):
    # They were refused only after CKPT (and --against) had been rebuilt: minutes for a real LLM.
    def no_load(*a, **k):
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr("lightning_green.export.load.load_checkpoint_module", no_load)
    code, _, err = run_main(["bench-inference", digits_ckpts["dense"], "--module", "DigitsCNN", *args], capsys)
    assert code == 2 and err.count("\n") == 1
    assert re.search(match, err), err


def test_a_report_that_cannot_be_replaced_is_one_line_naming_run_dir(fake_run, monkeypatch):
    from lightning_green.export.report import attach_to_run

    before = (fake_run / "energy_report.json").read_bytes()

    def refused(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("os.replace", refused)
    with pytest.raises(
        ValueError,
        match=r"bench-inference\(run_dir='.*'\): `run_dir` must let its "
        r"energy_report.json be replaced .*\(Operation not permitted\)\. The report is unchanged\.$",
    ):
        attach_to_run(fake_run, {"rows": []}, regenerate=False)  # fmt: skip
    assert (fake_run / "energy_report.json").read_bytes() == before


def test_on_a_gpu_onnx_is_refused_before_loading_and_left_out_of_the_default_formats(digits_ckpts, capsys, monkeypatch):
    import torch

    from lightning_green.export import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert bench.resolve_device("auto") == torch.device("cuda", 0)
    assert bench.resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"`device` must be 'cuda' or 'cuda:N' with N < 2 \(2 visible GPU"):
        bench.resolve_device("cuda:2")
    assert bench.default_formats(torch.device("cuda", 1)) == ["eager", "bf16", "torch-export"]
    assert bench.default_formats(torch.device("cpu")) == ["eager", "bf16", "onnx"]

    def never(*a, **k):
        pytest.fail("the checkpoint was loaded before the formats were checked")

    monkeypatch.setattr("lightning_green.export.load.load_checkpoint_module", never)
    args = ["bench-inference", digits_ckpts["dense"], "--module", "DigitsCNN", "--device", "cuda"]
    code, _, err = run_main([*args, "--formats", "eager,onnx"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "`formats` must be a list without 'onnx' on cuda:0 (ONNX Runtime runs on the CPU here: --device cpu" in err


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A digits run of `lightning-green fit` (LightningCLI): (checkpoint, the config.yaml it saved)."""
    from lightning_green.cli import cli

    root = tmp_path_factory.mktemp("cli_run")
    args = ["fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    args += ["--trainer.enable_progress_bar=false", "--model.channels=[4, 8]", f"--trainer.default_root_dir={root}"]
    cli(args)
    (ckpt,) = (root / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    return ckpt, root / "lightning_logs" / "version_0" / "config.yaml"


def test_a_lightning_cli_run_needs_no_module_the_saved_config_names_it(cli_run, tmp_path, capsys):
    ckpt, config = cli_run
    code, text, err = run_main(["export", ckpt, "--out", tmp_path / "m.pt2", "--format", "torch-export"], capsys)
    assert code == 0, err
    assert f"checkpoint: model from {config} (the config LightningCLI saved with the run)" in text
    assert "check datamodule batch" in text  # the saved config's data section is checked too
    bench = ["bench-inference", ckpt, "--formats", "eager", "--batch-sizes", "2", "--repeats", "1", "--rounds", "1"]
    code, text, err = run_main([*bench, "--warmup", "0", "--no-report", "--against", ckpt], capsys)
    assert code == 0, err
    assert f"against: model from {config}" in text and "J/1k predictions" in text

    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(ckpt.read_bytes())  # copied away from its run: the class LightningCLI recorded in it is used
    code, text, err = run_main(["export", alone, "--out", tmp_path / "a.pt2", "--format", "torch-export"], capsys)
    assert code == 0, err
    assert "model from" not in text and "check example input" in text

    alone = save_ckpt(tmp_path / "plain.ckpt", DigitsCNN(channels=[4, 8]))  # nothing records its class
    code, _, err = run_main(["export", alone, "--out", tmp_path / "n.pt2", "--format", "torch-export"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "export(module=None): `module` must be given (a LightningModule class or its import path), or a " in err
    assert f"for `ckpt` '{alone}': no config.yaml saved by LightningCLI" in err
    code, text, err = run_main([*bench, "--warmup", "0", "--no-report", "--against", alone], capsys)
    assert code == 2 and f"for `against` '{alone}': no config.yaml" in err  # the baseline's own config is looked up
    code, text, err = run_main(["export", tmp_path / "missing.ckpt", "--out", tmp_path / "x.onnx"], capsys)
    assert code == 2 and "model from" not in text and "`ckpt` must be an existing checkpoint file" in err


def test_a_run_on_other_sized_data_is_traced_on_its_data_not_the_example_input(tmp_path, capsys):
    # DigitsCNN's example_input_array is 24x24; a run on 8x8 digits was exported with the example's fixed sizes, and
    # the check on the run's own data failed ("Got: 8 Expected: 24").
    from lightning_green.cli import cli

    args = ["fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    args += ["--trainer.enable_progress_bar=false", "--model.channels=[4]", "--data.image_size=8"]
    cli([*args, f"--trainer.default_root_dir={tmp_path}"])
    (ckpt,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    code, text, err = run_main(["export", ckpt, "--out", tmp_path / "m.onnx"], capsys)
    assert code == 0, err
    assert "traced on the datamodule batch's first sample (1, 1, 8, 8): the module's example_input_array" in text
    assert "check datamodule batch (batch 64)" in text and "ok" in text
    # bench-inference measures the run's input too (at 24x24 it measured 9x the convolutions' work)
    bench = ["bench-inference", ckpt, "--formats", "eager", "--batch-sizes", "2", "--repeats", "1", "--rounds", "1"]
    code, text, err = run_main([*bench, "--warmup", "0", "--no-report"], capsys)
    assert code == 0, err
    assert "benchmarked on the run's data sample (1, 1, 8, 8): the module's example_input_array (1, 1, 24, 24)" in text


def test_a_config_yaml_that_names_no_model_or_another_is_not_taken_for_the_runs(cli_run, tmp_path):
    import yaml

    from lightning_green.export.load import saved_run_config

    ckpt, config = cli_run
    project = tmp_path / "project"
    (project / "ckpts").mkdir(parents=True)
    (project / "config.yaml").write_text("learning_rate: 0.1\nmodel: resnet\n")
    (project / "ckpts" / "m.ckpt").write_bytes(ckpt.read_bytes())
    assert saved_run_config(project / "ckpts" / "m.ckpt") is None
    other = yaml.safe_load(config.read_text())
    other["model"]["class_path"] = "lightning_green.demos.TinyGPT"  # not the class the checkpoint records
    (project / "config.yaml").write_text(yaml.safe_dump(other))
    assert saved_run_config(project / "ckpts" / "m.ckpt") is None
    (tmp_path / "config.yaml").write_text(config.read_text())  # a LightningCLI config two folders up is found
    assert saved_run_config(project / "ckpts" / "m.ckpt") == tmp_path / "config.yaml"


@pytest.mark.parametrize(
    ("argument", "value", "shown"),
    [
        # With logger=False two fits share a log dir, and LightningCLI (overwrite=True) replaces the first's
        # config.yaml: export built the second run's model and called the first's checkpoint a mismatch.
        ("channels", [2, 2], "channels=[4, 8] (config: [2, 2])"),
        # The run changed a hyperparameter after saving its config (LearningRateFinder's lr): same config, other value.
        ("lr", 0.5, "lr=0.003 (config: 0.5)"),
    ],
)
def test_the_arguments_the_checkpoint_recorded_win_over_its_run_config(
    cli_run, tmp_path, capsys, argument, value, shown
):
    import yaml

    ckpt, config = cli_run
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    first = run / "checkpoints" / "first.ckpt"
    first.write_bytes(ckpt.read_bytes())
    other = yaml.safe_load(config.read_text())
    other["model"]["init_args"][argument] = value
    (run / "config.yaml").write_text(yaml.safe_dump(other))  # whatever the files' times (a copy, a git checkout)
    code, text, err = run_main(["export", first, "--out", tmp_path / "m.pt2", "--format", "torch-export"], capsys)
    assert code == 0, err
    assert f"checkpoint: model from {run / 'config.yaml'} (the config LightningCLI saved with the run)" in text
    assert f"recorded are used where {run / 'config.yaml'} differs: {shown} (a later fit" in text
    assert "check datamodule batch" in text  # the config's data is still checked
    model = load_checkpoint_module(first, None)
    assert model.hparams[argument] == torch.load(first, weights_only=True)["hyper_parameters"][argument]

    # The config is the run's (or a later run's) record: no output replaces it.
    code, _, err = run_main(["export", first, "--out", tmp_path / "o.onnx", "--json", run / "config.yaml"], capsys)
    assert code == 2 and "`json` must be another file than a config LightningCLI saved near `ckpt`" in err

    # A --config naming the class by its short name: the same class, so the recorded arguments win too.
    other["model"]["class_path"] = "DigitsCNN"
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(other))
    code, text, err = run_main(
        ["export", first, "--config", tmp_path / "short.yaml", "--out", tmp_path / "s.pt2", "--format", "torch-export"],
        capsys,
    )
    assert code == 0, err
    assert f"recorded are used where {tmp_path / 'short.yaml'} differs: {shown}" in text


def run_with_saved_data(cli_run, tmp_path, data):
    """The CLI run's checkpoint in a run folder of its own whose saved config has ``data`` as its data section;
    returns the export command's arguments."""
    import yaml

    ckpt, config = cli_run
    saved = yaml.safe_load(config.read_text())
    saved["data"] = data
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "checkpoints" / "m.ckpt").write_bytes(ckpt.read_bytes())
    return ["export", tmp_path / "checkpoints" / "m.ckpt", "--out", tmp_path / "m.pt2", "--format", "torch-export"]


def test_saved_data_that_cannot_serve_a_batch_here_skips_that_check_with_a_note(cli_run, tmp_path, capsys):
    data = {"class_path": "lightning_green.demos.DigitsDataModule", "init_args": {"batch_size": 0}}
    args = run_with_saved_data(cli_run, tmp_path, data)
    code, text, err = run_main(args, capsys)
    assert code == 0, err
    assert f"datamodule check skipped: the data of {tmp_path / 'config.yaml'} could not serve a batch here" in text
    assert "check example input" in text and "check datamodule batch" not in text
    code, _, err = run_main([*args, "--data", "DigitsDataModule"], capsys)  # named by the user: not skipped
    assert code == 2 and "export(data=DigitsDataModule): building it with {'batch_size': 0} failed" in err
    bench = ["bench-inference", args[1], "--formats", "eager", "--batch-sizes", "1", "--repeats", "1", "--rounds", "1"]
    code, text, err = run_main([*bench, "--warmup", "0", "--no-report"], capsys)
    assert code == 0, err  # benchmarked on the example input, and says why
    assert f"the data of {tmp_path / 'config.yaml'} could not serve a batch here" in text


def test_data_named_on_the_command_line_does_not_get_the_saved_configs_arguments(cli_run, tmp_path, capsys):
    data = {"class_path": "lightning_green.demos.StdlibTextDataModule", "init_args": {"seq_len": 32}}
    args = run_with_saved_data(cli_run, tmp_path, data)
    code, text, err = run_main([*args, "--data", "DigitsDataModule"], capsys)
    assert code == 0, err
    assert "check datamodule batch (batch 64)" in text  # DigitsDataModule's own defaults, not seq_len=32


class Head(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(24 * 24, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x)


class Injected(pl.LightningModule):
    """LightningCLI dependency injection: the network is a constructor argument."""

    def __init__(self, net: nn.Module, lr: float = 1e-3):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.example_input_array = torch.zeros(1, 1, 24, 24)

    def forward(self, x):
        return self.net(x)


def test_a_network_injected_through_the_config_is_built_from_it(tmp_path, capsys):
    import yaml

    model = Injected(Head(width=6))
    (tmp_path / "checkpoints").mkdir()
    save_ckpt(tmp_path / "checkpoints" / "m.ckpt", model)
    net = {"class_path": f"{__name__}.Head", "init_args": {"width": 6}}
    config = {"model": {"class_path": f"{__name__}.Injected", "init_args": {"net": net, "lr": 0.01}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["export", tmp_path / "checkpoints" / "m.ckpt", "--out", tmp_path / "m.pt2", "--format", "torch-export"]
    code, text, err = run_main(args, capsys)
    assert code == 0, err
    assert "check example input (batch 1)" in text and "— ok" in text


def test_against_a_checkpoint_of_another_module_is_one_line(cli_run, tmp_path, capsys):
    import yaml

    ckpt, _ = cli_run
    (tmp_path / "checkpoints").mkdir()
    gpt = {"d_model": 16, "n_layers": 1, "n_heads": 2}
    other = save_ckpt(tmp_path / "checkpoints" / "gpt.ckpt", TinyGPT(**gpt))
    config = {"model": {"class_path": "lightning_green.demos.TinyGPT", "init_args": gpt}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["bench-inference", ckpt, "--against", other, "--no-report", "--formats", "eager", "--repeats", "1"]
    code, _, err = run_main(args, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"bench-inference(against='{other}'): `against` must be a checkpoint of the same module as CKPT " in err
    assert "(DigitsCNN); it holds a TinyGPT." in err


class Configured(pl.LightningModule):
    """Arguments of every kind LightningCLI handles: a network, a dict, an optimizer callable."""

    def __init__(self, net: nn.Module, options: dict | None = None, optimizer: OptimizerCallable = torch.optim.Adam):
        super().__init__()
        self.net = net
        self.options = options
        self.optimizer = optimizer
        self.example_input_array = torch.zeros(1, 1, 24, 24)

    def forward(self, x):
        return self.net(x)


def test_config_arguments_are_built_as_lightning_cli_built_them(tmp_path):
    model = Configured(Head(width=5))
    save_ckpt(tmp_path / "m.ckpt", model)
    net = {"class_path": f"{__name__}.Head", "init_args": {"width": 5}}
    options = {"class_path": "looks.Like.AClass", "k": 1}  # a dict-typed value stays a dict
    optimizer = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    args = {"net": net, "options": options, "optimizer": optimizer}
    config = {"model": {"class_path": f"{__name__}.Configured", "init_args": args}}
    built = load_checkpoint_module(tmp_path / "m.ckpt", None, config=config, owner="export")
    assert isinstance(built.net, Head) and built.options == options
    assert isinstance(built.optimizer(torch.nn.Linear(1, 1).parameters()), torch.optim.SGD)  # a callable, as in fit

    typo = {**args, "net": {"class_path": f"{__name__}.Head", "init_args": {"widht": 5}}}
    config["model"]["init_args"] = typo
    with pytest.raises(
        ValueError, match=r"export\(module=Configured\): building it from the config's model init_args "
    ):
        load_checkpoint_module(tmp_path / "m.ckpt", None, config=config, owner="export")


def test_a_checkpoint_away_from_its_run_builds_the_arguments_lightning_cli_saved_in_it(tmp_path, capsys):
    # LightningCLI saves the constructor arguments in their config form, with the class, in the checkpoint.
    model = Injected(Head(width=6))
    hparams = {
        "_class_path": f"{__name__}.Injected",
        "net": {"class_path": f"{__name__}.Head", "init_args": {"width": 6}},
        "lr": 0.01,
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, tmp_path / "m.ckpt")
    args = ["export", tmp_path / "m.ckpt", "--out", tmp_path / "m.pt2", "--format", "torch-export"]
    code, text, err = run_main(args, capsys)
    assert code == 0, err
    assert "check example input (batch 1)" in text and "— ok" in text
