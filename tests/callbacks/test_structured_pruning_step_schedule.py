"""StructuredPruning by optimizer steps: a schedule that training stops before is said, as with epochs."""

from __future__ import annotations

import warnings

import pytest
from lightning.pytorch import Trainer
from torch import nn

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


class Grouped(DigitsCNN):
    """DigitsCNN whose second conv is grouped (4 groups): torch-pruning cuts it in whole units of 4 channels."""

    def __init__(self, width=16):
        super().__init__(channels=[width, width])
        self.features[3] = nn.Conv2d(width, width, 3, padding=1, bias=False, groups=4)  # conv, bn, relu, conv, ...


@pytest.mark.parametrize(
    ("width", "prunes", "grouped", "global_pruning"),
    [(8, 8, False, False), (16, 4, True, False), (32, 10, False, False), (8, 8, False, True)],
    ids=["8-channels-8-prunes", "grouped-4-prunes", "32-channels-10-prunes", "global"],
)
def test_many_prunes_end_at_the_pruning_ratio_not_past_it(tmp_path, width, prunes, grouped, global_pruning):
    # Each prune's share was computed from the schedule alone, and torch-pruning keeps int(n * (1 - ratio)) channels
    # (whole groups for a grouped conv): the rounding added up over the prunes. 8 channels pruned 8 times towards
    # 0.5 ended with 1 (87.5 % removed), a grouped 16 with 4 (75 %).
    model = Grouped(width) if grouped else DigitsCNN(channels=[width, width])
    pruning = StructuredPruning(
        pruning_ratio=0.5, start_step=1, end_step=prunes, frequency=1, global_pruning=global_pruning, verbose=False
    )
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[pruning], max_steps=prunes + 1, **QUIET)
    trainer.fit(model, DigitsDataModule(batch_size=8))
    assert pruning.prunes_done == prunes
    widths = [m.out_channels for m in model.features if hasattr(m, "out_channels")]
    if global_pruning:  # layers lose different shares; all together lose half
        assert sum(widths) == width
    else:
        assert widths == [width // 2] * 2


@pytest.mark.parametrize("importance", ["magnitude-l2", "taylor"])
def test_prunes_cut_short_say_whether_the_speedup_target_was_reached(tmp_path, monkeypatch, importance):
    # "the goal was not reached" was said when the prunes done had already passed target_speedup, and the note that
    # each prune waits for `importance_batches` batches came when training never got to the missed prunes at all.
    said = []
    monkeypatch.setattr("lightning_green.callbacks.structured_pruning.rank_zero_info", said.append)
    easy = StructuredPruning(
        target_speedup=1.05, start_epoch=0, end_epoch=2, importance=importance, importance_batches=1, verbose=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, easy, max_epochs=4, limit_train_batches=3, max_steps=3)
    assert easy.prunes_done == 1 and easy.speedup >= 1.05
    assert not [w for w in caught if "did not happen" in str(w.message)]
    assert [m for m in said if "did not happen" in m] == [
        f"StructuredPruning: training ended after 3 optimizer steps with 1 of the 3 prunes done; the prunes at epoch "
        f"1, 2 did not happen; the goal was reached before them ({easy.speedup:.2f}x fewer MACs than dense, target "
        "1.05x)."
    ]
    hard = StructuredPruning(
        target_speedup=3.0, start_epoch=0, end_epoch=2, importance=importance, importance_batches=1, verbose=False
    )
    with pytest.warns(UserWarning, match=r"prunes at epoch 1, 2 did not happen, so the goal was not reached") as rec:
        _fit(tmp_path, hard, max_epochs=4, limit_train_batches=3, max_steps=3)
    assert not any("importance_batches" in str(w.message) for w in rec)  # training never got to those prunes


def test_an_epoch_schedule_past_max_epochs_is_said_once(tmp_path):
    pruning = StructuredPruning(target_speedup=1.05, start_epoch=0, end_epoch=2, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, pruning, max_epochs=2, limit_train_batches=3)
    messages = [str(w.message) for w in caught if "StructuredPruning" in str(w.message)]
    assert len([m for m in messages if "prune" in m and "epoch 2" in m]) == 1, messages
    assert "the last prune is at epoch 2 but max_epochs=2; the prunes at epoch 2 will not happen" in messages[0]


def test_global_pruning_counts_each_coupled_group_once(tmp_path):
    # Residual convs (and their shortcut) are one group to torch-pruning; summed per layer they outweighed the rest,
    # and global pruning of a ResNet ended off its goal. Counted once per group, half of the channels are gone.
    from lightning_green.demos import DigitsResNet

    model = DigitsResNet(channels=[8, 16, 32])
    pruning = StructuredPruning(pruning_ratio=0.5, start_step=1, end_step=5, frequency=1, global_pruning=True)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[pruning], max_steps=6, **QUIET)
    trainer.fit(model, DigitsDataModule(batch_size=8, image_size=8))
    assert pruning.prunes_done == 5
    dense = {name: out for name, (out, _) in pruning.dense_channels.items()}
    # one root per group: the stem carries the first stage's residual stream; each stage's conv2 its own
    roots = [n for n in dense if n.endswith("conv1") or n.endswith("conv2") and not n.startswith("features.3")]
    roots.append("features.0")
    widths = {n: m.out_channels for n, m in model.named_modules() if n in roots}
    assert sum(widths.values()) == sum(dense[n] for n in roots) // 2


def test_prunes_lost_to_a_short_window_are_said_beside_one_past_max_epochs(tmp_path):
    # The setup warning about the prune at epoch 2 (past max_epochs) silenced the end-of-training one, so prunes the
    # `importance_batches` window left undone (3-batch epochs, a 4-batch window) went unsaid, and the setup warning
    # implied they had happened.
    pruning = StructuredPruning(
        target_speedup=2.0, start_epoch=0, end_epoch=2, importance="taylor", importance_batches=4, verbose=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, pruning, max_epochs=2, limit_train_batches=3)
    messages = [str(w.message) for w in caught if str(w.message).startswith("StructuredPruning")]
    assert any("the last prune is at epoch 2 but max_epochs=2" in m for m in messages)
    ended = [m for m in messages if "training ended after" in m]
    assert len(ended) == 1 and "waits for `importance_batches=4` batches" in ended[0]
    assert "epoch 2" not in ended[0].split("did not happen")[0].split("prunes at")[1]  # said once, at setup
