import pytest
import torch
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

from lightning_green.precision.plugins import PluginSet, check_swappable, plugin_mode


@pytest.mark.parametrize(
    ("plugin", "mode"),
    [
        (Precision(), "32-true"),
        (MixedPrecision("bf16-mixed", "cpu"), "bf16-mixed"),
        (MixedPrecision("16-mixed", "cpu"), "16-mixed"),
        (HalfPrecision("bf16-true"), None),
        (DoublePrecision(), None),
    ],
)
def test_plugin_mode(plugin, mode):
    assert plugin_mode(plugin) == mode


def test_custom_subclass_is_not_swappable():
    class MyPrecision(Precision):
        pass

    strategy = SingleDeviceStrategy("cpu", precision_plugin=MyPrecision())
    with pytest.raises(ValueError, match=r"uses its own precision plugin \(MyPrecision"):
        check_swappable("AMPScheduler", strategy)


def test_fsdp_is_refused_with_the_fix():
    with pytest.raises(
        ValueError,
        match=r"the strategy FSDPStrategy uses its own precision plugin \(FSDPPrecision.*"
        r"`strategy` must be one that uses Lightning's Precision/MixedPrecision.*own mixed-precision",
    ):
        check_swappable("AMPScheduler", FSDPStrategy())


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
def test_true_half_precision_is_refused(precision):
    strategy = SingleDeviceStrategy("cpu", precision_plugin=HalfPrecision(precision))
    with pytest.raises(ValueError, match=rf"Trainer\(precision='{precision}'\) is not supported: `precision` must be "):
        check_swappable("AMPScheduler", strategy)


def test_plugin_set_builds_once_and_reuses_the_original():
    original = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=8.0))
    plugins = PluginSet("cpu", original)
    assert plugins.get("16-mixed") is original
    assert plugins.loss_scale("16-mixed") == 8.0
    fp32 = plugins.get("32-true")
    assert type(fp32) is Precision and plugins.get("32-true") is fp32
    bf16 = plugins.get("bf16-mixed")
    assert bf16.precision == "bf16-mixed" and bf16.scaler is None
    assert plugins.loss_scale("32-true") == 1.0


def test_scaler_state_loads_into_a_later_built_scaler():
    plugins = PluginSet("cpu", Precision())
    plugins.load_scaler_state(
        {"scale": 128.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    )
    assert plugins.scaler is None
    assert plugins.scaler_state()["scale"] == 128.0  # kept for the next checkpoint until built
    plugins.get("16-mixed")
    assert plugins.loss_scale("16-mixed") == 128.0
    assert plugins.scaler_state()["_growth_tracker"] == 7


def test_scaler_state_loads_into_an_existing_scaler():
    plugins = PluginSet("cpu", MixedPrecision("16-mixed", "cpu"))
    plugins.load_scaler_state(
        {"scale": 4.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}
    )
    assert plugins.loss_scale("16-mixed") == 4.0
