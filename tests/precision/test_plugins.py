import pytest
import torch
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

from lightning_green.precision import plugins as green
from lightning_green.precision.plugins import PluginSet, check_swappable, plugin_mode


@pytest.mark.parametrize(
    ("plugin", "mode"),
    [
        (Precision(), "32-true"),
        (MixedPrecision("bf16-mixed", "cpu"), "bf16-mixed"),
        (MixedPrecision("16-mixed", "cpu"), "16-mixed"),
        (green.Precision(), "32-true"),
        (green.MixedPrecision("bf16-mixed", "cpu"), "bf16-mixed"),
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
    with pytest.raises(ValueError, match=r"plugins=\[MyPrecision\(...\)\]\) is a precision plugin of your own \("):
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


def test_plugin_set_builds_once_and_keeps_the_original_scaler():
    original = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=8.0))
    plugins = PluginSet("cpu", original)
    fp16 = plugins.get("16-mixed")
    assert fp16.scaler is original.scaler and fp16.device == "cpu" and plugins.get("16-mixed") is fp16
    assert plugins.loss_scale("16-mixed") == 8.0
    fp32 = plugins.get("32-true")
    assert type(fp32) is green.Precision and plugins.get("32-true") is fp32
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


@pytest.mark.parametrize("mode", ["32-true", "bf16-mixed", "16-mixed"])
def test_clipping_by_value_without_any_gradient_does_nothing(mode):
    # A skipped step has dropped every gradient before Lightning clips; torch's clip_grad_value_ raises on that.
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    plugin = PluginSet("cpu", Precision()).get(mode)
    plugin.clip_gradients(optimizer, clip_val=0.5, gradient_clip_algorithm="value")
    assert layer.weight.grad is None and layer.bias.grad is None
    layer.weight.grad = torch.full((2, 2), 3.0)  # with a gradient, clipping still clips
    plugin.clip_gradients(optimizer, clip_val=0.5, gradient_clip_algorithm="value")
    assert torch.equal(layer.weight.grad, torch.full((2, 2), 0.5))


def test_plugins_keep_lightnings_class_names_for_checkpoints():
    # Lightning keys a plugin's checkpoint state by its class's __qualname__: the fp16 scaler must land under the
    # same key as with a plain Trainer(precision="16-mixed").
    plugins = PluginSet("cpu", Precision())
    names = {mode: type(plugins.get(mode)).__qualname__ for mode in ("32-true", "bf16-mixed", "16-mixed")}
    assert names == {"32-true": "Precision", "bf16-mixed": "MixedPrecision", "16-mixed": "MixedPrecision"}
