"""Traces with naive local timestamps across daylight-saving changes: the repeated autumn hour, the skipped spring
hour, real duplicates, and year-long local-time traces that must equal their UTC originals."""

from __future__ import annotations

import csv
import datetime as dt
import math
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from lightning_green.carbon import read_trace

UTC = dt.timezone.utc
SHARED_DE = Path(__file__).resolve().parents[3] / "shared" / "data" / "carbon" / "de_2020_15min_lwa.csv"


def write_local(path: Path, start: dt.datetime, step: dt.timedelta, values: list[float], zone: str) -> Path:
    """A CSV whose timestamps are the wall-clock times in ``zone`` of ``start + i × step`` (no offset)."""
    tz = ZoneInfo(zone)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["time", "carbon_intensity"])
        for i, v in enumerate(values):
            w.writerow([(start + i * step).astimezone(tz).replace(tzinfo=None).isoformat(sep=" "), v])
    return path


def rows(text: str) -> str:
    return "time,carbon_intensity\n" + "\n".join(text.split()).replace(";", " ") + "\n"


@pytest.mark.parametrize("step_min", [60, 15])
def test_the_repeated_autumn_hour_is_read_in_order(tmp_path, step_min):
    start = dt.datetime(2020, 10, 24, 0, tzinfo=UTC)
    n = 72 * 60 // step_min
    values = [100.0 + i for i in range(n)]
    tr = read_trace(
        write_local(tmp_path / "berlin.csv", start, dt.timedelta(minutes=step_min), values, "Europe/Berlin"),
        timezone="Europe/Berlin",
    )
    assert tr.start_s == start.timestamp() and tr.step_s == step_min * 60.0
    assert tr.values == tuple(values)  # nothing interpolated, nothing dropped: UTC time increases step by step


def test_a_file_with_offsets_and_one_without_agree_at_the_clock_change(tmp_path):
    naive = tmp_path / "naive.csv"
    naive.write_text(
        rows("2020-10-25;01:00,1 2020-10-25;02:00,2 2020-10-25;02:00,3 2020-10-25;03:00,4"), encoding="utf-8"
    )
    offsets = tmp_path / "offsets.csv"
    offsets.write_text(
        rows("2020-10-25;01:00+02:00,1 2020-10-25;02:00+02:00,2 2020-10-25;02:00+01:00,3 2020-10-25;03:00+01:00,4"),
        encoding="utf-8",
    )
    a, b = read_trace(naive, timezone="Europe/Berlin"), read_trace(offsets)
    assert (a.start_s, a.step_s, a.values) == (b.start_s, b.step_s, b.values) == (b.start_s, 3600.0, (1, 2, 3, 4))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # the spring change skips 02:00-02:59 in Berlin: a file with it is not in Berlin's wall-clock time
        (
            "2020-03-29;01:00,1 2020-03-29;02:00,2 2020-03-29;03:00,3",
            r"timezone='Europe/Berlin'\): row 3 timestamp '2020-03-29 02:00:00' does not exist in Europe/Berlin "
            r"\(the clocks skip it when they change from CET to CEST\).*timezone='UTC'",
        ),
        # a repeated hour listed three times: the third is a real duplicate
        (
            "2020-10-25;01:00,1 2020-10-25;02:00,2 2020-10-25;02:00,3 2020-10-25;02:00,4",
            r"row 5 timestamp '2020-10-25 02:00' is duplicate",
        ),
        # the same time twice outside the clock change is still a duplicate
        ("2020-10-25;04:00,1 2020-10-25;04:00,2", r"row 3 timestamp '2020-10-25 04:00' is duplicate"),
        # going back on the wall clock outside the repeated hour is still unsorted
        ("2020-10-25;04:00,1 2020-10-25;03:00,2", r"row 3 timestamp '2020-10-25 03:00' is unsorted"),
    ],
)
def test_local_times_that_cannot_be_a_clean_series_are_refused(tmp_path, text, match):
    p = tmp_path / "ci.csv"
    p.write_text(rows(text), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        read_trace(p, timezone="Europe/Berlin")


@pytest.mark.parametrize(
    ("zone", "year", "step_min"),
    [("Europe/Berlin", 2020, 15), ("America/Los_Angeles", 2022, 60), ("Australia/Sydney", 2022, 30)],
)
def test_a_year_long_trace_in_local_time_equals_its_utc_original(tmp_path, zone, year, step_min):
    start = dt.datetime(year, 1, 1, tzinfo=UTC)
    n = 366 * 24 * 60 // step_min
    values = [round(300 + 100 * math.sin(i / 37.0) + (i % 7), 3) for i in range(n)]
    tr = read_trace(
        write_local(tmp_path / "local.csv", start, dt.timedelta(minutes=step_min), values, zone), timezone=zone
    )
    assert tr.start_s == start.timestamp() and tr.step_s == step_min * 60.0
    assert tr.values == tuple(values)


@pytest.mark.skipif(not SHARED_DE.exists(), reason="the shared DE trace is not on this machine")
def test_the_real_german_trace_written_in_berlin_time_reads_back_the_same(tmp_path):
    utc = read_trace(SHARED_DE)  # its file is in UTC
    tz = ZoneInfo("Europe/Berlin")
    local = tmp_path / "de_berlin.csv"
    with open(SHARED_DE, encoding="utf-8") as src, open(local, "w", encoding="utf-8") as out:
        out.write(next(src))
        for line in src:
            when, value = line.rstrip("\n").split(",")
            t = dt.datetime.fromisoformat(when).replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)
            out.write(f"{t.isoformat(sep=' ')},{value}\n")
    berlin = read_trace(local, timezone="Europe/Berlin")
    assert (berlin.start_s, berlin.step_s, berlin.values) == (utc.start_s, utc.step_s, utc.values)
