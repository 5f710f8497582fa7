"""Never leave a GPU capped: record each GPU's power limit before tuning and put *that* value back.

Zeus's optimizer resets GPUs to their *maximum* limit at exit, which is wrong when an administrator had set a
lower one. :class:`LimitGuard` records the original limits, and restores them (idempotently) from every exit
path: an explicit :meth:`~LimitGuard.restore` (train end, ``on_exception``), SIGTERM/SIGINT, and interpreter exit
(``atexit``). Once a signal arrived the guard is *tripped*: it refuses to set any other limit, so a graceful
shutdown that runs a few more steps cannot cap the GPU again.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from zeus.device.gpu.common import GPUs, ZeusBaseGPUError

__all__ = ["GUARDED_SIGNALS", "LimitGuard", "machine_id"]

log = logging.getLogger(__name__)

GUARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def machine_id() -> int | None:
    """This machine *and boot*: 48 bits of a hash of the host name and the kernel's boot id, or ``None``.

    A power limit a killed run left on a GPU lasts until the machine reboots (or the driver reloads), so a resumed
    run may take a checkpoint's original limit as its own only on the machine and boot that run had. 48 bits, so
    the id survives a float64 collective exactly. ``None`` where there is no boot id (not Linux): nothing is adopted.

    Example:
        >>> mid = machine_id()
        >>> mid is None or (0 <= mid < 2**48 and float(mid) == mid)
        True
    """
    try:
        boot = Path(BOOT_ID_PATH).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    if not boot:
        return None
    digest = hashlib.sha256(f"{socket.gethostname()}\n{boot}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


class LimitGuard:
    """Record GPUs' power limits and restore them on every exit path.

    Args:
        gpus: Zeus's GPU collection (``zeus.device.get_gpus()``).
        indices: GPUs this process may change (one per rank under DDP).
        on_restore_failure: Called with ``(index, original_mw, error)`` when a restore fails.

    Example:
        >>> from lightning_green.testing import simulated_gpus
        >>> with simulated_gpus(1, initial_limit_w=275) as gpus:
        ...     guard = LimitGuard(gpus, [0])
        ...     guard.arm()
        ...     lowered = guard.set_limit(0, 150_000)
        ...     restored = guard.restore()
        ...     _ = guard.disarm()
        ...     lowered, restored, gpus.get_power_management_limit(0)  # the original, not the maximum (300 W)
        (True, True, 275000)
    """

    def __init__(
        self,
        gpus: GPUs,
        indices: Iterable[int],
        on_restore_failure: Callable[[int, int, BaseException], None] | None = None,
    ) -> None:
        self.gpus = gpus
        self.indices = list(indices)
        self.on_restore_failure = on_restore_failure
        self.originals: dict[int, int] = {}
        self.applied: dict[int, int] = {}
        """The limit this guard last set on each GPU, while it holds one (cleared once the original is back)."""
        self.tripped = False
        self._armed = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def armed(self) -> bool:
        """Between :meth:`arm` and :meth:`disarm`."""
        return self._armed

    def arm(self) -> None:
        """Record the current limits and register the ``atexit`` restore (signal handlers: :meth:`install_signals`)."""
        if self._armed:
            return
        self.originals = {i: int(self.gpus.get_power_management_limit(i)) for i in self.indices}
        self.applied = {}
        self.tripped = False
        self._pid = os.getpid()
        atexit.register(self._at_exit)
        self._armed = True
        log.debug("limit guard armed: %s", self.originals)

    def install_signals(self) -> None:
        """Restore on SIGTERM/SIGINT, then hand the signal on to whatever handled it before.

        Only possible from the main thread; elsewhere it does nothing (``atexit`` and explicit restores remain).
        """
        if not self._armed or threading.current_thread() is not threading.main_thread():
            return
        for sig in GUARDED_SIGNALS:
            if sig in self._previous:
                continue
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def uninstall_signals(self) -> None:
        """Put back the handlers that were there before :meth:`install_signals`, if ours is still the current one."""
        if threading.current_thread() is not threading.main_thread():
            self._previous.clear()
            return
        for sig, previous in list(self._previous.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            del self._previous[sig]

    def set_limit(self, index: int, limit_mw: int) -> bool:
        """Set GPU ``index``'s limit unless the guard is tripped (then return ``False``). GPU errors propagate."""
        if self.tripped:
            log.debug("limit guard tripped: not setting GPU %d to %d mW", index, limit_mw)
            return False
        if int(self.gpus.get_power_management_limit(index)) != int(limit_mw):
            self.gpus.set_power_management_limit(index, int(limit_mw))
        self.applied[index] = int(limit_mw)
        return True

    def adopt_originals(self, left_behind_mw: Collection[int], originals: Mapping[int, int]) -> dict[int, int]:
        """Take over the originals of an earlier run that was killed (SIGKILL, a crash) before it could restore them.

        A GPU whose limit recorded by :meth:`arm` is one that run set (``left_behind_mw``) and not its original was
        left capped by it: its original becomes ``originals[index]``, restored like any other. A GPU at another
        limit (an administrator changed it since) keeps the limit it has as its original. Call after :meth:`arm`.

        Returns:
            The adopted originals, by GPU index.

        Example:
            >>> from lightning_green.testing import simulated_gpus
            >>> with simulated_gpus(1, initial_limit_w=150) as gpus:  # the killed run's last limit
            ...     guard = LimitGuard(gpus, [0])
            ...     guard.arm()
            ...     adopted = guard.adopt_originals([250_000, 150_000], {0: 240_000})
            ...     _ = guard.disarm()
            ...     adopted, gpus.get_power_management_limit(0)
            ({0: 240000}, 240000)
        """
        left = {int(x) for x in left_behind_mw}
        adopted = {}
        for index, current in self.originals.items():
            original = originals.get(index)
            if original is not None and current in left and current != int(original):
                adopted[index] = int(original)
        self.originals.update(adopted)
        if adopted:
            log.debug("limit guard adopted the originals of a killed run: %s", adopted)
        return adopted

    def restore(self) -> bool:
        """Put every recorded GPU back to its original limit; ``True`` if all are there. Never raises GPU errors."""
        ok = True
        for index, original in self.originals.items():
            try:
                if int(self.gpus.get_power_management_limit(index)) != original:
                    self.gpus.set_power_management_limit(index, original)
                    log.debug("GPU %d power limit restored to %d mW", index, original)
                self.applied.pop(index, None)
            except ZeusBaseGPUError as err:
                ok = False
                if self.on_restore_failure is not None:
                    self.on_restore_failure(index, original, err)
                else:
                    log.warning("could not restore GPU %d's power limit to %d W: %s", index, original // 1000, err)
        return ok

    def disarm(self) -> bool:
        """Restore, then unregister the ``atexit`` and signal handlers. Returns what :meth:`restore` returned."""
        ok = self.restore() if self._armed else True
        self.uninstall_signals()
        if self._armed:
            atexit.unregister(self._at_exit)
        self._armed = False
        return ok

    # -- handlers ---------------------------------------------------------------------------------------------
    def _at_exit(self) -> None:
        if self._armed and os.getpid() == self._pid:  # a forked child must not touch the parent's GPUs
            self.restore()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._armed and os.getpid() == self._pid:
            self.tripped = True
            self.restore()
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        # The default action. If someone installed a handler on top of ours and called us, the decision to stop is
        # theirs (Lightning's SIGTERM handler stops at the next batch); only when ours is the process's handler do
        # we act as the default would.
        if signal.getsignal(signum) != self._on_signal:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.uninstall_signals()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
