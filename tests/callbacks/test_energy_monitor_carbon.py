"""EnergyMonitor and EnergyBudget with a time-varying carbon intensity (a callable or a CSV trace)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_green import EnergyBudget, EnergyMonitor
from lightning_green.carbon import IntensityTrace
from lightning_green.cli import cli, main
from lightning_green.testing import SimClock
from tests.callbacks.test_carbon_aware_scheduler import CAISO, START, StepClock, by_hour
from tests.helpers import SteadyModel, make_trainer

H = 3600.0


def monitor(intensity, clock, **kwargs) -> EnergyMonitor:
    return EnergyMonitor(
        carbon_intensity=intensity,
        clock=clock,
        log_every_n_steps=1,
        min_window_s=0.0,
        print_summary=False,
        progress_bar=False,
        **kwargs,
    )


def test_co2_is_the_sum_of_window_energy_times_window_intensity(tmp_path):
    clock = SimClock(START.timestamp())
    mon = monitor(by_hour({0: 100.0, 1: 200.0, 2: 300.0, 3: 400.0}, default=0.0), clock, pue=1.5)
    trainer = make_trainer(tmp_path, max_steps=4, logger=CSVLogger(tmp_path), callbacks=[StepClock(clock, H), mon])
    trainer.fit(SteadyModel(0.002))
    report = json.loads(Path(trainer.log_dir, "energy_report.json").read_text())
    fit = report["stages"]["fit"]
    windows = fit["carbon_windows"]["windows"]
    # one window per step, each one simulated hour long, at that hour's intensity; then the zero-length final read
    assert [w[3] for w in windows[:4]] == [100.0, 200.0, 300.0, 400.0]
    assert [w[0][11:16] for w in windows[:4]] == ["00:00", "01:00", "02:00", "03:00"]
    energies = [w[2] for w in windows]
    assert sum(energies) == pytest.approx(fit["energy_j"]["total"])
    by_hand = sum(e * i for _, _, e, i in windows) / 3.6e6 * 1.5
    assert fit["gco2e"] == pytest.approx(by_hand) and mon.total_gco2e() == pytest.approx(by_hand)
    constant = sum(energies) / 3.6e6 * 250.0 * 1.5  # the hours' plain mean would say this
    assert fit["gco2e"] != pytest.approx(constant)
    assert report["carbon"]["intensity_source"].startswith("callable: by_hour")
    metrics = Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()
    col = metrics[0].split(",").index("carbon/intensity_g_per_kWh")
    logged = [float(row.split(",")[col]) for row in metrics[1:] if row.split(",")[col]]
    assert logged[:4] == [100.0, 200.0, 300.0, 400.0]


def test_numpy_numbers_are_intensities_and_a_function_returning_none_is_refused_at_setup(tmp_path):
    # A callable over an np.int64 array (a pandas int column) crashed the fit at its first window; np.int64 and
    # np.float32 constants and PUEs were "not a number".
    import numpy as np

    clock = SimClock(START.timestamp())
    hourly = np.arange(1, 25, dtype=np.int64) * 100
    mon = monitor(lambda when: hourly[when.hour], clock, pue=np.float32(1.5))
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[StepClock(clock, H), mon])
    trainer.fit(SteadyModel(0.002))
    windows = mon.report()["stages"]["fit"]["carbon_windows"]["windows"]
    assert [w[3] for w in windows[:4]] == [100.0, 200.0, 300.0, 400.0]
    assert mon.total_gco2e() == pytest.approx(sum(e * i for _, _, e, i in windows) / 3.6e6 * 1.5)
    json.dumps(mon.report())  # plain numbers in the report
    for constant in (np.int64(56), np.float32(56.0)):
        assert EnergyMonitor(carbon_intensity=constant).carbon.intensity == 56.0
    steps = []
    mon = monitor(lambda when: None, SimClock(START.timestamp()))
    trainer = make_trainer(tmp_path / "none", max_steps=4, callbacks=[mon])
    model = SteadyModel(0.0)
    model.on_train_batch_start = lambda *args: steps.append(args)
    with pytest.raises(
        ValueError, match=r"EnergyMonitor\(carbon_intensity=.*<lambda>\): returned None for .*; it must return"
    ):
        trainer.fit(model)
    assert steps == []  # refused before the first batch
    # The scheduler's own argument is `intensity`: the message names it.
    from lightning_green import CarbonAwareScheduler

    sched = CarbonAwareScheduler(
        intensity=lambda when: None, deadline="12h", expected_duration="1h", clock=SimClock(START.timestamp())
    )
    with pytest.raises(ValueError, match=r"CarbonAwareScheduler\(intensity=.*<lambda>\): returned None for"):
        make_trainer(tmp_path / "sched", max_steps=2, callbacks=[sched]).fit(SteadyModel(0.0))


def test_a_trace_that_does_not_cover_the_start_is_refused_at_setup(tmp_path):
    mon = EnergyMonitor(carbon_intensity=CAISO, print_summary=False)  # a 2022 excerpt, the real clock is later
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[mon])
    with pytest.raises(
        ValueError, match=r"EnergyMonitor\(carbon_intensity='.*caiso.*'\): the trace covers .* carbon_extend="
    ):
        trainer.fit(SteadyModel(0.0))


def test_the_last_week_is_repeated_only_when_asked(tmp_path):
    clock = SimClock(dt.datetime(2022, 6, 21, 0, tzinfo=dt.timezone.utc).timestamp())  # a week after the excerpt
    mon = monitor(CAISO, clock, carbon_extend="repeat-last-week")
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[StepClock(clock, H), mon])
    trainer.fit(SteadyModel(0.0))
    windows = mon.report()["stages"]["fit"]["carbon_windows"]["windows"]
    # 2022-06-21 00:00 repeats 2022-06-14 00:00 (the trace's last week)
    row = next(line for line in Path(CAISO).read_text().splitlines() if line.startswith("2022-06-14 00:00"))
    assert windows[0][3] == pytest.approx(float(row.split(",")[-1]))


def test_a_run_that_outlives_the_trace_is_warned_and_flagged(tmp_path):
    clock = SimClock(dt.datetime(2022, 6, 14, 22, tzinfo=dt.timezone.utc).timestamp())
    mon = monitor(CAISO, clock)
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[StepClock(clock, H), mon])
    with pytest.warns(UserWarning, match="outlived the carbon-intensity trace"):
        trainer.fit(SteadyModel(0.0))
    assert "its last week was repeated" in mon.report()["carbon"]["extrapolated"]


def test_budget_counts_each_window_at_its_own_intensity(tmp_path):
    clock = SimClock(START.timestamp())
    mon = monitor(by_hour({3: 1e9}, default=0.0), clock)
    budget = EnergyBudget(max_gco2e=1.0, on_forecast="ignore")
    trainer = make_trainer(tmp_path, max_steps=20, callbacks=[StepClock(clock, H), mon, budget])
    trainer.fit(SteadyModel(0.002))
    # hours 0-2 are free; the window of hour 3 blows the budget: stop after step 4, not before
    assert trainer.global_step == 4
    assert "gCO2e >= budget 1 gCO2e" in budget.stopped_reason


def test_cli_refusal_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-green"])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.callbacks=lightning_green.EnergyMonitor",
                f"--trainer.callbacks.carbon_intensity={CAISO}",
                "--trainer.max_steps=1",
                "--trainer.enable_progress_bar=false",
                "--data.image_size=8",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-green: error: EnergyMonitor(carbon_intensity=")
    assert "the trace covers 2022-06-01T00:00+00:00 .. 2022-06-15T00:00+00:00" in err[-1]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"carbon_intensity": -1.0}, ValueError, r"EnergyMonitor\(carbon_intensity=-1.0\): `carbon_intensity` must be"),
        ({"carbon_intensity": {"a": 1}}, TypeError, r"EnergyMonitor\(carbon_intensity=\{'a': 1\}\)"),
        ({"carbon_extend": "forever"}, ValueError, r"\(carbon_extend='forever'\): `carbon_extend` must be one of"),
        ({"carbon_timezone": "CET+5"}, ValueError, r"\(carbon_timezone='CET\+5'\): `carbon_timezone` must be an IANA"),
        ({"clock": "now"}, TypeError, r"EnergyMonitor\(clock='now'\): `clock` must be None or a callable"),
        ({"pue": "high"}, TypeError, r"EnergyMonitor\(pue='high'\): `pue` must be a number"),
    ],
)
def test_bad_carbon_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EnergyMonitor(**kwargs)


def test_a_run_that_outlives_a_trace_shorter_than_a_week_holds_its_last_value(tmp_path):
    # Repeating the last week needs a week of data: a 3-h trace used to crash training once the run passed its end.
    clock = SimClock(START.timestamp())
    trace = IntensityTrace(START.timestamp(), H, (100.0, 200.0, 300.0), "short.csv")
    mon = monitor(trace, clock)
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[StepClock(clock, H), mon])
    with pytest.warns(UserWarning, match="outlived the carbon-intensity trace; its last value is held"):
        trainer.fit(SteadyModel(0.0))
    windows = mon.report()["stages"]["fit"]["carbon_windows"]["windows"]
    assert [w[3] for w in windows[:5]] == [100.0, 200.0, 300.0, 300.0, 300.0]
    flag = mon.report()["carbon"]["extrapolated"]
    assert "last value was held" in flag and "2022-06-01T03:00" in flag


def test_repeating_the_last_week_of_a_trace_shorter_than_a_week_is_refused_at_setup(tmp_path):
    clock = SimClock(START.timestamp())
    trace = IntensityTrace(START.timestamp(), H, (100.0, 200.0, 300.0), "short.csv")
    mon = monitor(trace, clock, carbon_extend="repeat-last-week")
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[StepClock(clock, H), mon])
    with pytest.raises(
        ValueError,
        match=r"EnergyMonitor\(carbon_extend='repeat-last-week'\): .* needs at least a week .* spans 3 h\. .*"
        r"carbon_extend='none'",
    ):
        trainer.fit(SteadyModel(0.0))
    assert trainer.global_step == 0


def test_a_csv_that_needs_options_is_usable_from_yaml(tmp_path):
    csv = tmp_path / "kg.csv"
    csv.write_text("when,intensity_kg_per_kwh\n2022-06-01 00:00,0.3\n2022-06-01 01:00,0.25\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_green.EnergyMonitor\n      init_args:\n"
        "        carbon_intensity:\n          class_path: lightning_green.carbon.CSVTrace\n          init_args:\n"
        f"            path: {csv}\n            time_column: when\n            unit: kg/kWh\n"
    )
    built = cli([f"--config={config}"], run=False)
    mon = next(cb for cb in built.trainer.callbacks if isinstance(cb, EnergyMonitor))
    assert mon.carbon_tracker.source.values == (300.0, 250.0)


def test_a_plain_csv_path_from_yaml_stays_a_path(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_green.EnergyMonitor\n      init_args:\n"
        f"        carbon_intensity: {CAISO}\n"
    )
    built = cli([f"--config={config}"], run=False)
    mon = next(cb for cb in built.trainer.callbacks if isinstance(cb, EnergyMonitor))
    assert mon.carbon_tracker.source.source == CAISO


def test_a_checkpoint_before_a_flush_keeps_the_co2_of_its_unlogged_window(tmp_path):
    # The ledgers saved the energy since the last logging point, the carbon windows did not: a resumed run reported
    # the CO₂ of only part of its energy.
    from lightning.pytorch.callbacks import ModelCheckpoint

    clock = SimClock(START.timestamp())
    intensity = by_hour({0: 100.0, 1: 200.0, 2: 300.0}, default=400.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)  # before any flush
    first = EnergyMonitor(carbon_intensity=intensity, clock=clock, log_every_n_steps=50, print_summary=False)
    make_trainer(tmp_path, max_steps=3, callbacks=[StepClock(clock, H), first, ckpt]).fit(SteadyModel(0.002))
    (path,) = (tmp_path / "ck").iterdir()
    state = next(v for k, v in __import__("torch").load(path, weights_only=True)["callbacks"].items() if "Energy" in k)
    saved_j = sum(sum(r[:3]) for r in state["ledgers"]["fit"]["per_rank"])
    assert sum(w[2] for w in state["carbon"]["windows"]["fit"]) == pytest.approx(saved_j) and saved_j > 0
    second = EnergyMonitor(carbon_intensity=intensity, clock=clock, log_every_n_steps=50, print_summary=False)
    make_trainer(tmp_path, max_steps=6, callbacks=[StepClock(clock, H), second]).fit(SteadyModel(0.002), ckpt_path=path)
    windows = second.carbon_tracker.account.windows["fit"]
    assert sum(w[2] for w in windows) == pytest.approx(second.total_energy_j())
    assert second.total_gco2e() == pytest.approx(sum(w[2] * w[3] for w in windows) / 3.6e6)
