"""Holding Ctrl-C while a callback changes the model in several steps that must not be cut in half. Not public.

A ``KeyboardInterrupt`` raised in the middle of a structural prune (channels cut, the pruning history not yet
written) left a model whose checkpoint (Lightning's ``OnExceptionCheckpoint``) no longer matched its own history.
Inside :func:`interrupt_deferred` a SIGINT is noted and delivered to the handler that was in place once the block
ends; the third press in one block interrupts at once (a way out of a prune that takes too long, at the price of the
consistency the hold keeps).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from lightning.pytorch.utilities.rank_zero import rank_zero_only

__all__ = ["interrupt_deferred"]

log = logging.getLogger(__name__)
_PRESSES_TO_FORCE = 3


@contextlib.contextmanager
def interrupt_deferred(what: str) -> Iterator[None]:
    """Run the block with Ctrl-C (SIGINT) held until it ends, then deliver it to the handler in place before.

    The first two presses are held (each says so in the log, on rank 0); the third raises ``KeyboardInterrupt`` at
    once. Only in the main thread (the only one Python delivers signals to) and where a SIGINT handler is set (not
    ignored); elsewhere the block runs as it is. A block that raises ends with its own exception (the held interrupt is
    not delivered on top of it). The notice goes to the log, not to ``warnings`` (under ``-W error`` a warning raised
    in the handler would interrupt the block after all).

    Example:
        >>> import signal
        >>> got = []
        >>> before = signal.signal(signal.SIGINT, lambda signum, frame: got.append("delivered"))
        >>> with interrupt_deferred("a prune"):
        ...     signal.raise_signal(signal.SIGINT)  # held: the block goes on
        ...     signal.raise_signal(signal.SIGINT)  # still held
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
        held.append(signum)
        if len(held) >= _PRESSES_TO_FORCE:
            raise KeyboardInterrupt
        with contextlib.suppress(Exception):  # nothing in a signal handler may break the block
            if getattr(rank_zero_only, "rank", 0) == 0:
                left = _PRESSES_TO_FORCE - len(held)
                log.warning(
                    "Interrupted during %s: finishing it first, then stopping. Press Ctrl-C %d more time(s) to stop at "
                    "once (the model may then not match its on-exception checkpoint).",
                    what,
                    left,
                )

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        signal.raise_signal(signal.SIGINT)  # to the handler in place before (Python's default: KeyboardInterrupt)
