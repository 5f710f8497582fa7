"""What a "run" is for the callbacks: several fits on one Trainer are one run, a new Trainer starts another. Not public.

A callback reused across Trainers (the real run after a ``fast_dev_run`` smoke test, folds of a cross-validation)
starts over in each; a checkpoint restored into the new Trainer then brings its own state (Lightning restores after
``setup``). EnergyMonitor documents the rule; every callback with progress follows it.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["PicklesWithoutTrainer", "continue_run"]


def continue_run(last: weakref.ref[Any] | None, trainer: Any) -> tuple[bool, weakref.ref[Any]]:
    """For a fit's ``setup``: whether ``trainer`` is the Trainer of the last fit (``last``), and a reference to it.

    Example:
        >>> class T: ...
        >>> a, b = T(), T()
        >>> same, ref = continue_run(None, a)
        >>> same, continue_run(ref, a)[0], continue_run(ref, b)[0]
        (False, True, False)
    """
    return last is not None and last() is trainer, weakref.ref(trainer)


class PicklesWithoutTrainer:
    """Mixin: pickles without its weak references to a Trainer (named in ``_trainer_refs``).

    ``ddp_spawn`` pickles the callbacks into its workers, and a weak reference does not pickle; a callback reused
    after an earlier fit holds one. In the worker it reads as "no earlier fit": the spawned fit is a new run.
    """

    _trainer_refs: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._trainer_refs:
            state[name] = None
        return state
