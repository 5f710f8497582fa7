"""Argument validation with messages that name the class, the argument, the bad value and what is allowed.

Every public constructor validates through these helpers, so all messages read the same way::

    AMPScheduler(interval='hour'): `interval` must be one of ('epoch', 'step').
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection, Iterable
from typing import Any

__all__ = [
    "GreenRuntimeError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "check_bool",
    "check_choice",
    "check_filename",
    "check_number",
    "check_optional_number",
    "check_state_version",
    "check_str_list",
    "fail",
    "find_argument_error",
]


class InvalidArgumentError(ValueError):
    """A lightning-green argument has a bad value (a ``ValueError``: catch that)."""


class InvalidArgumentTypeError(TypeError):
    """A lightning-green argument has a bad type (a ``TypeError``: catch that)."""


class GreenRuntimeError(RuntimeError):
    """A run reached a state a lightning-green callback cannot go on from (not a configuration error).

    Raised during training, e.g. when no gradient reached the layers a gradient criterion would prune. The CLI
    keeps its traceback; only configuration errors (:class:`InvalidArgumentError`) become one-line messages.
    """


def find_argument_error(exc: BaseException) -> BaseException | None:
    """The first lightning-green argument error in ``exc``'s cause/context chain (jsonargparse wraps them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (InvalidArgumentError, InvalidArgumentTypeError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _prefix(owner: str, name: str, value: Any) -> str:
    return f"{owner}({name}={value!r})"


def as_real(value: Any) -> float | None:
    """``value`` as a ``float`` if it is a real number, Python's or numpy's (``numbers.Real``, never a bool); else None.

    Example:
        >>> import numpy as np
        >>> as_real(np.int64(300)), as_real(2), as_real(True), as_real("3")
        (300.0, 2.0, None, None)
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        return None
    return float(value)


def fail(owner: str, name: str, value: Any, allowed: str, exc: type[Exception] = ValueError) -> None:
    """Raise ``exc`` with the house message: ``Owner(name=value): `name` must be <allowed>.``.

    ``ValueError``/``TypeError`` are raised as their :class:`InvalidArgumentError`/:class:`InvalidArgumentTypeError`
    subclasses, so the CLI can tell them from other failures.
    """
    exc = {ValueError: InvalidArgumentError, TypeError: InvalidArgumentTypeError}.get(exc, exc)
    raise exc(f"{_prefix(owner, name, value)}: `{name}` must be {allowed}.")


def check_choice(owner: str, name: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; else raise ``ValueError`` listing them."""
    if isinstance(value, str) and value in choices:
        return value
    if not isinstance(value, str) and any(value is c or (type(value) is type(c) and value == c) for c in choices):
        return value
    fail(owner, name, value, f"one of {tuple(choices)!r}")
    return None  # pragma: no cover


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is a real ``bool``; else raise ``TypeError``."""
    if not isinstance(value, bool):
        fail(owner, name, value, "a bool (True or False)", TypeError)
    return value


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    integer: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """Return ``value`` if it is a finite number (an ``int`` when ``integer``) within the given bounds.

    Raises:
        TypeError: ``value`` is not a number of the right kind (``bool`` is never accepted).
        ValueError: ``value`` is NaN, infinite or outside the bounds.
    """
    kind = "an int" if integer else "a number"
    numeric = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        fail(owner, name, value, kind, TypeError)
    if not math.isfinite(value):
        fail(owner, name, value, f"{kind} that is finite")
    bounds = []
    if ge is not None:
        bounds.append(f">= {ge}")
    if gt is not None:
        bounds.append(f"> {gt}")
    if le is not None:
        bounds.append(f"<= {le}")
    if lt is not None:
        bounds.append(f"< {lt}")
    ok = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if not ok:
        fail(owner, name, value, f"{kind} {' and '.join(bounds)}")
    return value


def check_optional_number(owner: str, name: str, value: Any, **bounds: Any) -> Any:
    """Like :func:`check_number`, but ``None`` passes through unchanged."""
    if value is None:
        return None
    return check_number(owner, name, value, **bounds)


def check_str_list(owner: str, name: str, value: Any) -> list[str] | None:
    """Return ``value`` as a list of strings (``None`` passes through); a lone string is refused as ambiguous."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        fail(owner, name, value, "a list of strings", TypeError)
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        fail(owner, name, value, "a list of strings", TypeError)
    return items


def check_filename(owner: str, name: str, value: Any, allowed: str, optional: bool = False) -> str | None:
    """Return ``value`` if it is a plain, non-empty file name (no directory part; ``None`` too when ``optional``).

    Example:
        >>> check_filename("X", "filename", "../a", "a plain file name")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: X(filename='../a'): `filename` must be a plain file name.
    """
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or os.path.basename(value) != value or value in (".", ".."):
        fail(owner, name, value, allowed)
    return value


def check_state_version(owner: str, state: Any, supported: int) -> int:
    """Return the ``"version"`` of a saved callback ``state``; refuse one newer than ``supported`` or malformed.

    A state without a version is read as version 1 (the first format).

    Example:
        >>> check_state_version("X", {"version": 1}, supported=1)
        1
        >>> check_state_version("X", {"version": 2}, supported=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: X: the checkpoint holds this callback's state in version 2, ...
    """
    if not isinstance(state, dict):
        raise InvalidArgumentError(
            f"{owner}: the checkpoint's state for this callback is a {type(state).__name__}, not a dict; it was not "
            "written by lightning-green."
        )
    version = state.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgumentError(
            f"{owner}: the checkpoint's state has version {version!r}; a version must be an int >= 1. The checkpoint "
            "is corrupt or was not written by lightning-green."
        )
    if version > supported:
        raise InvalidArgumentError(
            f"{owner}: the checkpoint holds this callback's state in version {version}, newer than this "
            f"lightning-green reads (<= {supported}). Upgrade lightning-green to resume from it."
        )
    return version
