"""Forecast a run's total energy from the epochs completed so far."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EnergyForecast"]


@dataclass
class EnergyForecast:
    """Predict total energy for ``max_epochs``/``max_steps`` from per-epoch energy.

    The forecast needs ``after_epochs`` completed epochs. When more epochs than that are available, the first
    one is skipped as warm-up (it carries the sanity check, data-loader start-up and allocator growth). After a
    workload change (a prune, a precision switch) :meth:`reset` discards the history, so the forecast re-fits to
    the new workload.

    An epoch whose size is known in advance (``epoch_samples``: DataPruning's annealing epochs load all the data
    after pruned ones) is forecast as the epochs after the warm-up that trained on as many samples, where there are
    some. Else at the lower of two figures that are both at least its cost: the energy per sample of the epochs seen
    times its samples (which counts their fixed per-epoch and per-step costs as the samples'), and the energy of an
    epoch of that size before them (the warm-up epoch, or one before a workload change).

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
        >>> g = EnergyForecast(after_epochs=1)
        >>> g.add_epoch(energy_j=100.0, steps=10, samples=1000)  # all the data
        >>> g.add_epoch(energy_j=70.0, steps=6, samples=600)  # a pruned epoch: 600 of 1000 samples
        >>> last_full = lambda epoch: 1000 if epoch == 3 else None  # epoch 3 anneals on all the data
        >>> g.predict(spent_j=170.0, epochs_done=2, max_epochs=4, epoch_samples=last_full)
        340.0
        >>> g.history[0] = (200.0, 10)  # a first epoch slowed by its warm-up: the cost per sample is lower
        >>> round(g.predict(spent_j=270.0, epochs_done=2, max_epochs=4, epoch_samples=last_full), 1)
        456.7
    """

    after_epochs: int = 1
    history: list[tuple[float, int]] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # per epoch of ``history``: the samples it trained on (0: unknown)

    def add_epoch(self, energy_j: float, steps: int, samples: int = 0) -> None:
        """Record one completed epoch's energy, optimizer steps and (if known) samples."""
        self.history.append((float(energy_j), int(steps)))
        self.samples.append(max(int(samples), 0))

    def reset(self) -> None:
        """Forget the history (the workload changed)."""
        self.history.clear()
        self.samples.clear()

    @property
    def ready(self) -> bool:
        """Whether enough epochs have been seen."""
        return len(self.history) >= self.after_epochs

    def _skip(self) -> int:
        return 1 if len(self.history) > max(self.after_epochs, 1) else 0

    def _usable(self) -> list[tuple[float, int]]:
        return self.history[self._skip() :]

    def predict(
        self,
        spent_j: float,
        epochs_done: int,
        max_epochs: int | None = None,
        steps_done: int = 0,
        max_steps: int | None = None,
        epoch_samples: Callable[[int], int | None] | None = None,
        seconds_left: float | None = None,
        power_w: float | None = None,
    ) -> float | None:
        """Total energy (J) predicted at the end of training, or ``None`` if it cannot be predicted yet.

        ``max_epochs``/``max_steps`` of ``None`` or negative mean unbounded; with both bounded, training stops
        at whichever comes first, so the smaller prediction wins. ``epoch_samples(epoch)``, where given, is the
        samples a coming (0-based) epoch will train on if known in advance, else ``None`` (like the epochs seen).
        ``seconds_left`` (the Trainer's ``max_time`` left) at ``power_w`` (the fit's mean power) bounds it too.

        Example:
            >>> f = EnergyForecast(after_epochs=1)
            >>> f.add_epoch(10.0, 5); f.add_epoch(10.0, 5)
            >>> f.predict(20.0, 2, max_epochs=100), f.predict(20.0, 2, max_epochs=100, seconds_left=3.0, power_w=2.0)
            (1000.0, 26.0)
        """
        if not self.ready:
            return None
        usable = self._usable()
        per_epoch = sum(e for e, _ in usable) / len(usable)
        steps = sum(s for _, s in usable)
        candidates = []
        if max_epochs is not None and max_epochs >= 0:
            left = per_epoch * max(max_epochs - epochs_done, 0)
            if epoch_samples is not None:
                for n in map(epoch_samples, range(epochs_done, max_epochs)):
                    known = self._of_size(n) if n is not None else None
                    left += 0.0 if known is None else known - per_epoch
            candidates.append(spent_j + left)
        if max_steps is not None and max_steps >= 0 and steps > 0:
            per_step = sum(e for e, _ in usable) / steps
            candidates.append(spent_j + per_step * max(max_steps - steps_done, 0))
        if seconds_left is not None and power_w is not None:
            candidates.append(spent_j + power_w * max(seconds_left, 0.0))
        return min(candidates) if candidates else None

    def _of_size(self, samples: int) -> float | None:
        """An epoch of ``samples``' energy from the epochs seen (see the class); ``None`` when nothing tells it."""
        skip = self._skip()

        def alike(n: int) -> bool:
            return n > 0 and abs(n - samples) <= 0.05 * samples  # within 5 %: DDP pads the shards

        later = [e for (e, _), n in zip(self.history[skip:], self.samples[skip:], strict=True) if alike(n)]
        if later:
            return sum(later) / len(later)
        bounds = [e for (e, _), n in zip(self.history[:skip], self.samples[:skip], strict=True) if alike(n)]
        usable, seen = self._usable(), self.samples[skip:]
        if seen and all(seen):
            bounds.append(sum(e for e, _ in usable) / sum(seen) * samples)
        return min(bounds) if bounds else None

    def state_dict(self) -> dict[str, object]:
        """Plain-type state."""
        return {"history": [list(h) for h in self.history], "samples": list(self.samples)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output."""
        self.history = [(float(e), int(s)) for e, s in state.get("history", [])]  # type: ignore[union-attr]
        samples = [int(n) for n in state.get("samples", [])]  # type: ignore[union-attr]
        self.samples = samples if len(samples) == len(self.history) else [0] * len(self.history)  # older: unknown
