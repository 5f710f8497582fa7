"""Lightning precision plugins for each mode, and the check that a Trainer's plugin can be swapped at all."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision as LightningMixedPrecision
from lightning.pytorch.plugins.precision import Precision as LightningPrecision
from torch.optim import Optimizer
from typing_extensions import override

from lightning_green._internal.validation import InvalidArgumentError
from lightning_green.precision.guard import drop_grads

__all__ = ["MixedPrecision", "PluginSet", "Precision", "check_swappable", "plugin_mode"]

_HALF_TRUE = {"HalfPrecision", "DoublePrecision", "BitsandbytesPrecision", "TransformerEnginePrecision"}


def _any_grad(plugin: LightningPrecision, optimizer: Any) -> bool:
    return any(p.grad is not None for p in plugin.main_params(optimizer))


class _SkipAfterClipping:
    """Drops an optimizer's gradients (a skipped update) once its clipping has run: :meth:`skip_step`.

    AMPScheduler decides to skip an update in ``on_before_optimizer_step``. Lightning clips right after that hook
    (``Trainer(gradient_clip_val=...)``, or the module's ``configure_gradient_clipping``, which may call
    ``torch.nn.utils.clip_grad_value_`` itself: it raises on an empty gradient list), then steps. Both run inside
    ``Precision._after_closure`` in every Lightning 2.x plugin (``_wrap_closure`` for fp32/bf16, ``optimizer_step``
    for fp16): overriding this private method of Lightning's base class (pinned <3, as in pyproject.toml) drops the
    gradients after the clipping and before the step; ``tests/callbacks/test_amp_scheduler.py`` checks it.
    """

    _skip_params: list[Any] | None = None

    def skip_step(self, params: list[Any]) -> None:
        """Drop ``params``' gradients after this step's clipping, so that the optimizer leaves them untouched."""
        self._skip_params = params

    def _after_closure(self, model: Any, optimizer: Any) -> None:
        try:
            super()._after_closure(model, optimizer)  # type: ignore[misc]
        finally:
            params, self._skip_params = self._skip_params, None
            if params is not None:
                self._before_skip(optimizer)
                drop_grads(params)

    def _before_skip(self, optimizer: Any) -> None:
        """What the plugin must do before an update's gradients are dropped (nothing in fp32 and bf16)."""


# The class names are Lightning's on purpose: Lightning stores a plugin's state (the fp16 grad scaler) in a checkpoint
# under ``type(plugin).__qualname__``, so these checkpoints resume with a plain Trainer(precision=...) and vice versa.
class Precision(_SkipAfterClipping, LightningPrecision):
    """Lightning's fp32 ``Precision`` that can skip an update after its clipping (:meth:`skip_step`)."""

    @override
    def clip_grad_by_value(self, optimizer: Optimizer, clip_val: int | float) -> None:
        if _any_grad(self, optimizer):
            super().clip_grad_by_value(optimizer, clip_val)


class MixedPrecision(_SkipAfterClipping, LightningMixedPrecision):
    """Lightning's ``MixedPrecision`` that can skip an update after its clipping (:meth:`skip_step`)."""

    def _before_skip(self, optimizer: Any) -> None:
        # fp16: Lightning leaves unscaling to an optimizer that does it in its own step (fused Adam/AdamW/SGD: torch's
        # `_step_supports_amp_scaling`). With every gradient dropped, the grad scaler's step then records no inf check
        # and its update() asserts ("No inf checks were recorded prior to update"). Unscaling here records it, as
        # Lightning does for every other optimizer (a NaN step halves the scale alike); the gradients go next anyway.
        if (
            self.scaler is not None
            and getattr(optimizer, "_step_supports_amp_scaling", False)
            and _any_grad(self, optimizer)
        ):
            try:
                self.scaler.unscale_(optimizer)
            except RuntimeError as err:  # the user's step unscaled it already (to clip): that recorded the check
                if "already been called" not in str(err):
                    raise

    @override
    def clip_grad_by_value(self, optimizer: Optimizer, clip_val: int | float) -> None:
        if _any_grad(self, optimizer):
            super().clip_grad_by_value(optimizer, clip_val)


def plugin_mode(plugin: Any) -> str | None:
    """The mode of a Lightning or lightning-green ``Precision`` (``"32-true"``) or ``MixedPrecision`` (its precision).

    ``None`` for any other plugin (true half precision, FSDP's, DeepSpeed's, a custom subclass): those cannot be
    swapped.

    Example:
        >>> plugin_mode(LightningPrecision()), plugin_mode(LightningMixedPrecision("bf16-mixed", "cpu"))
        ('32-true', 'bf16-mixed')
    """
    if type(plugin) in (LightningPrecision, Precision):
        return "32-true"
    if type(plugin) in (LightningMixedPrecision, MixedPrecision):
        return str(plugin.precision)
    return None


