"""ElectricityMapsSource against a mocked ``urllib.request.urlopen``: parsing, the token header, errors, caching."""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import urllib.error
import urllib.parse

import pytest

from lightning_green import CarbonAwareScheduler, EnergyMonitor
from lightning_green.carbon import ElectricityMapsError, ElectricityMapsSource, as_intensity_source
from lightning_green.carbon.online import TOKEN_ENV
from lightning_green.testing import SimClock
from tests.helpers import SteadyModel, make_trainer

H = 3600.0
NOW = dt.datetime(2026, 6, 1, 12, 30, tzinfo=dt.timezone.utc).timestamp()


def _iso(t_s: float) -> str:
    return dt.datetime.fromtimestamp(t_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeAPI:
    """Electricity Maps v3 in memory: cleanest (100) at 14:00 UTC, +1 per hour away; records every request."""

    def __init__(self, now_s: float, status: int | None = None, error: BaseException | None = None) -> None:
        self.now_s, self.status, self.error = now_s, status, error
        self.clock = None  # when set, "now" follows it
        self.forecast_offset = -50.0  # so tests can tell a forecast hour from a measured one
        self.requests: list[urllib.request.Request] = []
        self.timeouts: list[float] = []

    @staticmethod
    def value(h: int) -> float:
        return 100.0 + abs(h % 24 - 14)

    def rows(self, first_h: int, last_h: int, forecast: bool = False) -> list[dict]:
        out = []
        for h in range(first_h, last_h + 1):
            out.append(
                {
                    "carbonIntensity": self.value(h) + (self.forecast_offset if forecast else 0.0),
                    "datetime": _iso(h * H),
                }
            )
        return out

    def __call__(self, request, timeout=None):
        self.requests.append(request)
        self.timeouts.append(timeout)
        if self.error is not None:
            raise self.error
        if self.status is not None:
            raise urllib.error.HTTPError(request.full_url, self.status, "Unauthorized", {}, None)
        url = urllib.parse.urlsplit(request.full_url)
        query = dict(urllib.parse.parse_qsl(url.query))
        now_h = int((self.clock() if self.clock else self.now_s) // H)
        endpoint = url.path.rsplit("/", 1)[-1]
        if endpoint == "history":
            body = {"zone": query["zone"], "history": self.rows(now_h - 23, now_h)}
        elif endpoint == "forecast":
            body = {"zone": query["zone"], "forecast": self.rows(now_h, now_h + 47, forecast=True)}
        elif endpoint == "past-range":
            start = dt.datetime.fromisoformat(query["start"]).timestamp()
            end = dt.datetime.fromisoformat(query["end"]).timestamp()
            body = {"zone": query["zone"], "data": self.rows(int(start // H), int(end // H) - 1)}
        else:
            raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)
        return io.BytesIO(json.dumps(body).encode())

    def endpoints(self) -> list[str]:
        return [urllib.parse.urlsplit(r.full_url).path.rsplit("/", 1)[-1] for r in self.requests]


@pytest.fixture
def api(monkeypatch):
    fake = FakeAPI(NOW)
    monkeypatch.setattr("urllib.request.urlopen", fake)
    return fake


def test_parses_history_and_forecast_and_sends_the_token(api):
    clock = SimClock(NOW)
    src = ElectricityMapsSource("DE", token="secret", timeout_s=3.0, clock=clock)
    now_h = int(NOW // H)
    assert src.mean((now_h - 2) * H, (now_h - 1) * H) == FakeAPI.value(now_h - 2)  # measured
    assert src.mean((now_h + 3) * H, (now_h + 4) * H) == FakeAPI.value(now_h + 3) - 50.0  # forecast
    # half an hour in each of two hours: the time-weighted mean
    assert (
        src.mean((now_h - 2) * H + 1800, (now_h - 1) * H + 1800)
        == (FakeAPI.value(now_h - 2) + FakeAPI.value(now_h - 1)) / 2
    )
    assert api.endpoints() == ["history", "forecast"]
    for request in api.requests:
        assert request.get_header("Auth-token") == "secret"
        assert "zone=DE" in request.full_url and request.full_url.startswith("https://api.electricitymap.org/v3/")
    assert api.timeouts == [3.0, 3.0]
    assert "secret" not in repr(src) and "secret" not in json.dumps(src.describe())


def test_caches_fetched_hours_and_refreshes_the_forecast(api):
    clock = SimClock(NOW)
    src = ElectricityMapsSource("DE", token="t", refresh_s=900.0, clock=clock)
    now_h = int(NOW // H)
    for _ in range(5):
        src.mean((now_h - 5) * H, now_h * H)
        src.covers(NOW, NOW + 10 * H)
    assert api.endpoints() == ["history", "forecast"]
    clock.advance(3600.0)  # an hour later: the forecast is re-read, the passed hour comes from the history
    api.now_s = clock()
    hour = (now_h + 1) * H  # forecast at the first fetch, now the current hour
    assert src.mean(hour, hour + H) == FakeAPI.value(now_h + 1)  # the measurement replaced the forecast
    src.mean((now_h + 5) * H, (now_h + 6) * H)
    assert api.endpoints() == ["history", "forecast", "history", "forecast"]


def test_older_hours_come_from_past_range(api):
    src = ElectricityMapsSource("DE", token="t", clock=SimClock(NOW))
    now_h = int(NOW // H)
    assert src.covers((now_h - 30) * H, NOW)
    assert src.mean((now_h - 30) * H, (now_h - 29) * H) == FakeAPI.value(now_h - 30)
    assert api.endpoints() == ["history", "past-range"]


def test_hours_it_does_not_have_are_refused(api):
    src = ElectricityMapsSource("DE", token="t", clock=SimClock(NOW))
    later = NOW + 10 * 24 * H
    assert not src.covers(NOW, later)
    with pytest.raises(ElectricityMapsError, match=r"ElectricityMapsSource\(zone='DE'\): Electricity Maps has no "):
        src.mean(later, later + H)


def test_no_token_names_the_argument_and_the_environment_variable(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(
        ValueError, match=rf"ElectricityMapsSource\(zone='DE'\): no Electricity Maps token; pass token=.*{TOKEN_ENV}"
    ):
        ElectricityMapsSource("DE")
    with pytest.raises(ValueError, match=rf"EnergyMonitor\(carbon_intensity='electricitymaps:DE'\): .*{TOKEN_ENV}"):
        EnergyMonitor(carbon_intensity="electricitymaps:DE")


def test_token_from_the_environment_and_the_string_spec(api, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    src = as_intensity_source("electricitymaps:US-CAL-CISO", "CarbonAwareScheduler", "intensity")
    assert isinstance(src, ElectricityMapsSource) and src.zone == "US-CAL-CISO"
    assert src.describe()["source"] == "electricitymaps:US-CAL-CISO"
    assert api.requests == []  # nothing fetched before a value is needed
    src.mean(NOW - H, NOW - H)
    assert api.requests[0].get_header("Auth-token") == "from-env"


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_token(monkeypatch, status):
    monkeypatch.setattr("urllib.request.urlopen", FakeAPI(NOW, status=status))
    src = ElectricityMapsSource("DE", token="bad", clock=SimClock(NOW))
    with pytest.raises(
        ValueError, match=rf"token rejected by Electricity Maps \(HTTP {status} on history\); .*{TOKEN_ENV}"
    ):
        src.mean(NOW - H, NOW)


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (urllib.error.URLError("Name or service not known"), r"network error reaching api\.electricitymap\.org "),
        (socket.timeout("timed out"), r"network error .*timed out; timeout 10 s"),
    ],
)
def test_network_errors_say_so(monkeypatch, error, match):
    monkeypatch.setattr("urllib.request.urlopen", FakeAPI(NOW, error=error))
    src = ElectricityMapsSource("DE", token="t", clock=SimClock(NOW))
    with pytest.raises(ElectricityMapsError, match=match):
        src.covers(NOW, NOW + H)


def test_other_http_errors_and_bad_bodies(monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", FakeAPI(NOW, status=500))
    with pytest.raises(ElectricityMapsError, match=r"answered HTTP 500 .* on history"):
        ElectricityMapsSource("DE", token="t", clock=SimClock(NOW)).mean(NOW - H, NOW)
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout=None: io.BytesIO(b'{"error": "x"}'))
    with pytest.raises(ElectricityMapsError, match=r"unexpected history response .*no 'history' list"):
        ElectricityMapsSource("DE", token="t", clock=SimClock(NOW)).mean(NOW - H, NOW)
    body = json.dumps({"history": [{"carbonIntensity": -5, "datetime": _iso(NOW)}]}).encode()
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout=None: io.BytesIO(body))
    with pytest.raises(ElectricityMapsError, match=r"gave intensity -5 "):
        ElectricityMapsSource("DE", token="t", clock=SimClock(NOW)).mean(NOW - H, NOW)


def test_a_failed_request_once_hours_are_cached_goes_on_with_them(api):
    # One DNS failure when a forecast hour had passed (its measurement re-fetched) stopped the fit hours in.
    from lightning_green.carbon.tracker import CarbonTracker

    clock = SimClock(NOW)
    src = ElectricityMapsSource("DE", token="t", clock=clock)
    now_h = int(NOW // H)
    assert src.covers((now_h - 5) * H, (now_h + 10) * H)  # history and forecast cached
    api.error = urllib.error.URLError("temporary failure in name resolution")
    clock.advance(2 * H)  # hour now_h + 1 has passed: its measurement is asked for, and the request fails
    with pytest.warns(UserWarning, match=r"network error .* Going on with the 71 cached hour\(s\)"):
        assert src.mean((now_h + 1) * H, (now_h + 2) * H) == FakeAPI.value(now_h + 1) - 50.0  # its forecast
    far = (now_h + 60) * H  # never fetched (the forecast reaches now_h + 47): the nearest cached hour's value
    assert src.mean(far, far + H) == FakeAPI.value(now_h + 47) - 50.0
    assert not src.covers(far, far + H)  # past the last hour cached: a deadline there is still refused
    desc = src.describe()
    assert desc["failed_requests"] >= 1 and desc["held_hours"] == 1
    assert "request(s) to Electricity Maps failed" in desc["note"] and "1 hour(s) never fetched" in desc["note"]
    assert CarbonTracker(src, clock=clock).as_dict()["source_note"] == desc["note"]
    api.error, api.now_s = None, clock()
    clock.advance(900.0)  # after refresh_s it asks again, and the measurement replaces the forecast
    assert src.mean((now_h + 1) * H, (now_h + 2) * H) == FakeAPI.value(now_h + 1)


def test_a_forecast_that_fails_before_any_was_read_raises(monkeypatch):
    # With the history just read, a 503 on the forecast planned on 72 held copies of the last measured hour.
    api = FakeAPI(NOW)

    def forecast_down(request, timeout=None):
        if "/forecast" in request.full_url:
            raise urllib.error.HTTPError(request.full_url, 503, "Service Unavailable", {}, None)
        return api(request, timeout)

    monkeypatch.setattr("urllib.request.urlopen", forecast_down)
    src = ElectricityMapsSource("DE", token="t", clock=SimClock(NOW))
    with pytest.raises(ElectricityMapsError, match=r"answered HTTP 503 Service Unavailable on forecast"):
        src.covers(NOW - H, NOW + 10 * H)


def test_a_deadline_past_the_forecast_says_how_far_it_reaches(api, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "t")
    sched = CarbonAwareScheduler(intensity="electricitymaps:DE", deadline="72h", clock=SimClock(NOW), verbose=False)
    with pytest.raises(
        ValueError,
        match=r"CarbonAwareScheduler\(intensity='electricitymaps:DE'\): it has intensities for .* but the run needs "
        r".*\. To fix: give a deadline by 2026-06-03T12:00\+00:00 \(as far as the forecast reaches\), "
        r"or a CSV trace\.$",
    ):
        make_trainer(tmp_path, max_steps=1, callbacks=[sched]).fit(SteadyModel(0.001))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"zone": ""}, r"ElectricityMapsSource\(zone=''\): `zone` must be an Electricity Maps zone"),
        ({"zone": "DE", "timeout_s": 0}, r"ElectricityMapsSource\(timeout_s=0\): `timeout_s` must be"),
        ({"zone": "DE", "base_url": "ftp://x"}, r"ElectricityMapsSource\(base_url='ftp://x'\): `base_url` must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ElectricityMapsSource(token="t", **kwargs)


def test_empty_zone_in_the_spec(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "t")
    with pytest.raises(ValueError, match=r"CarbonAwareScheduler\(intensity='electricitymaps:'\): `intensity` must be"):
        CarbonAwareScheduler(intensity="electricitymaps:")


def test_scheduler_and_monitor_run_on_it(api, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "t")
    clock = SimClock(NOW)
    api.clock, api.forecast_offset = clock, 0.0
    sched = CarbonAwareScheduler(
        intensity="electricitymaps:DE", deadline="12h", expected_duration="1h", clock=clock, verbose=False
    )
    mon = EnergyMonitor(carbon_intensity="electricitymaps:DE", clock=clock, print_summary=False, progress_bar=False)
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[sched, mon])
    trainer.fit(SteadyModel(0.001))
    # 12:30 measures 102; the forecast says 14:00 is the cleanest hour: it waited an hour and a half
    assert sched.paused_s == 5400.0 and clock() == NOW + 5400.0
    assert mon.carbon_tracker.intensity_now == FakeAPI.value(14) == 100.0  # measured now, from the history
    assert {"history", "forecast"} <= set(api.endpoints()) and len(api.requests) < 20


def test_yaml_builds_it_from_the_spec(api, monkeypatch, tmp_path):
    from jsonargparse import ArgumentParser

    monkeypatch.setenv(TOKEN_ENV, "t")
    config = tmp_path / "config.yaml"
    config.write_text(
        "sched:\n  intensity: electricitymaps:DE\n  deadline: 12h\n  forecast: trace\n"
        "monitor:\n  carbon_intensity: electricitymaps:DE\n"
    )
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(CarbonAwareScheduler, "sched")
    parser.add_class_arguments(EnergyMonitor, "monitor")
    init = parser.instantiate(parser.parse_args([f"--config={config}"]))
    assert isinstance(init.sched.source, ElectricityMapsSource) and init.sched.source.zone == "DE"
    assert init.monitor.carbon_tracker.source.describe()["source"] == "electricitymaps:DE"
    assert api.requests == []  # building it from YAML goes nowhere near the network
