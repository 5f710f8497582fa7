import contextlib
import time

import pytest

from lightning_green.energy import EnergyMeter, EstimateModel, Reading, combine_label
from tests.helpers import FakeRapl


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_only_machine_is_estimated_and_grows_with_cpu_time():
    meter = EnergyMeter(gpu_indices=[], estimate=EstimateModel(cpu_w_per_core=10.0, dram_w_per_gb=0.0))
    meter.start()
    _busy(0.05)
    first = meter.read()
    _busy(0.2)
    second = meter.read()
    meter.stop()
    assert first.sources == {"gpu": "none", "cpu": "estimated", "dram": "estimated"}
    assert first.label == "estimated"
    window = second - first
    # 10 W per core x ~0.2 CPU-seconds
    assert 1.5 < window.energy_j["cpu"] < 4.0
    assert window.energy_j["gpu"] == 0.0


def test_simulated_gpu_is_measured_and_total_is_mixed(sim_gpu):
    sim_gpu.demand_w = 200.0
    meter = EnergyMeter(gpu_indices=[0])
    meter.start()
    time.sleep(0.3)
    r = meter.read()
    meter.stop()
    assert r.sources["gpu"] == "measured" and r.sources["cpu"] == "estimated"
    assert r.label == "mixed"
    # 200 W over the window's wall time, from the simulated counter
    assert r.energy_j["gpu"] == pytest.approx(200.0 * r.time_s, rel=0.05)
    assert meter.describe()["gpu_method"] == "energy counter"


def test_readings_are_cumulative_and_read_requires_start():
    meter = EnergyMeter(gpu_indices=[])
    with pytest.raises(RuntimeError, match="before start"):
        meter.read()
    meter.start()
    a = meter.read()
    _busy(0.02)
    b = meter.read()
    meter.stop()
    assert b.time_s > a.time_s and b.total_j >= a.total_j


def test_combine_label_and_zero_reading():
    assert combine_label({"gpu": "measured", "cpu": "measured", "dram": "none"}) == "measured"
    assert combine_label({"gpu": "none"}) == "none"
    assert Reading.zero().total_j == 0.0


@pytest.mark.parametrize("with_dram", [True, False])
def test_rapl_is_read_once_per_node(with_dram):
    with FakeRapl(with_dram):
        node = EnergyMeter(gpu_indices=[], node_counters=True)  # local rank 0
        other = EnergyMeter(gpu_indices=[], node_counters=False)  # another rank on the same node
        node.start()
        other.start()
        time.sleep(0.2)
        _busy(0.05)
        a, b = node.stop(), other.stop()
    assert a.sources["cpu"] == b.sources["cpu"] == "measured"
    assert a.energy_j["cpu"] == pytest.approx(50.0 * a.time_s, rel=0.05)  # the package counter, in J
    assert b.energy_j["cpu"] == 0.0  # counted by local rank 0, never twice
    if with_dram:
        assert a.energy_j["dram"] == pytest.approx(5.0 * a.time_s, rel=0.05) and b.energy_j["dram"] == 0.0
    else:  # no DRAM domain: each process estimates its own memory
        assert a.sources["dram"] == "estimated" and b.energy_j["dram"] > 0


@pytest.mark.parametrize("rapl", [False, True])
def test_each_read_takes_a_gpus_energy_counter_once(sim_gpu, monkeypatch, rapl):
    # One NVML energy read took 2.8 ms on a (virtualised) H200: a Zeus window's end and the next one's start
    # read the counter twice per window; the meter reads it once.
    calls = []
    original = sim_gpu.get_total_energy_consumption

    def counted():
        calls.append(original())
        return calls[-1]

    monkeypatch.setattr(sim_gpu, "get_total_energy_consumption", counted)
    sim_gpu.demand_w = 200.0
    with FakeRapl(True) if rapl else contextlib.nullcontext():
        meter = EnergyMeter(gpu_indices=[0])
        meter.start()
        assert len(calls) == 1
        readings = []
        for _ in range(3):
            time.sleep(0.05)
            readings.append(meter.read())
        assert len(calls) == 4
        last = meter.stop()
    assert len(calls) == 5
    assert last.energy_j["gpu"] == pytest.approx((calls[-1] - calls[0]) / 1000.0)
    assert readings[1].energy_j["gpu"] - readings[0].energy_j["gpu"] == pytest.approx((calls[2] - calls[1]) / 1000.0)
    assert last.sources == {"gpu": "measured", "cpu": "measured" if rapl else "estimated", "dram": last.sources["dram"]}
    if rapl:  # RAPL still comes through Zeus's windows (a CPU-only monitor, which reads no GPU)
        assert last.energy_j["cpu"] == pytest.approx(50.0 * last.time_s, rel=0.1)


def test_a_window_shorter_than_the_counters_update_counts_power_times_time_and_the_total_stays_exact(
    sim_gpu, monkeypatch
):
    real = sim_gpu.get_total_energy_consumption
    state = {"t": None, "v": 0}

    def quantised():  # NVML's counter moves every few tens of ms: here every 100 ms
        value = real()
        now = time.monotonic()
        if state["t"] is None or now - state["t"] >= 0.1:
            state["t"], state["v"] = now, value
        return state["v"]

    monkeypatch.setattr(sim_gpu, "get_total_energy_consumption", quantised)
    sim_gpu.demand_w = 250.0
    meter = EnergyMeter(gpu_indices=[0])
    meter.start()
    first = state["v"]
    time.sleep(0.02)
    short = meter.read()
    assert short.energy_j["gpu"] == pytest.approx(sim_gpu.power_w() * short.time_s, rel=0.3)  # not 0 J
    time.sleep(0.25)
    last = meter.stop()
    assert last.energy_j["gpu"] == pytest.approx((state["v"] - first) / 1000.0)  # the counters' own total
