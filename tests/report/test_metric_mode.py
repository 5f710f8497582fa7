"""The direction of a logged metric (issue 11, item 15): explicit mode, then torchmetrics, then the documented rule."""

import pytest
from torchmetrics.regression import MeanAbsolutePercentageError

from lightning_green.report.green import resolve_mode
from lightning_green.report.run import metric_mode


def test_mape_is_minimised_as_torchmetrics_says():
    assert MeanAbsolutePercentageError.higher_is_better is False
    assert metric_mode("val_mape") == "min"  # once matched "map" as a substring and was maximised


@pytest.mark.parametrize(
    "name, expected",
    [
        ("val_acc", "max"),
        ("val/MulticlassAccuracy", "max"),  # a torchmetrics class name
        ("val_MeanSquaredError_epoch", "min"),
        ("val_f1", "max"),
        ("val_wer", "min"),
        ("val_ppl", "min"),
        ("val_r2", "max"),
        ("val_loss", "min"),
        ("val/mAP", "max"),  # the documented rule: whole token `map`
        ("val_reward", "max"),
        ("val_mystery", "min"),  # unknown: minimised
    ],
)
def test_direction_by_name(name, expected):
    assert metric_mode(name) == expected


def test_explicit_mode_wins():
    assert metric_mode("val_acc", mode="min") == "min"
    assert metric_mode("val_mape", mode="max") == "max"
    assert resolve_mode("val_mape", "auto") == "min"
    assert resolve_mode("val_mape", "max") == "max"
