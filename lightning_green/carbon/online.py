"""An online intensity source: Electricity Maps' v3 API, used only when the user configures it with a token.

No Lightning import and no dependency beyond the standard library (``urllib.request``): Zeus 0.16's Electricity
Maps client sends no auth token, and the official SDK is not on PyPI. Nothing is fetched until a value is asked for;
fetched hours are cached, so a run asks the API a handful of times, not once per logging window.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

from lightning_green._internal.validation import GreenRuntimeError, InvalidArgumentError, check_number, fail
from lightning_green.carbon.trace import _iso

__all__ = ["ELECTRICITYMAPS_PREFIX", "TOKEN_ENV", "ElectricityMapsError", "ElectricityMapsSource"]

log = logging.getLogger(__name__)

TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"
"""Environment variable read for the token when none is passed."""
ELECTRICITYMAPS_PREFIX = "electricitymaps:"
"""``carbon_intensity="electricitymaps:DE"`` / ``intensity="electricitymaps:DE"`` selects this source."""
DEFAULT_URL = "https://api.electricitymap.org/v3"
_H = 3600.0


class ElectricityMapsError(GreenRuntimeError):
    """Electricity Maps could not be reached or answered with something unusable (not a configuration error)."""


class ElectricityMapsSource:
    """Hourly carbon intensity of a zone from Electricity Maps: the past from its history, the future from its forecast.

    ``mean``/``covers`` fetch what a span needs and cache every hour fetched: ``carbon-intensity/history`` (the last
    24 hours), ``carbon-intensity/past-range`` for older hours, ``carbon-intensity/forecast`` for hours to come
    (re-fetched at most every ``refresh_s``, so a re-plan sees an updated forecast; measured hours replace forecast
    ones). Every request has a ``timeout_s``; failures raise one-line errors, never hang.

    Once hours are cached, a failed request (network, timeout, an HTTP error other than 401/403, a body without
    intensities) does not stop a run: it is warned about once per outage and retried after ``refresh_s``; cached
    hours keep their values (a forecast hour that has passed keeps its forecast), and an hour that was never fetched
    takes the nearest cached hour's value. ``describe()`` (the report's carbon ``source``) counts the failed requests
    and those hours, with a ``note``. A failure before anything is cached raises, as does a forecast request failing
    before any forecast was read (a plan on held values would be flat); ``covers`` counts held hours only between
    the first and last hour cached (a deadline past the forecast is still refused).

    Args:
        zone: Electricity Maps zone, e.g. ``"DE"``, ``"US-CAL-CISO"``, ``"FR"``.
        token: API token; ``None`` reads the ``ELECTRICITYMAPS_TOKEN`` environment variable.
        timeout_s: Seconds a request may take (> 0).
        refresh_s: Minimum seconds between two fetches of the same endpoint (>= 0).
        base_url: API root (a proxy, or the sandbox).
        clock: POSIX-seconds clock deciding which hours are past (``time.time``).

    Raises:
        ValueError: No token (names the argument and the environment variable), a bad argument, or the token was
            rejected (HTTP 401/403) on first use.
        ElectricityMapsError: Network failure, timeout, another HTTP error, or a response without intensities.

    Example:
        >>> src = ElectricityMapsSource("DE", token="my-token")  # nothing is fetched yet
        >>> src.describe()["source"]
        'electricitymaps:DE'
        >>> ElectricityMapsSource("", token="t")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: ElectricityMapsSource(zone=''): `zone` must be ...
    """

    def __init__(
        self,
        zone: str,
        token: str | None = None,
        timeout_s: float = 10.0,
        refresh_s: float = 900.0,
        base_url: str = DEFAULT_URL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(zone, str) or not zone.strip() or any(c.isspace() for c in zone.strip()):
            fail(name, "zone", zone, "an Electricity Maps zone such as 'DE' or 'US-CAL-CISO'")
        check_number(name, "timeout_s", timeout_s, gt=0.0)
        check_number(name, "refresh_s", refresh_s, ge=0.0)
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            fail(name, "base_url", base_url, "an http(s) URL")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if not token:
            raise InvalidArgumentError(
                f"{name}(zone={zone!r}): no Electricity Maps token; pass token=... or set the {TOKEN_ENV} "
                "environment variable (the online source is used only with a token)."
            )
        self.zone = zone.strip()
        self._token = str(token)
        self.timeout_s = float(timeout_s)
        self.refresh_s = float(refresh_s)
        self.base_url = base_url.rstrip("/")
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        self._own_clock = clock is not None
        self.hours: dict[int, float] = {}  # hour index (POSIX s // 3600) -> gCO2e/kWh
        self.forecast_hours: set[int] = set()  # hours whose value is a forecast, not a measurement
        self._fetched: dict[str, float] = {}  # endpoint -> clock time of its last fetch
        self.requests = 0
        self.failed_requests = 0
        self.held_hours: set[int] = set()  # hours missing during an outage, given the nearest cached hour's value
        self._outage: str | None = None  # the last request's error while cached hours carry the run
        self._forecast_read = False  # a forecast request has succeeded

    def __repr__(self) -> str:  # never show the token
        return f"{type(self).__name__}(zone={self.zone!r})"

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Take the owner's clock (a callback's, e.g. a simulated one) unless one was given to the constructor."""
        if not self._own_clock:
            self.clock = clock

    # ------------------------------------------------------------------------------------------------ source API
    def covers(self, t0_s: float, t1_s: float) -> bool:
        """Whether Electricity Maps has every hour of ``[t0_s, t1_s]`` (fetching what is missing).

        During an outage with hours cached, also when the missing ones would be held (see the class).
        """
        missing = self._ensure(t0_s, t1_s)
        return not missing or (self._holding() and min(self.hours) <= missing[0] and missing[-1] <= max(self.hours))

    def mean(self, t0_s: float, t1_s: float) -> float:
        """Time-weighted mean intensity over ``[t0_s, t1_s]`` (the hour's value for an instant)."""
        missing = self._ensure(t0_s, t1_s)
        values = self.hours
        if missing and self._holding():
            values = self._held(missing)
        elif missing:
            raise ElectricityMapsError(
                f"{self!r}: Electricity Maps has no carbon intensity for {_iso(missing[0] * _H)}"
                f"{'' if len(missing) == 1 else f' .. {_iso((missing[-1] + 1) * _H)}'} (history reaches "
                f"{self._span()}); shorten the deadline or use a trace."
            )
        if t1_s <= t0_s:
            return values[math.floor(t0_s / _H)]
        total = 0.0
        for h in self._hour_range(t0_s, t1_s):
            a, b = max(t0_s, h * _H), min(t1_s, (h + 1) * _H)
            total += values[h] * max(b - a, 0.0)
        return total / (t1_s - t0_s)

    def describe(self) -> dict[str, object]:
        """Plain-dict form for reports (never the token)."""
        out: dict[str, object] = {"kind": "electricitymaps", "source": f"{ELECTRICITYMAPS_PREFIX}{self.zone}"}
        if self.hours:
            out["start"], out["end"] = _iso(min(self.hours) * _H), _iso((max(self.hours) + 1) * _H)
            out["forecast_hours"] = len(self.forecast_hours)
        out["requests"] = self.requests
        if self.failed_requests:
            out["failed_requests"] = self.failed_requests
            out["held_hours"] = len(self.held_hours)
            out["note"] = (
                f"{self.failed_requests} request(s) to Electricity Maps failed (the run went on with the cached hours"
                + (
                    f"; {len(self.held_hours)} hour(s) never fetched took the nearest cached hour's value"
                    if self.held_hours
                    else ""
                )
                + ")"
            )
        return out

    # ------------------------------------------------------------------------------------------------ fetching
    @staticmethod
    def _hour_range(t0_s: float, t1_s: float) -> range:
        first = math.floor(t0_s / _H)
        last = max(math.ceil(t1_s / _H) - 1, first)
        return range(first, last + 1)

    def _missing(self, t0_s: float, t1_s: float) -> list[int]:
        return [h for h in self._hour_range(t0_s, t1_s) if h not in self.hours]

    def _holding(self) -> bool:
        """Whether missing hours are held: a request failed and hours are cached."""
        return self._outage is not None and bool(self.hours)

    def _held(self, missing: list[int]) -> dict[int, float]:
        """The cached hours plus each of the ``missing`` ones at the nearest cached hour's value (earlier on a tie)."""
        known = sorted(self.hours)
        values = dict(self.hours)
        for h in missing:
            values[h] = self.hours[min(known, key=lambda k: (abs(k - h), k))]
            self.held_hours.add(h)
        return values

    def _ensure(self, t0_s: float, t1_s: float) -> list[int]:
        """Fetch what ``[t0_s, t1_s]`` lacks (an endpoint at most once per ``refresh_s``); return what still is."""
        now_h = math.floor(self.clock() / _H)
        # Hours without a measurement: missing ones, and forecast ones (a newer history or forecast may have them).
        wanted = [h for h in self._hour_range(t0_s, t1_s) if h not in self.hours or h in self.forecast_hours]
        if not wanted:
            return []
        if any(h <= now_h for h in wanted):
            self._maybe_fetch("history", "history", {}, "history")
            older = [h for h in self._missing(t0_s, t1_s) if h < now_h - 23]
            if older:
                start, end = _iso(older[0] * _H), _iso((older[-1] + 1) * _H)
                self._maybe_fetch(f"past-range {start} {end}", "past-range", {"start": start, "end": end}, "data")
        if any(h > now_h for h in wanted) or now_h in self._missing(t0_s, t1_s):
            self._maybe_fetch("forecast", "forecast", {}, "forecast")
        return self._missing(t0_s, t1_s)

    def _maybe_fetch(self, key: str, endpoint: str, params: dict[str, str], field: str) -> None:
        now = self.clock()
        last = self._fetched.get(key)
        if last is not None and now - last < self.refresh_s:
            return
        self._fetched[key] = now
        try:
            rows = self._get(endpoint, params, field)
        except ElectricityMapsError as err:
            if not self.hours or (endpoint == "forecast" and not self._forecast_read):
                raise  # nothing to go on with, or no forecast to plan on
            self.failed_requests += 1
            if self._outage is None:
                warnings.warn(
                    f"{err} Going on with the {len(self.hours)} cached hour(s) (an hour never fetched takes the "
                    f"nearest cached hour's value; the report counts them) and retrying every {self.refresh_s:g} s.",
                    UserWarning,
                    stacklevel=2,
                )
            self._outage = str(err)
            return
        if self._outage is not None:
            log.info("%r: Electricity Maps answers again (%s).", self, endpoint)
            self._outage = None
        self._forecast_read = self._forecast_read or endpoint == "forecast"
        for row in rows:
            h, value = self._parse_row(row, endpoint)
            if field == "forecast":
                if h in self.hours and h not in self.forecast_hours:
                    continue  # a measurement beats a forecast of the same hour
                self.forecast_hours.add(h)
            else:
                self.forecast_hours.discard(h)
            self.hours[h] = value

    def _parse_row(self, row: Any, endpoint: str) -> tuple[int, float]:
        try:
            value = row["carbonIntensity"]
            when = _dt.datetime.fromisoformat(str(row["datetime"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            raise ElectricityMapsError(
                f"{self!r}: unexpected {endpoint} row from Electricity Maps: {str(row)[:120]}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ElectricityMapsError(f"{self!r}: Electricity Maps gave intensity {value!r} for {when.isoformat()}")
        return math.floor(when.timestamp() / _H), float(value)

    def _get(self, endpoint: str, params: dict[str, str], field: str) -> list[Any]:
        import urllib.error  # lazily: only an online source needs the HTTP stack
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode({"zone": self.zone, **params})
        url = f"{self.base_url}/carbon-intensity/{endpoint}?{query}"
        request = urllib.request.Request(url, headers={"auth-token": self._token, "Accept": "application/json"})
        self.requests += 1
        log.debug("GET %s", url)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise InvalidArgumentError(
                    f"{self!r}: token rejected by Electricity Maps (HTTP {err.code} on {endpoint}); check the token "
                    f"argument or the {TOKEN_ENV} environment variable, and that your plan includes zone "
                    f"{self.zone!r}."
                ) from None
            raise ElectricityMapsError(
                f"{self!r}: Electricity Maps answered HTTP {err.code} {err.reason} on {endpoint}."
            ) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ElectricityMapsError(
                f"{self!r}: network error reaching {urllib.parse.urlsplit(self.base_url).netloc} "
                f"({reason}; timeout {self.timeout_s:g} s); check the connection or use a trace."
            ) from None
        try:
            rows = json.loads(body)[field]
        except (ValueError, KeyError, TypeError):
            raise ElectricityMapsError(
                f"{self!r}: unexpected {endpoint} response from Electricity Maps (no {field!r} list)."
            ) from None
        if not isinstance(rows, list):
            raise ElectricityMapsError(f"{self!r}: unexpected {endpoint} response ({field!r} is not a list).")
        return rows

    def _span(self) -> str:
        if not self.hours:
            return "no hours"
        return f"{_iso(min(self.hours) * _H)} .. {_iso((max(self.hours) + 1) * _H)}"


def parse_spec(value: str, owner: str, name: str) -> ElectricityMapsSource:
    """``"electricitymaps:DE"`` → a source for zone DE with the token from ``ELECTRICITYMAPS_TOKEN``.

    Example:
        >>> parse_spec("electricitymaps:", "EnergyMonitor", "carbon_intensity")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: EnergyMonitor(carbon_intensity='electricitymaps:'): ...
    """
    zone = value[len(ELECTRICITYMAPS_PREFIX) :].strip()
    if not zone:
        fail(owner, name, value, "'electricitymaps:<zone>' with a zone such as 'electricitymaps:DE'")
    try:
        return ElectricityMapsSource(zone)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"{owner}({name}={value!r}): {err}") from None
