import json

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from zeus.device.gpu.common import ZeusGPUInvalidArgError, ZeusGPUNoPermissionError
from zeus.monitor import ZeusMonitor

from lightning_green import EnergyMonitor
from lightning_green.testing import (
    V100_RESNET50,
    PowerCurve,
    SimClock,
    SimulatedGPU,
    SimulatedGPUWorkload,
    simulated_gpus,
)
from lightning_green.testing.simulated_gpu import installed_simulated_gpus


def test_calibrated_curve_reproduces_the_published_trace():
    # Zeus NSDI'23 V100 trace, resnet50/imagenet b256: energy/epoch is lowest at 150 W
    gpu = SimulatedGPU(curve=V100_RESNET50, clock=SimClock())
    energy = {}
    for limit in (100, 125, 150, 175, 200, 225, 250):
        gpu.set_power_management_limit(limit * 1000)
        seconds = gpu.run(3514.986666666666)  # one epoch's work at 250 W
        energy[limit] = gpu.busy_draw_w() * seconds
    assert min(energy, key=energy.get) == 150
    assert gpu.run(1.0) == pytest.approx(1.0)  # at 250 W
    gpu.set_power_management_limit(100_000)
    assert gpu.run(1.0) == pytest.approx(6781.173333333332 / 3514.986666666666)
    assert gpu.busy_draw_w() == pytest.approx(98.38240555274153)


def test_curve_interpolates_between_points_and_clamps_outside():
    assert V100_RESNET50.draw_at(112.5) == pytest.approx((98.38240555274153 + 121.9660191434676) / 2)
    assert V100_RESNET50.throughput_at(50) == V100_RESNET50.throughput_at(100)
    assert V100_RESNET50.throughput_at(400) == 1.0


def test_bad_curves_and_arguments_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        PowerCurve("x", (200.0, 100.0), (1.0, 0.5), (180.0, 90.0))
    with pytest.raises(ValueError, match=">= 2 points"):
        PowerCurve("x", (200.0,), (1.0,), (180.0,))
    with pytest.raises(ValueError, match="`curve` must be one of"):
        SimulatedGPU(curve="h100-llama")
    with pytest.raises(ValueError, match="initial_limit_w"):
        SimulatedGPU(initial_limit_w=50)
    with pytest.raises(ValueError, match="only moves forward"):
        SimClock().advance(-1)


def test_energy_counter_integrates_busy_and_idle_draw_on_the_sim_clock():
    clock = SimClock()
    gpu = SimulatedGPU(curve="v100-resnet50", idle_w=40.0, clock=clock)
    gpu.set_busy(False)
    clock.advance(2.0)  # idle
    gpu.set_power_management_limit(200_000)
    took = gpu.run(1.0)  # busy at 200 W
    assert not gpu.busy
    expected_mj = (40.0 * 2.0 + gpu.busy_draw_w() * took) * 1000
    assert gpu.get_total_energy_consumption() == pytest.approx(expected_mj, abs=1)


def test_knee_model_saturates_above_demand():
    gpu = SimulatedGPU(demand_w=200.0, max_limit_w=300, clock=SimClock())
    assert gpu.throughput(300) == gpu.throughput(200) == 1.0
    assert gpu.throughput(100) == pytest.approx(0.5**0.5)
    assert gpu.busy_draw_w(150) == 150.0 and gpu.busy_draw_w(250) == 200.0


def test_limits_and_permission_switch():
    gpu = SimulatedGPU(min_limit_w=100, max_limit_w=300, can_set_limits=False)
    with pytest.raises(ZeusGPUNoPermissionError):
        gpu.set_power_management_limit(200_000)
    gpu.can_set_limits = True
    with pytest.raises(ZeusGPUInvalidArgError):
        gpu.set_power_management_limit(50_000)
    gpu.set_power_management_limit(200_000)
    gpu.reset_power_management_limit()
    assert gpu.limit_history == [300_000, 200_000, 300_000]


def test_state_path_keeps_the_limit_across_instances(tmp_path):
    path = tmp_path / "gpu0.json"
    a = SimulatedGPU(initial_limit_w=275, state_path=path)
    a.set_power_management_limit(150_000)
    b = SimulatedGPU(initial_limit_w=275, state_path=path)  # "the next process": the GPU is still capped
    assert b.get_power_management_limit() == 150_000
    assert json.loads(path.read_text())["limit_history"] == [275_000, 150_000]


def test_simulated_gpus_work_under_zeus_monitor_and_uninstall():
    with simulated_gpus(2, state_dir=None, curve="v100-resnet50") as gpus:
        assert installed_simulated_gpus() is gpus
        monitor = ZeusMonitor(gpu_indices=[1], cpu_indices=[])
        monitor.begin_window("w", sync_execution=False)
        gpus.gpus[1].run(0.02)
        m = monitor.end_window("w", sync_execution=False)
        assert m.gpu_energy[1] > 0.02 * 200
    assert installed_simulated_gpus() is None


class _Boom(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        raise RuntimeError("boom")


def test_workload_uninstalls_its_gpus_after_a_crash(tmp_path):
    import zeus.device.gpu as zeus_gpu

    before = zeus_gpu._gpus
    work = SimulatedGPUWorkload(step_work_s=0.0)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=3,
        callbacks=[work, _Boom()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    try:
        with pytest.raises(RuntimeError, match="boom"):
            trainer.fit(BoringModel())  # Lightning calls on_exception, not teardown
        assert installed_simulated_gpus() is None and zeus_gpu._gpus is before
        # a later CPU-only run in this process measures no (simulated) GPU
        monitor = EnergyMonitor(print_summary=False)
        Trainer(
            default_root_dir=tmp_path / "cpu",
            max_steps=1,
            callbacks=[monitor],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(BoringModel())
        report = json.loads((tmp_path / "cpu" / "energy_report.json").read_text())
        assert report["meter"]["gpu_indices"] == []
    finally:
        zeus_gpu._gpus = before  # keep a failure here from leaking simulated GPUs into other tests


@pytest.mark.parametrize("first", [True, False])
def test_workload_installed_after_a_callback_that_looks_for_gpus_warns(tmp_path, first, recwarn):
    work = SimulatedGPUWorkload(step_work_s=0.0)
    monitor = EnergyMonitor(print_summary=False, report_filename=None, progress_bar=False)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=1,
        callbacks=[work, monitor] if first else [monitor, work],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(BoringModel())
    late = [w for w in recwarn if "SimulatedGPUWorkload: installed after EnergyMonitor" in str(w.message)]
    assert bool(late) is not first
    if late:
        assert "Put SimulatedGPUWorkload first" in str(late[0].message)