def check_swappable(owner: str, strategy: Any) -> str:
    """Return the mode of ``strategy.precision_plugin``, or raise ``ValueError`` saying why it cannot be swapped."""
    plugin = strategy.precision_plugin
    mode = plugin_mode(plugin)
    if mode is not None:
        return mode
    name = type(plugin).__name__
    precision = getattr(plugin, "precision", "?")
    if name in _HALF_TRUE:
        raise InvalidArgumentError(
            f"{owner}: Trainer(precision={precision!r}) is not supported: `precision` must be '32-true' (the default), "
            f"'16-mixed' or 'bf16-mixed'. With {precision!r} ({name}) the weights themselves are cast away from "
            f"fp32, so there is no fp32 model to schedule around or fall back to; use Trainer(precision='32-true') "
            f"and let {owner} pick the precision."
        )
    module = type(plugin).__module__
    if not module.startswith(("lightning.", "pytorch_lightning.", "lightning_fabric.")):
        raise InvalidArgumentError(
            f"{owner}: Trainer(plugins=[{name}(...)]) is a precision plugin of your own ({module}.{name}), which "
            f"{owner} cannot swap for its modes without losing what it adds: `plugins` must not hold a precision "
            f"plugin other than Lightning's Precision/MixedPrecision (set Trainer(precision=...) instead), or remove "
            f"{owner}."
        )
    raise InvalidArgumentError(
        f"{owner}: the strategy {type(strategy).__name__} uses its own precision plugin ({name}, "
        f"precision={precision!r}), which {owner} cannot swap: `strategy` must be one that uses Lightning's "
        f"Precision/MixedPrecision plugins (single device, 'ddp', 'ddp_spawn'). For FSDP or DeepSpeed use the "
        f"strategy's own mixed-precision setting instead of {owner}."
    )


class PluginSet:
    """One plugin per mode (this module's :class:`Precision`/:class:`MixedPrecision`), built on first use and kept.

    Keeping them means the fp16 grad scaler survives switches.

    Args:
        device_type: Device type for autocast (``"cpu"``, ``"cuda"``, ...).
        original: The Trainer's own plugin; its mode's plugin shares its grad scaler (a user's ``MixedPrecision``
            keeps its scaler and its settings).

    Example:
        >>> plugins = PluginSet("cpu", LightningPrecision())
        >>> type(plugins.get("bf16-mixed")).__name__, plugins.get("bf16-mixed") is plugins.get("bf16-mixed")
        ('MixedPrecision', True)
        >>> plugins.loss_scale("bf16-mixed")
        1.0
    """

    def __init__(self, device_type: str, original: LightningPrecision | None = None) -> None:
        self.device_type = device_type
        self._plugins: dict[str, LightningPrecision] = {}
        if isinstance(original, LightningMixedPrecision) and plugin_mode(original) is not None:
            self._plugins[original.precision] = MixedPrecision(
                original.precision, original.device, scaler=original.scaler
            )
        self._scaler_state: dict[str, Any] | None = None

    def get(self, mode: str) -> LightningPrecision:
        """The plugin for ``mode``."""
        plugin = self._plugins.get(mode)
        if plugin is None:
            if mode == "32-true":
                plugin = Precision()
            else:
                scaler = torch.amp.GradScaler(self.device_type) if mode == "16-mixed" else None
                plugin = MixedPrecision(mode, self.device_type, scaler=scaler)  # type: ignore[arg-type]
            self._plugins[mode] = plugin
        if mode == "16-mixed" and self._scaler_state:
            scaler = self.scaler
            if scaler is not None:
                scaler.load_state_dict(self._scaler_state)
            self._scaler_state = None
        return plugin

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        """Load a ``GradScaler.state_dict()`` into the fp16 scaler now, or when it is built (resume)."""
        self._scaler_state = dict(state)
        if self.scaler is not None:
            self.get("16-mixed")

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 grad scaler, once the fp16 plugin exists."""
        plugin = self._plugins.get("16-mixed")
        return getattr(plugin, "scaler", None)

    def loss_scale(self, mode: str) -> float:
        """The current fp16 loss scale under ``mode``; 1.0 when no scaling applies."""
        scaler = self.scaler
        if mode != "16-mixed" or scaler is None:
            return 1.0
        return float(scaler.get_scale())

    def scaler_state(self) -> dict[str, Any] | None:
        """The fp16 scaler's state (plain types) for a checkpoint; the pending restored one if not built yet."""
        scaler = self.scaler
        if scaler is None:
            return dict(self._scaler_state) if self._scaler_state else None
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}
