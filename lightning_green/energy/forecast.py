"""Forecast a run's total energy from the epochs completed so far."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EnergyForecast"]


@dataclass
class EnergyForecast:
    """Predict total energy for ``max_epochs``/``max_steps`` from per-epoch energy.

    The forecast needs ``after_epochs`` completed epochs. When more epochs than that are available, the first
    one is skipped as warm-up (it carries the sanity check, data-loader start-up and allocator growth). After a
    workload change (a prune, a precision switch) :meth:`reset` discards the history, so the forecast re-fits to
    the new workload.

    Args:
        after_epochs: Completed epochs needed before a forecast is made.

    Example:
        >>> f = EnergyForecast(after_epochs=1)
        >>> f.add_epoch(energy_j=130.0, steps=10)  # warm-up epoch, skipped once a second one exists
        >>> f.add_epoch(energy_j=100.0, steps=10)
        >>> f.predict(spent_j=230.0, epochs_done=2, max_epochs=5)
        530.0
        >>> f.predict(spent_j=230.0, epochs_done=2, steps_done=20, max_steps=25)
        280.0
    """

    after_epochs: int = 1
    history: list[tuple[float, int]] = field(default_factory=list)

    def add_epoch(self, energy_j: float, steps: int) -> None:
        """Record one completed epoch's energy and optimizer steps."""
        self.history.append((float(energy_j), int(steps)))

    def reset(self) -> None:
        """Forget the history (the workload changed)."""
        self.history.clear()

    @property
    def ready(self) -> bool:
        """Whether enough epochs have been seen."""
        return len(self.history) >= self.after_epochs

    def _usable(self) -> list[tuple[float, int]]:
        return self.history[1:] if len(self.history) > max(self.after_epochs, 1) else self.history

    def predict(
        self,
        spent_j: float,
        epochs_done: int,
        max_epochs: int | None = None,
        steps_done: int = 0,
        max_steps: int | None = None,
    ) -> float | None:
        """Total energy (J) predicted at the end of training, or ``None`` if it cannot be predicted yet.

        ``max_epochs``/``max_steps`` of ``None`` or negative mean unbounded; with both bounded, training stops
        at whichever comes first, so the smaller prediction wins.
        """
        if not self.ready:
            return None
        usable = self._usable()
        per_epoch = sum(e for e, _ in usable) / len(usable)
        steps = sum(s for _, s in usable)
        candidates = []
        if max_epochs is not None and max_epochs >= 0:
            candidates.append(spent_j + per_epoch * max(max_epochs - epochs_done, 0))
        if max_steps is not None and max_steps >= 0 and steps > 0:
            per_step = sum(e for e, _ in usable) / steps
            candidates.append(spent_j + per_step * max(max_steps - steps_done, 0))
        return min(candidates) if candidates else None

    def state_dict(self) -> dict[str, object]:
        """Plain-type state."""
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output."""
        self.history = [(float(e), int(s)) for e, s in state.get("history", [])]  # type: ignore[union-attr]
