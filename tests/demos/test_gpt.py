import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_green.cli import cli
from lightning_green.demos import StdlibTextDataModule, TinyGPT
from lightning_green.demos.gpt import stdlib_files
from tests.helpers import QUIET

SMALL_DATA = {"seq_len": 32, "batch_size": 16, "train_bytes": 24_576, "val_bytes": 4_096}
SMALL_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 4, "block_size": 64}


class ValLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val_loss"]))


def test_file_selection_is_deterministic_disjoint_and_seeded():
    a, b = StdlibTextDataModule(**SMALL_DATA), StdlibTextDataModule(**SMALL_DATA)
    other = StdlibTextDataModule(**SMALL_DATA, seed=1)
    for dm in (a, b, other):
        dm.setup("fit")
    assert a.train_files == b.train_files and a.val_files == b.val_files
    assert torch.equal(a.train_set.data, b.train_set.data)
    assert set(a.train_files).isdisjoint(a.val_files)
    assert (a.train_files, a.val_files) != (other.train_files, other.val_files)
    assert len(a.train_set.data) == 24_576 and len(a.val_set.data) == 4_096
    assert set(a.train_files + a.val_files) <= set(stdlib_files())


def test_windows_predict_the_next_byte_of_real_python_source():
    dm = StdlibTextDataModule(**SMALL_DATA)
    dm.setup("fit")
    x, y = dm.train_set[3]
    assert x.shape == y.shape == (32,)
    assert torch.equal(x[1:], y[:-1])
    assert len(dm.train_set) == (24_576 - 1) // 32
    text = bytes(dm.train_set.data.tolist())
    assert b"def " in text and b"import " in text


def test_too_little_text_is_a_clear_error_in_setup(tmp_path):
    (tmp_path / "tiny.py").write_text("x = 1\n")
    dm = StdlibTextDataModule(**SMALL_DATA, root=str(tmp_path))
    with pytest.raises(ValueError, match=r"holds 1 \.py file\(s\), too little text for val_bytes=4096"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (StdlibTextDataModule, {"seq_len": 1}, r"StdlibTextDataModule\(seq_len=1\): `seq_len` must be an int >= 2"),
        (StdlibTextDataModule, {"train_bytes": 10}, r"`train_bytes` must be an int >= 65"),
        (StdlibTextDataModule, {"root": ""}, r"`root` must be None or a folder path"),
        (TinyGPT, {"d_model": 30, "n_heads": 4}, r"TinyGPT\(d_model=30\): `d_model` must be a multiple of n_heads"),
        (TinyGPT, {"dropout": 1.0}, r"`dropout` must be a number >= 0 and < 1"),
        (TinyGPT, {"lr": 0}, r"`lr` must be a number > 0"),
    ],
)
def test_demo_rejects_bad_arguments(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kwargs)


def test_context_longer_than_block_size_is_refused_in_setup(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, **QUIET)
    with pytest.raises(ValueError, match=r"TinyGPT\(block_size=16\): the datamodule's seq_len=32 is longer"):
        trainer.fit(TinyGPT(d_model=16, n_layers=1, n_heads=2, block_size=16), StdlibTextDataModule(**SMALL_DATA))


def test_language_model_trains_and_its_loss_falls(tmp_path):
    seed_everything(0)
    losses = ValLosses()
    model = TinyGPT(**SMALL_MODEL)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        limit_train_batches=24,
        logger=False,
        enable_checkpointing=False,
        callbacks=[losses],
        **QUIET,
    )
    trainer.fit(model, StdlibTextDataModule(**SMALL_DATA))
    assert model.example_input_array.shape == (1, 32)  # follows the datamodule's seq_len
    assert losses.losses[0] < math.log(256)  # better than a uniform guess over bytes
    assert losses.losses[0] > losses.losses[1] > losses.losses[2]
    assert float(trainer.callback_metrics["val_ppl"]) == pytest.approx(math.exp(losses.losses[-1]), rel=1e-5)
    assert losses.losses[-1] < 3.6  # Python source has far less than 8 bits per byte
    out = model.generate(b"import ", max_new_bytes=8)
    assert out.startswith(b"import ") and len(out) == 15


def test_cli_selects_the_language_model_by_short_name(tmp_path):
    result = cli(
        [
            "fit",
            "--model=TinyGPT",
            "--data=StdlibTextDataModule",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.d_model=16",
            "--model.n_layers=1",
            "--data.seq_len=16",
            "--data.train_bytes=4096",
            "--data.val_bytes=1024",
        ]
    )
    assert isinstance(result.model, TinyGPT) and isinstance(result.datamodule, StdlibTextDataModule)
    assert "val_ppl" in result.trainer.callback_metrics


def test_language_model_trains_under_scheduled_bf16_and_the_report_shows_it(tmp_path):
    from lightning_green import AMPScheduler, EnergyMonitor, GreenReport
    from lightning_green.report import load_run

    seed_everything(0)
    report = GreenReport()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=6,
        limit_val_batches=2,
        log_every_n_steps=2,
        callbacks=[
            EnergyMonitor(print_summary=False),
            AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed"}),
            report,
        ],
        **QUIET,
    )
    model = TinyGPT(**SMALL_MODEL)
    trainer.fit(model, StdlibTextDataModule(**SMALL_DATA))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    run = load_run(trainer.log_dir)
    assert {p.value for p in run.scalars.series("precision/mode")} == {32.0, 16.5}
    assert run.metric_name() == "val_loss" and len(run.curve("val_loss")) == 2
    assert {p.name for p in report.files.images} >= {"precision_mode.png", "metric_vs_energy.png"}
    assert run.extra("model")["macs"] > 0
