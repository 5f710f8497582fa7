"""Progress bars that show EnergyMonitor's live figures formatted with their units: ``23.6 W``, ``516 J``, ``1.25 Wh``.

Lightning's progress bars show what modules log, and ``self.log`` takes numbers only, so a callback cannot log
``"23.6 W"``. Lightning's documented place to change what a bar shows is :meth:`ProgressBar.get_metrics`; these
bars extend it with :meth:`EnergyMonitor.progress_bar_metrics` (strings, which TQDM and Rich both print as given).
A mixin rather than a patch of Lightning's bars: the user (or a YAML config) picks the bar as any other
progress-bar callback, everything Lightning's bars do keeps working, and a custom bar can mix it in too. With
Lightning's plain bars, EnergyMonitor falls back to logging the numbers (``energy/power_W``, ``energy/fit_J``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from typing_extensions import override

from lightning_green._internal.packages import require_lightning_package
from lightning_green.energy.carbon import J_PER_KWH

__all__ = [
    "GreenProgressBarMixin",
    "GreenRichProgressBar",
    "GreenTQDMProgressBar",
    "format_energy_short",
    "format_power",
]

_J_PER_WH = 3600.0


def format_power(watts: float) -> str:
    """Watts for a progress bar, 3 significant digits: ``23.6 W``, ``516 W``, ``1.25 kW``.

    Example:
        >>> format_power(23.551), format_power(515.9), format_power(1250.0), format_power(999.7)
        ('23.6 W', '516 W', '1.25 kW', '1 kW')
    """
    if abs(watts) >= 999.5:  # would print as 1e+03 W and up with 3 significant digits
        return f"{watts / 1000:.3g} kW"
    return f"{watts:.3g} W"


def format_energy_short(energy_j: float) -> str:
    """Energy for a progress bar, 3 significant digits, switching unit as the total grows: J, kJ, Wh, kWh.

    Example:
        >>> format_energy_short(515.951), format_energy_short(1959.6), format_energy_short(4500.0)
        ('516 J', '1.96 kJ', '1.25 Wh')
        >>> format_energy_short(999.9), format_energy_short(7.2e6)
        ('1 kJ', '2 kWh')
    """
    if abs(energy_j) >= J_PER_KWH:
        return f"{energy_j / J_PER_KWH:.3g} kWh"
    if abs(energy_j) >= _J_PER_WH:
        return f"{energy_j / _J_PER_WH:.3g} Wh"
    if abs(energy_j) >= 999.5:  # would print as 1e+03 J and up with 3 significant digits
        return f"{energy_j / 1000:.3g} kJ"
    return f"{energy_j:.3g} J"


class GreenProgressBarMixin:
    """Adds every EnergyMonitor's :meth:`~lightning_green.EnergyMonitor.progress_bar_metrics` to a progress bar."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse a ``pytorch_lightning`` Trainer: it would not take this bar for its progress bar."""
        require_lightning_package(type(self).__name__, trainer, "is a subclass of Lightning's progress bars")
        super().setup(trainer, pl_module, stage)  # type: ignore[misc]

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Lightning's bar metrics plus the energy figures, formatted with their units."""
        from lightning_green.callbacks.energy_monitor import EnergyMonitor

        metrics = dict(super().get_metrics(trainer, pl_module))  # type: ignore[misc]
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, EnergyMonitor) and cb.progress_bar:
                metrics.update(cb.progress_bar_metrics())
        return metrics


class GreenTQDMProgressBar(GreenProgressBarMixin, TQDMProgressBar):
    """Lightning's TQDM progress bar showing the energy figures with their units (``energy/total=516 J``).

    Same arguments as :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_green import EnergyMonitor
        >>> trainer = Trainer(callbacks=[EnergyMonitor(), GreenTQDMProgressBar()], logger=False)
        >>> type(trainer.progress_bar_callback).__name__
        'GreenTQDMProgressBar'
    """

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return super().get_metrics(trainer, pl_module)


class GreenRichProgressBar(GreenProgressBarMixin, RichProgressBar):
    """Lightning's Rich progress bar showing the energy figures with their units (needs ``rich``).

    Same arguments as :class:`~lightning.pytorch.callbacks.RichProgressBar`.
    """

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return super().get_metrics(trainer, pl_module)
