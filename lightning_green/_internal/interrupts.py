"""Holding Ctrl-C while a callback changes the model in several steps that must not be cut in half. Not public.

A ``KeyboardInterrupt`` raised in the middle of a structural prune (channels cut, the pruning history not yet
written) left a model whose checkpoint (Lightning's ``OnExceptionCheckpoint``) no longer matched its own history.
Inside :func:`interrupt_deferred` a first SIGINT is noted and delivered to the handler that was in place once the
block ends; a second one interrupts at once (the caller undoes a half-made cut on any ``BaseException``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["interrupt_deferred"]


@contextlib.contextmanager
def interrupt_deferred(what: str) -> Iterator[None]:
    """Run the block with a first Ctrl-C (SIGINT) held until it ends; a second one interrupts at once.

    Only in the main thread (the only one Python delivers signals to) and where a Python-level SIGINT handler is in
    place; elsewhere the block runs as it is.

    Example:
        >>> import signal, warnings
        >>> got = []
        >>> before = signal.signal(signal.SIGINT, lambda signum, frame: got.append("delivered"))
        >>> with warnings.catch_warnings(record=True), interrupt_deferred("a prune"):
        ...     signal.raise_signal(signal.SIGINT)  # held: the block goes on
        ...     got.append("block done")
        >>> got
        ['block done', 'delivered']
        >>> _ = signal.signal(signal.SIGINT, before)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)
        rank_zero_warn(f"Interrupted during {what}: finishing it first (press Ctrl-C again to stop at once).")

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        signal.raise_signal(signal.SIGINT)  # to the handler in place before (Python's default: KeyboardInterrupt)
