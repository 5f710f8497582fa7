"""A counter that exists but cannot be opened is said once, with the fix, and labelled (issue 11, item 7).

Faked at the filesystem Zeus reads (RAPL) and at Zeus's vendor seam (NVML), so Zeus's own code runs.
"""

import builtins
import os
import warnings

import pytest
import zeus.device.cpu as zeus_cpu
import zeus.device.cpu.rapl as zeus_rapl
import zeus.device.gpu as zeus_gpu
from lightning.pytorch.demos.boring_classes import BoringModel
from zeus.device.gpu.common import ZeusGPUInitError

from lightning_green import EnergyMonitor
from lightning_green._internal.validation import InvalidArgumentError
from lightning_green.energy import read_report
from lightning_green.energy.meter import EnergyMeter
from tests.helpers import make_trainer


@pytest.fixture
def unreadable_rapl(tmp_path, monkeypatch):
    """A RAPL tree whose energy counter the process may not read (as on Linux >= 5.10 without root)."""
    rapl = tmp_path / "powercap" / "intel-rapl"
    zone = rapl / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("123456\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    real_open = builtins.open

    def guarded_open(path, *args, **kwargs):
        # root reads any file whatever its mode, so the permission check is made here
        if os.fspath(path).startswith(str(rapl)) and os.fspath(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(zeus_rapl, "RAPL_DIR", str(rapl))
    monkeypatch.setattr(zeus_rapl, "open", guarded_open, raising=False)  # RAPLFile's `open`
    monkeypatch.setattr(zeus_cpu, "_cpus", None)
    zeus_rapl.rapl_is_available.cache_clear()  # Zeus caches the answer for the process (functools.lru_cache)
    yield
    zeus_cpu._cpus = None
    zeus_rapl.rapl_is_available.cache_clear()


def test_unreadable_rapl_says_why_with_the_fix(unreadable_rapl):
    meter = EnergyMeter(gpu_indices=[])
    assert meter.sources["cpu"] == "estimated"
    assert "permission denied" in meter.problems["cpu"] and "chmod" in meter.problems["cpu"]
    assert meter.describe()["cpu"] == "estimate (RAPL unreadable)"


def test_no_rapl_at_all_is_no_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(zeus_rapl, "RAPL_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(zeus_rapl, "CONTAINER_RAPL_DIR", str(tmp_path / "absent2"))
    monkeypatch.setattr(zeus_cpu, "_cpus", None)
    zeus_rapl.rapl_is_available.cache_clear()
    meter = EnergyMeter(gpu_indices=[])
    zeus_rapl.rapl_is_available.cache_clear()
    assert meter.problems == {} and meter.describe()["cpu"] == "estimate"


def test_energy_monitor_warns_once_and_reports_it(unreadable_rapl, tmp_path):
    monitor = EnergyMonitor()
    trainer = make_trainer(tmp_path, callbacks=[monitor], limit_train_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(BoringModel())
    rapl = [str(w.message) for w in caught if "RAPL" in str(w.message)]
    assert len(rapl) == 1
    assert rapl[0].startswith("EnergyMonitor: CPU energy is estimated: RAPL (/sys/class/powercap) is not readable")
    report = read_report(os.path.join(tmp_path, "energy_report.json"))
    assert "permission denied" in report["meter"]["problems"]["cpu"]


@pytest.fixture
def broken_nvml(monkeypatch):
    """NVML loads but its GPUs cannot be opened (e.g. a driver/library mismatch)."""

    def failing(*args, **kwargs):
        raise ZeusGPUInitError("NVML Error: Driver/library version mismatch")

    monkeypatch.setattr(zeus_gpu, "_gpus", None)
    monkeypatch.setattr(zeus_gpu, "nvml_is_available", lambda: True)
    monkeypatch.setattr(zeus_gpu, "NVIDIAGPUs", failing)


def test_gpu_init_error_on_the_training_gpu_is_said_and_labelled(broken_nvml, monkeypatch, tmp_path):
    # As if training on cuda:0 (CPU torch here): the monitor would measure GPU 0.
    monkeypatch.setattr("lightning_green.callbacks.energy_monitor.rank_gpu_index", lambda trainer: 0)
    monitor = EnergyMonitor()
    trainer = make_trainer(tmp_path, callbacks=[monitor], limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"GPU energy is not measured: Zeus could not open the GPUs \(ZeusGPUInit"):
        trainer.fit(BoringModel())
    meter = read_report(os.path.join(tmp_path, "energy_report.json"))["meter"]
    assert meter["gpu_method"] == "unmeasured (GPUs not openable)"
    assert "Driver/library version mismatch" in meter["problems"]["gpu"] and "nvidia-smi" in meter["problems"]["gpu"]


def test_gpu_init_error_with_explicit_indices_names_the_reason(broken_nvml, tmp_path):
    trainer = make_trainer(tmp_path, callbacks=[EnergyMonitor(gpu_indices=[0])])
    with pytest.raises(InvalidArgumentError, match=r"Zeus sees 0 GPU\(s\) \(Zeus could not open the GPUs"):
        trainer.fit(BoringModel())
