import os
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_green import EnergyBudget, EnergyMonitor, GreenRuntimeError
from lightning_green._internal.validation import InvalidArgumentError, fail
from lightning_green.cli import COMMANDS, cli, main
from lightning_green.energy import read_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.image_size=8",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # The CLI gets its arguments from `args`; pytest's own argv must not look like CLI input.
    monkeypatch.setattr("sys.argv", ["lightning-green"])


def one_line_error(capsys, args):
    """``main(args)`` must exit 2 with a one-line error and no traceback: returns all it printed, and that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    return out + err, lines[-1]


def test_fit_with_no_arguments_uses_the_demo_and_energy_monitor(tmp_path):
    result = cli(["fit", f"--trainer.default_root_dir={tmp_path}", *FAST])
    assert type(result.model).__name__ == "DigitsCNN"
    assert type(result.datamodule).__name__ == "DigitsDataModule"
    monitors = [cb for cb in result.trainer.callbacks if isinstance(cb, EnergyMonitor)]
    assert len(monitors) == 1
    log_dir = result.trainer.log_dir
    assert log_dir.startswith(os.path.join(str(tmp_path), "lightning_logs"))  # TensorBoard logs
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(log_dir))
    report = read_report(os.path.join(log_dir, "energy_report.json"))
    assert report["stages"]["fit"]["energy_j"]["total"] > 0


def test_yaml_config_builds_typed_callbacks(tmp_path):
    result = cli(
        [
            "fit",
            "--config",
            os.path.join(ROOT, "examples/configs/energy.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            *FAST,
        ]
    )
    monitor = next(cb for cb in result.trainer.callbacks if isinstance(cb, EnergyMonitor))
    budget = next(cb for cb in result.trainer.callbacks if isinstance(cb, EnergyBudget))
    assert monitor.carbon.intensity == 56.0 and monitor.carbon.pue == 1.1
    assert budget.max_energy_j == 5.0 * 3600
    with open(os.path.join(result.trainer.log_dir, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["trainer"]["callbacks"][1]["class_path"] == "lightning_green.EnergyBudget"


def test_with_a_wandb_or_mlflow_like_logger_the_config_is_saved_in_the_runs_own_folder(tmp_path):
    # Lightning's SaveConfigCallback writes trainer.log_dir/config.yaml: for such a logger its save_dir, shared by
    # every run (the next run's overwrote it, and `export` could not find it from the run's checkpoint).
    from lightning_green.export.load import saved_run_config

    for version in ("r1", "r2"):
        cli(
            [
                "fit",
                f"--trainer.default_root_dir={tmp_path}",
                *FAST,
                "--trainer.logger=tests.helpers.ElsewhereLogger",
                f"--trainer.logger.save_dir={tmp_path / 'store'}",
                f"--trainer.logger.version={version}",
                f"--trainer.max_epochs={1 if version == 'r1' else 2}",
            ]
        )
    for version, epochs in (("r1", 1), ("r2", 2)):
        folder = tmp_path / "store" / "project" / version
        with open(folder / "config.yaml") as f:
            assert yaml.safe_load(f)["trainer"]["max_epochs"] == epochs
        assert len(read_report(folder / "energy_report.json")["stages"]["fit"]["epochs_j"]) == epochs
        (ckpt,) = (folder / "checkpoints").glob("*.ckpt")  # Lightning's ModelCheckpoint: the same folder
        assert saved_run_config(ckpt) == folder / "config.yaml"
    assert not (tmp_path / "store" / "config.yaml").exists()


def test_callbacks_can_be_appended_on_the_command_line(tmp_path):
    result = cli(
        [
            "fit",
            f"--trainer.default_root_dir={tmp_path}",
            *FAST,
            "--trainer.callbacks+=lightning_green.EnergyBudget",
            "--trainer.callbacks.max_gco2e=100",
        ]
    )
    kinds = [type(cb).__name__ for cb in result.trainer.callbacks]
    assert "EnergyMonitor" in kinds and "EnergyBudget" in kinds


def test_print_config_lists_the_default_callback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["fit", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["callbacks"][0]["class_path"] == "lightning_green.EnergyMonitor"
    assert config["model"]["class_path"] == "lightning_green.demos.DigitsCNN"


def test_bad_argument_is_one_line_and_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.callbacks+=lightning_green.EnergyBudget",
                "--trainer.callbacks.max_energy=-3",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "lightning-green: error: EnergyBudget(max_energy=-3.0): `max_energy` must be a number > 0."
    assert not any("Traceback" in line for line in err)


def test_test_subcommand_reports_the_test_stage(tmp_path):
    result = cli(
        [
            "test",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.limit_test_batches=2",
            "--trainer.enable_progress_bar=false",
            "--data.image_size=8",
        ]
    )
    report = read_report(os.path.join(result.trainer.log_dir, "energy_report.json"))
    assert set(report["stages"]) == {"test"}


def test_setup_errors_are_one_line_too(capsys, tmp_path):
    # the YAML/CLI list replaces the default callbacks: a budget with no monitor to read from
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.callbacks=lightning_green.EnergyBudget",
                "--trainer.callbacks.max_energy=1",
                *FAST,
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-green: error: EnergyBudget reads the energy measured by an EnergyMonitor")
    assert not any("Traceback" in line for line in err)


def test_a_setting_refused_before_training_leaves_no_report(capsys, tmp_path):
    # A run refused in setup trained nothing: it wrote an "interrupted" energy report and a green report ("GreenReport:
    # wrote ...") before the one-line error, and `lightning-green report` then listed the refused run.
    args = ["--trainer.callbacks+=lightning_green.AMPScheduler", "--trainer.callbacks.warmup_epochs=1", *FAST]
    printed, line = one_line_error(capsys, ["fit", f"--trainer.default_root_dir={tmp_path}", *args])
    assert line.startswith("lightning-green: error: AMPScheduler(warmup_epochs=1)")
    assert "GreenReport: wrote" not in printed
    assert not list(tmp_path.rglob("energy_report.json")) and not list(tmp_path.rglob("green_report.md"))


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_checkpoint_path_that_is_no_file_is_one_line(capsys, tmp_path, command):
    # Lightning's FileNotFoundError came as a traceback with exit 1.
    with pytest.raises(SystemExit) as exit_info:
        main([command, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={tmp_path / 'nope.ckpt'}", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"lightning-green: error: lightning-green {command}(ckpt_path='{tmp_path / 'nope.ckpt'}'): `ckpt_path` must "
        "be a checkpoint file, 'last' (or a URL); it is no file."
    )


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_ckpt_path_best_is_one_line_since_each_command_starts_a_new_trainer(capsys, tmp_path, command):
    # Lightning's ValueError ("ModelCheckpoint is not configured to save the best model") came as a traceback.
    _, line = one_line_error(capsys, [command, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=best", *FAST])
    assert line.startswith(f"lightning-green: error: lightning-green {command}(ckpt_path='best'): 'best' is")
    assert "give the checkpoint file" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model=lightning_green.demos.TinyGPT"],
            "TinyGPT: the datamodule DigitsDataModule serves (image, label) pairs, and TinyGPT reads (x, y) token-id "
            "windows; give it lightning_green.demos.StdlibTextDataModule with batch_format='pairs'.",
        ),
        (
            ["--data=lightning_green.demos.StdlibTextDataModule"],
            "DigitsCNN: the datamodule StdlibTextDataModule serves (x, y) token-id windows, and DigitsCNN reads "
            "(image, label) pairs; give it image data, e.g. lightning_green.demos.DigitsDataModule.",
        ),
        (
            [
                "--model=lightning_green.demos.TinyGPT",
                "--data=lightning_green.demos.StdlibTextDataModule",
                "--data.batch_format=causal_lm",
            ],
            "TinyGPT: the datamodule StdlibTextDataModule serves Hugging Face dicts of token ids",
        ),
    ],
)
def test_a_demo_model_on_another_demos_data_is_one_line(capsys, tmp_path, args, message):
    # --model TinyGPT with the default digits data failed deep inside torch.embedding (float images as token ids).
    fast = [a for a in FAST if not a.startswith("--data.image_size")]
    _, line = one_line_error(capsys, ["fit", f"--trainer.default_root_dir={tmp_path}", *args, *fast])
    assert line.startswith(f"lightning-green: error: {message}")


def test_command_line_run_gives_no_args_and_argv_warning(monkeypatch, recwarn, tmp_path):
    # The console script calls main() with no arguments: LightningCLI must read sys.argv itself.
    monkeypatch.setattr(sys, "argv", ["lightning-green", "fit", f"--trainer.default_root_dir={tmp_path}", *FAST])
    main()
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "not recommended to provide both args and command line arguments" in m]
    assert os.path.exists(os.path.join(tmp_path, "lightning_logs", "version_0", "energy_report.json"))


def test_help_lists_the_report_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "fit" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("report"))
    assert COMMANDS["report"].help in line


class FailsMidFit(Callback):
    """Raises on the second training batch, as a callback that meets a bad state mid-fit would."""

    def __init__(self, kind: Literal["argument", "runtime"] = "argument") -> None:
        self.kind = kind

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            exc = InvalidArgumentError if self.kind == "argument" else GreenRuntimeError
            fail("FailsMidFit", "kind", self.kind, "what this test raises", exc)


@pytest.mark.parametrize("kind, exc", [("argument", InvalidArgumentError), ("runtime", GreenRuntimeError)])
def test_failure_during_training_keeps_its_traceback(tmp_path, kind, exc):
    # One-line errors are for parse/instantiate/setup; this one is raised hours into a run, so to speak.
    with pytest.raises(exc, match=r"FailsMidFit\(kind=") as info:
        main(
            [
                "fit",
                f"--trainer.default_root_dir={tmp_path}",
                *FAST,
                "--trainer.callbacks+=tests.test_cli.FailsMidFit",
                f"--trainer.callbacks.kind={kind}",
            ]
        )
    assert any(entry.name == "on_train_batch_end" for entry in info.traceback)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--trainer.callbacks+=lightning_green.AMPScheduler", "--trainer.callbacks.interval=hour"],
            "AMPScheduler(interval='hour'): `interval` must be one of 'epoch', 'step'.",
        ),
        (
            ["--trainer.callbacks+=lightning_green.EnergyBudget", "--trainer.callbacks.max_energy=abc"],
            "EnergyBudget(max_energy='abc'): `max_energy` must be a float or None.",
        ),
        (
            ["--trainer.callbacks+=lightning_green.EnergyMonitor", "--trainer.callbacks.carbon_intensty=56"],
            "EnergyMonitor: `carbon_intensty` is not one of its arguments; did you mean `carbon_intensity`?",
        ),
        (["--trainer.max_epochs=abc"], "--trainer.max_epochs='abc': must be an int or None."),
        (
            ["--trainer.callbacks+=lightning_green.EnergyMonitr"],
            "--trainer.callbacks='lightning_green.EnergyMonitr': module 'lightning_green' has no class 'EnergyMonitr'; "
            "did you mean `lightning_green.EnergyMonitor`?",
        ),
        (
            ["--trainer.callbacks+=lightning_grn.EnergyMonitor"],
            "--trainer.callbacks='lightning_grn.EnergyMonitor': no module named 'lightning_grn'.",
        ),
        (["--model=DigitCNN"], "--model='DigitCNN': must be a LightningModule or None; did you mean `DigitsCNN`?"),
        (["--model.lr=abc"], "DigitsCNN(lr='abc'): `lr` must be a float."),
        # jsonargparse reads nan/inf as text; the number is what is wrong (as the Python API says: finite)
        (
            ["--trainer.callbacks+=lightning_green.EnergyBudget", "--trainer.callbacks.max_energy=nan"],
            "EnergyBudget(max_energy='nan'): `max_energy` must be a finite number or None.",
        ),
        (
            ["--trainer.callbacks+=lightning_green.PowerLimitTuner", "--trainer.callbacks.eta=inf"],
            "PowerLimitTuner(eta='inf'): `eta` must be a finite number.",
        ),
        (["--model.lr=-inf"], "DigitsCNN(lr='-inf'): `lr` must be a finite number."),
        (["--trainer.gradient_clip_val=nan"], "--trainer.gradient_clip_val='nan': must be a finite number or None."),
        (["--trainer.max_epoch", "3"], "unrecognized arguments: --trainer.max_epoch 3"),  # no guess at max_epochs
    ],
)
def test_values_jsonargparse_refuses_are_one_line_too(capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--trainer.default_root_dir={tmp_path}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lightning-green: error: {message}"]  # no usage text, no tree of Union alternatives


@pytest.mark.parametrize(
    ("deadline", "message"),
    [
        (
            "1e20",
            "CarbonAwareScheduler(deadline='1e20'): `deadline` must be at most 366 days after the start "
            "('366d', 31622400 s).",
        ),
        (
            "400d",
            "CarbonAwareScheduler(deadline='400d'): `deadline` must be at most 366 days after the start "
            "('366d', 31622400 s).",
        ),
    ],
)
def test_a_deadline_too_far_ahead_is_refused_as_such_on_the_command_line(capsys, tmp_path, deadline, message):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.callbacks+=lightning_green.CarbonAwareScheduler",
                "--trainer.callbacks.intensity=100",
                f"--trainer.callbacks.deadline={deadline}",
                *FAST,
            ]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"lightning-green: error: {message}"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "import os\nSEP = os.pathsep_typo\n",  # a bug in the user's module, not a misspelled class path
            "importing `lg_user_pkg` failed (AttributeError: module 'os' has no attribute 'pathsep_typo'): an error in "
            "that module's code, not a misspelled class path.",
        ),
        (
            "import lg_not_installed_dep\n",
            "importing `lg_user_pkg` failed (ModuleNotFoundError: No module named 'lg_not_installed_dep'): a module it "
            "imports is not installed.",
        ),
        ("", "module 'lg_user_pkg' has no class 'CB'; did you mean `lg_user_pkg.CBX`?"),  # the class path misspelt
    ],
)
def test_an_import_error_inside_the_users_module_is_not_taken_for_a_misspelling(
    capsys, tmp_path, monkeypatch, body, message
):
    pkg = tmp_path / "lg_user_pkg"
    pkg.mkdir()
    cb = "from lightning.pytorch.callbacks import Callback\nclass CBX(Callback): ...\n"
    (pkg / "__init__.py").write_text(body + cb)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lg_user_pkg", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks+=lg_user_pkg.CB"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lightning-green: error: --trainer.callbacks='lg_user_pkg.CB': {message}"]


def test_an_unknown_command_lists_ours_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nosuch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'nosuch'" in err[0]
    assert all(repr(name) in err[0] for name in ("fit", "report", "export", "bench-inference"))


@pytest.mark.parametrize("preset", sorted(p.name for p in (Path(ROOT) / "examples" / "configs").glob("*.yaml")))
def test_every_preset_ends_with_a_green_report(preset):
    # A YAML callbacks list replaces the CLI's defaults (EnergyMonitor, GreenReport): each preset lists it itself.
    config = yaml.safe_load((Path(ROOT) / "examples" / "configs" / preset).read_text())
    paths = [cb["class_path"] for cb in config["trainer"]["callbacks"]]
    assert "lightning_green.EnergyMonitor" in paths and "lightning_green.GreenReport" in paths


def test_python_dash_m_names_itself_in_the_usage_line():
    import subprocess

    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-m", "lightning_green", "fit", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m lightning_green [options] fit")


OWN_CLASSES = """
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset


class MyModule(LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.01, weight_decay: float = 0.5):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, hidden)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class MyData(LightningDataModule):
    def __init__(self, batch_size: int = 16, seed: int = 7):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=self.batch_size)
"""


@pytest.mark.parametrize("how", ["args", "config"])
def test_a_class_of_the_users_own_keeps_its_own_defaults(tmp_path, monkeypatch, how):
    # The demo classes were parser defaults: jsonargparse kept their init_args whose names the user's class also has
    # (lr, weight_decay, batch_size, seed), so `--model mypkg.MyModule` trained with the demo's values.
    (tmp_path / "lg_own_pkg.py").write_text(OWN_CLASSES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lg_own_pkg", raising=False)
    if how == "args":
        given = ["--model", "lg_own_pkg.MyModule", "--data=lg_own_pkg.MyData"]
    else:
        config = tmp_path / "own.yaml"
        config.write_text(yaml.safe_dump({"model": "lg_own_pkg.MyModule", "data": {"class_path": "lg_own_pkg.MyData"}}))
        given = ["--config", str(config)]
    result = cli([*given, "--model.hidden=8", f"--trainer.default_root_dir={tmp_path}"], run=False)
    model, data = result.config["model"]["init_args"], result.config["data"]["init_args"]
    assert (model["hidden"], model["lr"], model["weight_decay"]) == (8, 0.01, 0.5)
    assert (data["batch_size"], data["seed"]) == (16, 7)


def test_a_callback_listed_twice_is_one_line_and_exit_2(capsys, tmp_path):
    # Lightning refuses two stateful callbacks of one type while the Trainer is built: that was a traceback.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks+=lightning_green.EnergyMonitor"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lightning-green: error: --trainer.callbacks: Found more than one stateful callback")
    assert "list each of these callbacks once" in line


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_a_pruned_checkpoint_evaluates_without_structured_pruning_in_the_callbacks(tmp_path, capsys, subcommand):
    # With the default callbacks the weights met the dense model: a "size mismatch" traceback.
    config = tmp_path / "prune.yaml"
    callbacks = [
        {"class_path": "lightning_green.EnergyMonitor"},
        {
            "class_path": "lightning_green.StructuredPruning",
            "init_args": {"pruning_ratio": 0.5, "importance": "magnitude-l1", "start_epoch": 1, "end_epoch": 1},
        },
    ]
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    root = tmp_path / "run"
    fast = [a for a in FAST if "max_epochs" not in a]
    args = ["fit", "--config", str(config), f"--trainer.default_root_dir={root}", "--trainer.max_epochs=2", *fast]
    trained = cli(args)
    assert trained.trainer.callbacks[1].speedup > 1.2
    (ckpt,) = Path(trained.trainer.checkpoint_callback.dirpath).glob("*.ckpt")
    capsys.readouterr()
    result = cli([subcommand, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'eval'}", *fast])
    assert "holds a pruned model: rebuilt to its shapes from its pruning history" in capsys.readouterr().out
    pruned = {k: v.shape for k, v in trained.model.state_dict().items()}
    assert {k: v.shape for k, v in result.model.state_dict().items()} == pruned


def test_a_list_index_on_the_command_line_is_one_line(capsys, tmp_path):
    # jsonargparse's 15-line Union dump, blaming the first class it tried (GreenReport) for index 2.
    preset = os.path.join(ROOT, "examples", "configs", "green.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", preset, f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks.2.x=2"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--trainer.callbacks.2.x='2': a list index cannot name an entry on the command line" in line


def test_the_demo_classes_are_named_only_where_nothing_else_decides_the_class(tmp_path):
    from lightning_green.cli import DEFAULT_DATA, DEFAULT_MODEL, with_demo_classes

    top = tmp_path / "top.yaml"
    top.write_text("fit:\n  model:\n    class_path: x.Y\n  data: null\n")
    init_only = tmp_path / "init.yaml"
    init_only.write_text("init_args:\n  lr: 0.1\n")

    def named(args):
        out = with_demo_classes(args)
        return [a.split("=", 1)[1] for a in out if a.startswith(("--model=", "--data=")) and a not in args]

    assert named(["-c", str(top), "fit"]) == []  # a config before the subcommand, `-c`, `data: null`
    assert named(["--config={fit: {model: {class_path: x.Y}}}", "fit"]) == [DEFAULT_DATA]  # a YAML string
    assert named(["fit", "--model", str(init_only)]) == [DEFAULT_MODEL, DEFAULT_DATA]  # init_args of the demo's
    assert named(["fit", '--model={"init_args": {"lr": 0.1}}', "--data=null"]) == [DEFAULT_MODEL]


def test_demo_classes_as_defaults_where_the_arguments_cannot_say(tmp_path, monkeypatch):
    # args as a dict, or classes that may come from the environment or default config files: parser defaults.
    from lightning_green.cli import GreenCLI

    from_dict = GreenCLI(args={"trainer": {"max_epochs": 1, "logger": False}}, run=False)
    assert type(from_dict.model).__name__ == "DigitsCNN"
    monkeypatch.setenv("PL_MODEL", "lightning_green.demos.TinyGPT")
    from_env = GreenCLI(args=["--trainer.logger=false"], run=False, parser_kwargs={"default_env": True})
    assert type(from_env.model).__name__ == "TinyGPT"


def test_jsonargparse_default_env_switch_lets_the_environment_name_the_classes(tmp_path, monkeypatch, capsys):
    # JSONARGPARSE_DEFAULT_ENV=true turns on environment parsing without `default_env` in the code: the demo classes
    # were still put on the command line, which beats the environment, so PL_FIT__MODEL=TinyGPT trained the digits CNN.
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "true")
    monkeypatch.setenv("PL_FIT__MODEL", "lightning_green.demos.TinyGPT")
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lightning_green.demos.TinyGPT"
    assert printed["data"]["class_path"] == "lightning_green.demos.DigitsDataModule"  # still the demo where unnamed


def test_a_type_with_commas_in_brackets_is_named_whole_in_the_one_line_error(capsys, tmp_path):
    # jsonargparse's "Subtypes: [dict[int, str], <class 'NoneType'>]" was split at every comma: "a dict[int or a str]".
    args = ["--trainer.callbacks+=lightning_green.AMPScheduler", "--trainer.callbacks.schedule={a: bf16-mixed}"]
    _, line = one_line_error(capsys, ["fit", f"--trainer.default_root_dir={tmp_path}", *args, *FAST])
    assert line.endswith("`schedule` must be a dict[int, str] or None."), line
