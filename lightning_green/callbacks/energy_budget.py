"""EnergyBudget: stop training cleanly when energy or CO₂ reaches a budget, or is forecast to."""

from __future__ import annotations

import weakref
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green._internal.distributed import agree
from lightning_green._internal.runs import PicklesWithoutTrainer, continue_run
from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_choice,
    check_optional_number,
    check_state_version,
    fail,
)
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.energy.carbon import joules_to, to_joules

__all__ = ["EnergyBudget"]

EnergyUnit = Literal["J", "Wh", "kWh"]
ForecastAction = Literal["stop", "warn", "ignore"]
_UNITS = ("J", "Wh", "kWh")
_ACTIONS = ("stop", "warn", "ignore")


class EnergyBudget(PicklesWithoutTrainer, Callback):
    """Stop ``fit`` when its energy or CO₂ reaches a budget — or, optionally, when it is forecast to.

    Reads the totals of the :class:`~lightning_green.EnergyMonitor` in the same Trainer (one meter, no second
    set of counter reads), after each of its updates: every ``log_every_n_steps`` batches, at a mid-epoch
    validation (``val_check_interval``) and at each epoch end.
    The stop is Lightning's own ``trainer.should_stop``: the current step finishes, the usual end-of-epoch
    checkpointing and ``on_train_end`` hooks run, and a message says why. The decision is taken collectively, so
    every DDP rank stops at the same step. Lightning ignores ``should_stop`` until ``Trainer(min_epochs, min_steps)``
    are met: a fit that has them is warned at its start that it can run past the budget.

    The budget covers the Trainer's lifetime, as the monitor's totals do: a second ``fit()`` on the same Trainer
    (say, after raising ``max_epochs``) continues from the energy already spent, and stops before its first batch
    if the budget is already used up; a run resumed with ``ckpt_path`` continues from the checkpoint's totals.

    Args:
        max_energy: Energy budget in ``unit``; ``None`` for none.
        unit: Unit of ``max_energy``: ``"J"``, ``"Wh"`` or ``"kWh"``.
        max_gco2e: CO₂e budget in grams (with the monitor's intensity and PUE; a time-varying intensity counts each
            window at its own intensity, and the forecast's remaining energy at the current one); ``None`` for none.
        on_forecast: When the monitor's forecast exceeds a budget: ``"stop"`` now, ``"warn"`` once, or ``"ignore"``.

    Raises:
        ValueError: No budget given, a negative budget, an unknown unit or action.

    Example:
        >>> budget = EnergyBudget(max_energy=0.5, unit="Wh", on_forecast="stop")
        >>> budget.max_energy_j
        1800.0
    """

    _trainer_refs = ("_fit_trainer",)

    def __init__(
        self,
        max_energy: float | None = None,
        unit: EnergyUnit = "kWh",
        max_gco2e: float | None = None,
        on_forecast: ForecastAction = "warn",
    ) -> None:
        name = type(self).__name__
        check_optional_number(name, "max_energy", max_energy, gt=0)
        check_choice(name, "unit", unit, _UNITS)
        check_optional_number(name, "max_gco2e", max_gco2e, gt=0)
        check_choice(name, "on_forecast", on_forecast, _ACTIONS)
        if max_energy is None and max_gco2e is None:
            fail(name, "max_energy", max_energy, "given when max_gco2e is None (give at least one budget)")
        self.max_energy = max_energy
        self.unit = unit
        self.max_gco2e = max_gco2e
        self.on_forecast = on_forecast
        self.stopped_reason: str | None = None
        self._warned = False
        self._monitor: EnergyMonitor | None = None
        self._fit_trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer of the last fit (kept after it)

    @property
    def max_energy_j(self) -> float | None:
        """The energy budget in joules."""
        return None if self.max_energy is None else to_joules(self.max_energy, self.unit)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, EnergyMonitor)]  # type: ignore[attr-defined]
        if not monitors:
            raise InvalidArgumentError(
                "EnergyBudget reads the energy measured by an EnergyMonitor, and the Trainer has none: add "
                "EnergyMonitor() to Trainer(callbacks=[...]) (or to trainer.callbacks in the YAML config)."
            )
        if self._monitor is not None and self._monitor is not monitors[0]:
            self._monitor.remove_listener(self._check)  # the last Trainer's monitor, reused elsewhere
        self._monitor = monitors[0]
        self._monitor.add_listener(self._check)
        if stage == "fit":
            self.stopped_reason = None  # each fit() says for itself why it stops (the budget itself is not reset)
            same_run, self._fit_trainer = continue_run(self._fit_trainer, trainer)
            if not same_run:  # a new Trainer is a new run (a checkpoint restored into it brings its own state)
                self._warned = False
            minimum = {k: v for k, v in (("min_epochs", trainer.min_epochs), ("min_steps", trainer.min_steps)) if v}
            if minimum:  # Lightning ignores should_stop until they are met
                given = ", ".join(f"{k}={v}" for k, v in minimum.items())
                rank_zero_warn(
                    f"EnergyBudget: Trainer({given}) keeps Lightning training until it is met even when the budget "
                    "stops the run, so the run can exceed the budget; drop it for the budget to be a hard limit."
                )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A budget spent by an earlier fit() on this Trainer (or before the checkpoint) stops this one at once.
        if self._monitor is not None:
            self._check(trainer, self._monitor)

    def _exceeded(self, energy_j: float, gco2e: float) -> str | None:
        limit_j = self.max_energy_j
        if limit_j is not None and energy_j >= limit_j:
            return f"{joules_to(energy_j, self.unit):.4g} {self.unit} >= budget {self.max_energy:g} {self.unit}"
        if self.max_gco2e is not None and gco2e >= self.max_gco2e:
            return f"{gco2e:.4g} gCO2e >= budget {self.max_gco2e:g} gCO2e"
        return None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The monitor may go on in another Trainer without this budget: it must not stop that one.
        if stage == "fit" and self._monitor is not None:
            self._monitor.remove_listener(self._check)

    def _check(self, trainer: pl.Trainer, monitor: EnergyMonitor) -> None:
        if trainer.state.fn != "fit" or self not in trainer.callbacks:  # type: ignore[attr-defined]
            return  # (the second: a Trainer this budget is not in, whose monitor it was listening to)
        reason = self._exceeded(monitor.total_energy_j("fit"), monitor.total_gco2e("fit"))
        why = f"energy used so far: {reason}" if reason else None
        forecast = monitor.forecast_total_j
        if why is None and forecast is not None and self.on_forecast != "ignore":
            over = self._exceeded(forecast, monitor.forecast_gco2e(forecast) or 0.0)
            if over and self.on_forecast == "stop":
                why = f"forecast for the run: {over}"
            elif over and not self._warned:
                self._warned = True
                rank_zero_warn(f"EnergyBudget: the forecast exceeds the budget ({over}); training continues.")
        # Totals are identical on every rank, but the stop must be too: decide collectively.
        if agree(trainer.strategy, why is not None, all=False):
            if self.stopped_reason is None:
                self.stopped_reason = why or "another rank reached the budget"
                rank_zero_info(
                    f"EnergyBudget: stopping training at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                    f"{self.stopped_reason} ({monitor.label('fit')})."
                )
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "stopped_reason": self.stopped_reason, "warned": self._warned}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=1)
        # The stop reason is not restored: a resumed run (perhaps with a larger budget) is judged afresh, and a stop
        # it reaches gets its own message. Only the forecast warning is not repeated.
        self._warned = bool(state_dict.get("warned", False))
