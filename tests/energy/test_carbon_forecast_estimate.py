import os

import pytest

from lightning_green.energy import CarbonModel, EnergyForecast, EstimateModel
from lightning_green.energy.carbon import WORLD_AVERAGE_G_PER_KWH, joules_to, to_joules


def test_carbon_is_kwh_times_intensity_times_pue():
    model = CarbonModel(intensity_g_per_kwh=200.0, pue=1.25)
    assert model.gco2e(7.2e6) == pytest.approx(2.0 * 200.0 * 1.25)
    info = model.as_dict()
    assert info["intensity_source"] == "user" and info["pue"] == 1.25


def test_default_intensity_is_reported_as_default():
    model = CarbonModel()
    assert model.intensity == WORLD_AVERAGE_G_PER_KWH == 475.0
    assert model.as_dict()["intensity_source"].startswith("default")


@pytest.mark.parametrize(("unit", "factor"), [("J", 1.0), ("Wh", 3600.0), ("kWh", 3.6e6)])
def test_unit_round_trip(unit, factor):
    assert to_joules(2.0, unit) == 2.0 * factor
    assert joules_to(to_joules(2.0, unit), unit) == pytest.approx(2.0)


def test_estimate_from_tdp_spreads_over_cores():
    model = EstimateModel.from_tdp(cpu_tdp_w=100.0, cpu_tdp_cores=4, dram_w_per_gb=0.5)
    assert model.cpu_w_per_core == 25.0
    assert model.cpu_energy_j(2.0) == 50.0
    assert model.dram_energy_j(4.0, 10.0) == 20.0
    assert EstimateModel.from_tdp(cpu_tdp_w=100.0).cpu_w_per_core == 100.0 / (os.cpu_count() or 1)


def test_forecast_needs_enough_epochs_and_skips_warmup():
    f = EnergyForecast(after_epochs=2)
    f.add_epoch(500.0, 10)
    assert f.predict(500.0, epochs_done=1, max_epochs=10) is None
    f.add_epoch(100.0, 10)
    # two epochs seen, two needed: nothing left to skip
    assert f.predict(600.0, epochs_done=2, max_epochs=4) == pytest.approx(600.0 + 2 * 300.0)
    f.add_epoch(100.0, 10)
    # three epochs: the warm-up epoch is skipped
    assert f.predict(700.0, epochs_done=3, max_epochs=4) == pytest.approx(800.0)


def test_forecast_takes_the_earlier_of_epoch_and_step_limits_and_resets():
    f = EnergyForecast()
    f.add_epoch(100.0, 10)
    assert f.predict(100.0, epochs_done=1, max_epochs=100, steps_done=10, max_steps=30) == pytest.approx(300.0)
    assert f.predict(100.0, epochs_done=1, max_epochs=-1, max_steps=-1) is None
    f.reset()
    assert not f.ready
    state = EnergyForecast()
    state.add_epoch(1.0, 2)
    g = EnergyForecast()
    g.load_state_dict(state.state_dict())
    assert g.history == [(1.0, 2)]
