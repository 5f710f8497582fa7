"""StructuredPruning by optimizer steps: a schedule that training stops before is said, as with epochs."""

from __future__ import annotations

import warnings

import pytest
from lightning.pytorch import Trainer

from lightning_green import StructuredPruning
from lightning_green.demos import DigitsCNN, DigitsDataModule

QUIET = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
    "limit_val_batches": 0,
}


def _fit(tmp_path, pruning, **trainer_kwargs):
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[pruning], **QUIET, **trainer_kwargs)
    trainer.fit(DigitsCNN(channels=[8, 16]), DigitsDataModule(batch_size=32))
    return trainer


@pytest.mark.parametrize(
    ("limits", "total"),
    [({"max_steps": 6}, 6), ({"max_epochs": 2, "limit_train_batches": 3}, 6)],
    ids=["max_steps", "max_epochs-estimated"],
)
def test_prunes_past_the_last_step_are_warned_about(tmp_path, limits, total):
    pruning = StructuredPruning(target_speedup=2.0, start_step=2, end_step=20, frequency=2, verbose=False)
    match = (
        rf"StructuredPruning: the last prune is at step 20 but training stops after {total} optimizer steps "
        rf"\(max_steps=-?\d+, max_epochs=-?\d+\); "
        r"8 of the 10 prunes \(at steps 6, 8, 10, \.\.\., 16, 18, 20\) will not happen"
    )
    with pytest.warns(UserWarning, match=match):
        _fit(tmp_path, pruning, **limits)
    assert pruning.prunes_done == 2


def test_a_step_schedule_that_fits_is_not_warned_about(tmp_path):
    pruning = StructuredPruning(target_speedup=2.0, start_step=2, end_step=4, frequency=2, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, pruning, max_steps=6)
    assert not [w for w in caught if "will not happen" in str(w.message)]
    assert pruning.prunes_done == 2
