"""The CLI shows EnergyMonitor's figures with units: Lightning's progress bar becomes its green twin."""

import pytest
from lightning.pytorch.callbacks import ProgressBar

from lightning_green import GreenRichProgressBar, GreenTQDMProgressBar
from lightning_green.cli import DEFAULT_LOG_EVERY_N_STEPS, cli


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-green"])


def _bars(trainer):
    return [cb for cb in trainer.callbacks if isinstance(cb, ProgressBar)]


def test_default_bar_is_the_green_twin(tmp_path):
    trainer = cli([f"--trainer.default_root_dir={tmp_path}"], run=False).trainer
    bars = _bars(trainer)
    assert len(bars) == 1 and isinstance(bars[0], (GreenRichProgressBar, GreenTQDMProgressBar))
    assert trainer.progress_bar_callback is bars[0]
    assert trainer.log_every_n_steps == DEFAULT_LOG_EVERY_N_STEPS


def test_a_configured_bar_keeps_its_settings(tmp_path):
    args = [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=TQDMProgressBar",
        "--trainer.callbacks.refresh_rate=7",
    ]
    trainer = cli(args, run=False).trainer
    (bar,) = _bars(trainer)
    assert type(bar) is GreenTQDMProgressBar and bar.refresh_rate == 7


def test_no_bar_stays_no_bar(tmp_path):
    trainer = cli([f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"], run=False).trainer
    assert _bars(trainer) == []
