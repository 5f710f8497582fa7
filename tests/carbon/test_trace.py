"""Intensity traces: each CSV format, units, gaps, integration against hand-computed values, every bad input."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import pytest

from lightning_green.carbon import (
    CallableIntensity,
    CarbonAccount,
    CarbonTracker,
    CSVTrace,
    IntensityTrace,
    as_intensity_source,
    ensure_covers,
    header_unit,
    read_trace,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "carbon"
CAISO = DATA / "us_caiso_2022-06-01_14_eia.csv"
DE = DATA / "de_2020-12-19_20_lwa.csv"
UTC = dt.timezone.utc


def ts(*args: int) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def write(tmp_path: Path, text: str, name: str = "ci.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_eia_format_interpolates_the_empty_row():
    tr = read_trace(CAISO)
    assert tr.step_s == 3600.0 and tr.start_s == ts(2022, 6, 1) and tr.end_s == ts(2022, 6, 15)
    assert len(tr.values) == 14 * 24
    rows = {line.split(",")[0]: line.split(",")[-1] for line in CAISO.read_text().splitlines()[1:]}
    before = float(rows["2022-06-13 17:00:00+00:00"])
    after = float(rows["2022-06-13 19:00:00+00:00"])
    assert rows["2022-06-13 18:00:00+00:00"] == ""
    assert tr.at(ts(2022, 6, 13, 18, 30)) == pytest.approx((before + after) / 2)
    assert tr.at(ts(2022, 6, 1, 0)) == pytest.approx(float(rows["2022-06-01 00:00:00+00:00"]))


def test_lets_wait_awhile_format_fills_the_missing_quarter_hours():
    tr = read_trace(DE)
    assert tr.step_s == 900.0 and len(tr.values) == 2 * 96
    rows = dict(line.split(",") for line in DE.read_text().splitlines()[1:])
    a, b = float(rows["2020-12-19 23:00:00"]), float(rows["2020-12-19 23:30:00"])
    assert tr.at(ts(2020, 12, 19, 23, 15)) == pytest.approx((a + b) / 2)


def test_naive_timestamps_use_the_given_time_zone():
    utc = read_trace(DE)
    berlin = read_trace(DE, timezone="Europe/Berlin")  # UTC+1 in December
    assert berlin.start_s == utc.start_s - 3600.0
    assert berlin.values == utc.values


def test_electricity_maps_export_uses_the_life_cycle_column(tmp_path):
    p = write(
        tmp_path,
        "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
        "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,Data Source,Data Estimated,"
        "Data Estimation Method\n"
        "2023-01-01 00:00:00,Germany,Germany,DE,300.5,350.25,40,35,entsoe.eu,false,\n"
        "2023-01-01 01:00:00,Germany,Germany,DE,280.0,330.0,42,37,entsoe.eu,false,\n",
    )
    tr = read_trace(p)
    assert tr.values == (350.25, 330.0) and tr.start_s == ts(2023, 1, 1)
    assert read_trace(p, value_column="Carbon Intensity gCO₂eq/kWh (direct)").values == (300.5, 280.0)


EM_CURRENT = (
    "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
    "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
    "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method\n"
)


def test_the_current_electricity_maps_export_uses_the_life_cycle_column(tmp_path):
    # its header says "(Life cycle)", not "(LCA)": the direct column was read
    p = write(
        tmp_path,
        EM_CURRENT + "2023-01-01 00:00:00,Germany,Germany,DE,300.5,350.25,40,35,entsoe.eu,false,\n"
        "2023-01-01 01:00:00,Germany,Germany,DE,280.0,330.0,42,37,entsoe.eu,false,\n",
    )
    assert read_trace(p).values == (350.25, 330.0)


@pytest.mark.parametrize(
    "life_cycle", ["intensity (lca)", "intensity life cycle", "intensity_life-cycle", "lifecycle intensity"]
)
def test_an_unknown_header_prefers_the_life_cycle_intensity(tmp_path, life_cycle):
    p = write(tmp_path, f"timestamp,intensity direct,{life_cycle}\n2023-01-01 00:00,300,350\n")
    assert read_trace(p).values == (350.0,)


def test_a_time_column_that_says_utc_is_read_as_utc_whatever_the_time_zone(tmp_path):
    # read as Berlin time, it was shifted an hour, and 02:00 on the day clocks change was refused as nonexistent
    rows = "".join(
        f"2023-03-26 0{h}:00:00,Germany,Germany,DE,{300 + h},{400 + h},50,40,entsoe.eu,false,\n" for h in range(5)
    )
    p = write(tmp_path, EM_CURRENT + rows)
    berlin = read_trace(p, timezone="Europe/Berlin")
    assert berlin.start_s == ts(2023, 3, 26) and berlin.values == (400.0, 401.0, 402.0, 403.0, 404.0)
    assert berlin == read_trace(p, timezone="UTC")
    underscored = write(tmp_path, "datetime_utc,intensity\n2023-03-26 02:00,100\n", "u.csv")
    assert read_trace(underscored, timezone="Europe/Berlin").start_s == ts(2023, 3, 26, 2)


def test_uk_carbon_intensity_export(tmp_path):
    p = write(
        tmp_path,
        "from,to,forecast,actual,index\n"
        "2023-03-01T00:00Z,2023-03-01T00:30Z,120,118,low\n"
        "2023-03-01T00:30Z,2023-03-01T01:00Z,125,121,low\n",
    )
    tr = read_trace(p)
    assert tr.values == (118.0, 121.0) and tr.step_s == 1800.0 and tr.start_s == ts(2023, 3, 1)


def test_integration_against_hand_computed_values():
    tr = IntensityTrace(start_s=0.0, step_s=3600.0, values=(100.0, 400.0, 200.0))
    # 30 min at 100, a full hour at 400, 15 min at 200 -> (50 + 400 + 50) / 1.75 h
    assert tr.mean(1800.0, 2 * 3600.0 + 900.0) == pytest.approx((0.5 * 100 + 400 + 0.25 * 200) / 1.75)
    acc = CarbonAccount(tr, pue=1.2)
    acc.add(["fit"], 1800.0, 3600.0, 1.8e6)  # 0.5 kWh at 100
    acc.add(["fit"], 3600.0, 9000.0, 3.6e6)  # 1 kWh at (400 h + 200 * 0.5 h) / 1.5 h
    expected = (0.5 * 100 + 1.0 * (400 + 100) / 1.5) * 1.2
    assert acc.gco2e("fit") == pytest.approx(expected)
    assert [w[3] for w in acc.windows["fit"]] == pytest.approx([100.0, 500 / 1.5])


def test_callable_source_is_averaged_over_the_window():
    src = CallableIntensity(lambda when: 100.0 if when.hour < 6 else 500.0)
    assert src.mean(0.0, 12 * 3600.0) == pytest.approx(300.0)
    bad = CallableIntensity(lambda when: float("nan"))
    with pytest.raises(ValueError, match=r"returned nan .* finite number >= 0"):
        bad.mean(0.0, 1.0)


def test_extension_repeats_the_last_week_and_coverage_is_refused_otherwise():
    week = tuple(float(i) for i in range(168))
    tr = IntensityTrace(0.0, 3600.0, (999.0,) * 24 + week)
    ext = ensure_covers(tr, 0.0, tr.end_s + 5 * 3600.0, "X", "intensity", "repeat-last-week")
    assert ext.at(tr.end_s + 2 * 3600.0 + 1) == 2.0
    with pytest.raises(ValueError, match=r"X\(intensity=.*never extrapolated silently.*repeat-last-week"):
        ensure_covers(tr, 0.0, tr.end_s + 1.0, "X", "intensity", "none")
    short = IntensityTrace(0.0, 3600.0, (1.0,) * 10)
    with pytest.raises(ValueError, match="needs at least a week of data"):
        ensure_covers(short, 0.0, short.end_s + 1.0, "X", "intensity", "repeat-last-week")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("timestamp,avg_CI\n2022-01-01 00:00,1\n,2\n", r"row 3 has no timestamp"),
        ("timestamp,avg_CI\n2022-01-01 01:00,1\n2022-01-01 00:00,2\n", r"row 3 timestamp .* is unsorted"),
        ("timestamp,avg_CI\n2022-01-01 00:00,1\n2022-01-01 00:00,2\n", r"row 3 timestamp .* is duplicate"),
        ("timestamp,avg_CI\n2022-01-01 00:00,1\n2022-01-01 01:00,-5\n", r"row 3 intensity '-5' is not allowed"),
        ("timestamp,avg_CI\n2022-01-01 00:00,nan\n2022-01-01 01:00,1\n", r"row 2 intensity 'nan' is not allowed"),
        ("timestamp,avg_CI\n2022-01-01 00:00,abc\n", r"row 2 intensity 'abc' is not a number"),
        ("timestamp,avg_CI\nyesterday,1\n", r"row 2 timestamp 'yesterday' is not an ISO date-time"),
        ("when,value\n2022-01-01 00:00,1\n", r"read_trace\(time_column=None\).*no known column name"),
        (
            "timestamp,avg_CI\n2022-01-01 00:00,1\n2022-01-01 01:00,1\n2022-01-01 01:20,1\n2022-01-01 02:20,1\n",
            r"off the trace's 3600-s grid",
        ),
        (
            "timestamp,avg_CI\n2022-01-01 00:00,1\n2022-01-01 01:00,1\n2022-01-03 01:00,1\n2022-01-03 02:00,1\n",
            r"max_gap_h=24.0\): 48 h of values are missing",
        ),
        (
            "timestamp,Carbon Intensity lbs CO2/MWh\n2022-01-01 00:00,900\n",
            r"read_trace\(unit=None\): `unit` must be given",
        ),
    ],
)
def test_bad_csv_is_refused(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_trace(write(tmp_path, text))


def test_explicit_units_are_converted(tmp_path):
    p = write(tmp_path, "timestamp,Carbon Intensity lbs CO2/MWh\n2022-01-01 00:00,1000\n2022-01-01 01:00,500\n")
    assert read_trace(p, unit="lbs/MWh").values == pytest.approx((453.59237, 226.796185))
    p2 = write(tmp_path, "timestamp,ci_kg\n2022-01-01 00:00,0.25\n", "kg.csv")
    assert read_trace(p2, value_column="ci_kg", unit="kg/kWh").values == (250.0,)


def test_a_g_per_mwh_header_is_converted_when_named(tmp_path):
    # None asked for unit=, and every unit= was refused as not the header's: the file could not be read
    p = write(tmp_path, "timestamp,intensity (g/MWh)\n2023-01-01T00:00Z,300000\n2023-01-01T01:00Z,250000\n")
    with pytest.raises(ValueError, match=r"read_trace\(unit=None\): `unit` must be given explicitly.*'g/MWh'"):
        read_trace(p)
    assert read_trace(p, unit="g/MWh").values == pytest.approx((300.0, 250.0))
    with pytest.raises(
        ValueError, match=r"read_trace\(unit='g/kWh'\): `unit` must be the unit of column .*\(g/MWh\)\.$"
    ):
        read_trace(p, unit="g/kWh")


@pytest.mark.parametrize("unit", [None, "g/kWh", "t/MWh"])
def test_a_header_unit_that_cannot_be_converted_gets_one_message(tmp_path, unit):
    p = write(tmp_path, "timestamp,ci (t/kWh)\n2023-01-01T00:00Z,0.0003\n")
    with pytest.raises(
        ValueError,
        match=r"read_trace\(value_column=None\): `value_column` must be a column in one of the units \('g/kWh'.*: "
        r"column 'ci \(t/kWh\)' is in t/kWh; convert the file or name another column\.$",
    ):
        read_trace(p, unit=unit)


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("intensity (pounds CO2/MWh)", "is not in gCO2e/kWh"),  # read as lbs/MWh: converted once named
        ("intensity (tonnes CO2/MWh)", "is not in gCO2e/kWh"),
        ("intensity (tons CO2/MWh)", "names an amount in 'tons' per kWh or MWh, which is not read from headers"),
    ],
)
def test_a_header_mass_in_words_is_read_or_refused_until_named(tmp_path, header, says):
    # "pounds CO2/MWh" was read as g/kWh without a word (800 for ~363 g/kWh); "tonnes" only got the kg warning.
    p = write(tmp_path, f"timestamp,{header}\n2023-01-01T00:00Z,800\n2023-01-01T01:00Z,900\n")
    with pytest.raises(
        ValueError,
        match=rf"read_trace\(unit=None\): `unit` must be given explicitly: column '{re.escape(header)}' {says}",
    ):
        read_trace(p)


def test_a_header_in_pounds_is_converted_when_named(tmp_path):
    p = write(tmp_path, "timestamp,intensity (pounds CO2/MWh)\n2023-01-01T00:00Z,800\n2023-01-01T01:00Z,900\n")
    assert read_trace(p, unit="lbs/MWh").values == pytest.approx((800 * 0.45359237, 900 * 0.45359237))


@pytest.mark.parametrize("header", ["Carbon intensity (grams CO2e per kWh)", "intensity_per_kwh"])
def test_a_header_in_grams_or_without_a_mass_is_read_as_g_per_kwh(tmp_path, header):
    p = write(tmp_path, f"timestamp,{header}\n2023-01-01T00:00Z,800\n2023-01-01T01:00Z,900\n")
    assert read_trace(p).values == (800.0, 900.0)


def test_a_path_that_is_not_a_path_is_refused():
    with pytest.raises(TypeError, match=r"read_trace\(path=123\): `path` must be the path of a CSV file"):
        read_trace(123)


@pytest.mark.parametrize(
    ("hours", "values"),
    [
        ((0, 3, 4), (100.0, 200.0, 300.0, 400.0, 500.0)),  # the gap is half the steps
        ((0, 2, 4, 6, 7, 8), tuple(100.0 * h + 100 for h in range(9))),  # most steps are gaps
    ],
)
def test_a_short_trace_with_many_gaps_is_interpolated(tmp_path, hours, values):
    # the upper median step (3 h for rows at 0, 3 and 4 h) put 04:00 "off the trace's 10800-s grid"
    rows = "".join(f"2023-01-01 {h:02d}:00,{100 * h + 100}\n" for h in hours)
    tr = read_trace(write(tmp_path, "time,intensity\n" + rows))
    assert tr.step_s == 3600.0 and tr.start_s == ts(2023, 1, 1) and tr.values == values


def test_a_stray_row_does_not_make_a_long_trace_fine_grained(tmp_path):
    rows = "2023-01-01 00:00:00,100\n2023-01-01 00:00:01,100\n"
    rows += "".join(f"2023-01-01 {h:02d}:00:00,100\n" for h in range(1, 24))
    with pytest.raises(ValueError, match=r"timestamp 2023-01-01T00:00:01\+00:00 is off the trace's 3600-s grid"):
        read_trace(write(tmp_path, "time,intensity\n" + rows))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unit": "oz/kWh"}, r"read_trace\(unit='oz/kWh'\): `unit` must be one of \('g/kWh'"),
        ({"timezone": "Mars/Olympus"}, r"read_trace\(timezone='Mars/Olympus'\): `timezone` must be an IANA"),
        ({"value_column": "nope"}, r"read_trace\(value_column='nope'\): `value_column` must be a column of"),
        ({"max_gap_h": -1}, r"read_trace\(max_gap_h=-1\): `max_gap_h` must be a number >= 0"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        read_trace(CAISO, **kwargs)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (-3.0, ValueError, r"EnergyMonitor\(carbon_intensity=-3.0\): `carbon_intensity` must be a number >= 0"),
        (math.nan, ValueError, r"EnergyMonitor\(carbon_intensity=nan\)"),
        ("/no/such/file.csv", ValueError, r"carbon_intensity='/no/such/file.csv'\).*no file at that path"),
        ([1, 2], TypeError, r"EnergyMonitor\(carbon_intensity=\[1, 2\]\)"),
    ],
)
def test_bad_intensity_values(value, exc, match):
    with pytest.raises(exc, match=match):
        as_intensity_source(value, "EnergyMonitor")


def test_a_bad_csv_names_the_argument(tmp_path):
    p = write(tmp_path, "timestamp,avg_CI\n2022-01-01 00:00,-1\n")
    with pytest.raises(ValueError, match=r"^EnergyMonitor\(carbon_intensity='.*ci.csv'\): read_trace.*-1"):
        as_intensity_source(str(p), "EnergyMonitor")


@pytest.mark.parametrize(
    ("header", "unit"),
    [
        ("carbon_intensity_kg_per_kwh", "kg/kWh"),
        ("intensity (kg/kWh)", "kg/kWh"),
        ("Carbon Intensity kgCO2/kWh", "kg/kWh"),
        ("co2_g_per_kwh", "g/kWh"),
        ("Carbon Intensity gCO₂eq/kWh (LCA)", "g/kWh"),
        ("emissions lb/MWh", "lbs/MWh"),
        ("ci_t_per_mwh", "t/MWh"),
        ("g CO2-eq/kWh", "g/kWh"),  # the "-eq" / "_eq" / "e" of CO2-equivalent after a separator
        ("lbs CO2-eq/MWh", "lbs/MWh"),
        ("kg_co2_eq_per_kwh", "kg/kWh"),
        ("tCO2e/MWh", "t/MWh"),
        ("g CO₂e per kWh", "g/kWh"),
        ("co2_per_kwh", None),  # the gas alone, no mass: no unit
        ("carbon_intensity", None),
        ("avg_CI", None),
    ],
)
def test_a_unit_in_the_header_is_recognised(header, unit):
    assert header_unit(header) == unit


@pytest.mark.parametrize("header", ["carbon_intensity_kg_per_kwh", "intensity (kg/kWh)"])
def test_a_kg_header_without_co2_is_not_read_as_grams(tmp_path, header):
    p = write(tmp_path, f"timestamp,{header}\n2022-01-01 00:00,0.3\n2022-01-01 01:00,0.35\n")
    with pytest.raises(ValueError, match=r"read_trace\(unit=None\): `unit` must be given explicitly: column"):
        read_trace(p)
    assert read_trace(p, unit="kg/kWh").values == pytest.approx((300.0, 350.0))


def test_a_header_unit_that_contradicts_unit_is_refused(tmp_path):
    p = write(tmp_path, "timestamp,intensity (kg/kWh)\n2022-01-01 00:00,0.3\n")
    with pytest.raises(
        ValueError, match=r"read_trace\(unit='g/kWh'\): `unit` must be the unit of column .* \(kg/kWh\)"
    ):
        read_trace(p, unit="g/kWh")


def test_values_that_look_like_kg_per_kwh_are_warned_about(tmp_path):
    p = write(tmp_path, "timestamp,intensity\n2022-01-01 00:00,0.3\n2022-01-01 01:00,0.35\n")
    with pytest.warns(UserWarning, match=r"every intensity in column 'intensity' is below 1.5.*unit='kg/kWh'"):
        assert read_trace(p).values == (0.3, 0.35)


@pytest.mark.parametrize(
    ("text", "kwargs"),
    [
        ("timestamp,intensity\n2022-01-01 00:00,0.3\n", {"unit": "kg/kWh"}),  # said so
        ("timestamp,co2_g_per_kwh\n2022-01-01 00:00,0.3\n", {}),  # the header says grams
        ("timestamp,intensity\n2022-01-01 00:00,0.3\n2022-01-01 01:00,40\n", {}),  # not all tiny
        ("timestamp,intensity\n2022-01-01 00:00,0\n", {}),  # a zero-carbon grid
    ],
)
def test_no_kg_warning_when_the_unit_is_known_or_the_values_are_plausible(tmp_path, text, kwargs, recwarn):
    read_trace(write(tmp_path, text), **kwargs)
    assert not [w for w in recwarn if "kg/kWh" in str(w.message)]


def test_csv_trace_passes_read_trace_options_through_a_callback(tmp_path):
    p = write(tmp_path, "when,co2\n2022-01-01 00:00,0.3\n2022-01-01 01:00,0.25\n")
    source = as_intensity_source(CSVTrace(p, time_column="when", value_column="co2", unit="kg/kWh"), "EnergyMonitor")
    assert source.values == (300.0, 250.0)
    assert CSVTrace(p, time_column="when", value_column="co2", unit="kg/kWh")(dt.datetime(2022, 1, 1, 1)) == 250.0


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("when,co2\n2022-01-01 00:00,300\n", "time_column"),
        ("timestamp,co2\n2022-01-01 00:00,300\n", "value_column"),
        ("timestamp,intensity (kg/kWh)\n2022-01-01 00:00,0.3\n", "unit"),
    ],
)
def test_an_option_error_tells_a_callback_user_how_to_give_it(tmp_path, text, option):
    p = write(tmp_path, text)
    with pytest.raises(
        ValueError,
        match=rf"EnergyMonitor\(carbon_intensity='.*'\): read_trace\({option}=None\): .* From EnergyMonitor, give it "
        rf"through carbon_intensity=lightning_green.carbon.CSVTrace\('.*', {option}=...\) \(YAML: class_path: "
        rf"lightning_green.carbon.CSVTrace",
    ):
        as_intensity_source(str(p), "EnergyMonitor")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"unit": "oz/kWh"}, ValueError, r"CSVTrace\(unit='oz/kWh'\): `unit` must be one of"),
        ({"timezone": "Mars/Olympus"}, ValueError, r"CSVTrace\(timezone='Mars/Olympus'\): `timezone` must be"),
        ({"max_gap_h": -1}, ValueError, r"CSVTrace\(max_gap_h=-1\): `max_gap_h` must be a number >= 0"),
        ({"value_column": 3}, TypeError, r"CSVTrace\(value_column=3\): `value_column` must be None or a column name"),
    ],
)
def test_csv_trace_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CSVTrace(CAISO, **kwargs)


@pytest.mark.parametrize("spent_j", [1.0e6, 3.6e6, 5.0e6])
def test_the_forecast_co2_is_that_of_the_forecast_energy(spent_j):
    # 27.4 J forecast after 27.8 J spent used to report the CO2 of the 27.8 J
    t = [0.0]
    tracker = CarbonTracker(lambda when: 100.0 if when.hour == 0 else 300.0, clock=lambda: t[0])
    tracker.start()
    t[0] = 3600.0
    tracker.window(["fit"], spent_j)  # at 100 g/kWh
    forecast_j = 3.6e6
    expected = (
        forecast_j / 3.6e6 * 100.0
        if spent_j >= forecast_j
        else spent_j / 3.6e6 * 100 + (forecast_j - spent_j) / 3.6e6 * tracker.intensity_now
    )
    assert tracker.forecast_gco2e("fit", spent_j, forecast_j) == pytest.approx(expected)
    const = CarbonTracker(56.0, pue=1.1)
    assert const.forecast_gco2e("fit", spent_j, forecast_j) == pytest.approx(forecast_j / 3.6e6 * 56.0 * 1.1)


@pytest.mark.parametrize(
    ("t_s", "shown"), [(0.0, "1970-01-01T00:00+00:00"), (1e12, "1e+12 s (POSIX)"), (1e20, "1e+20 s (POSIX)")]
)
def test_a_time_no_date_time_can_hold_is_shown_in_seconds(t_s, shown):
    # a report or a message shows a time past the year 9999 instead of failing on it
    from lightning_green.carbon.trace import _iso

    assert _iso(t_s) == shown
