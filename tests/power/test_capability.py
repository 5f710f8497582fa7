import os

import pytest
from zeus.device.gpu.common import GPUs

import lightning_green.power.capability as capability
from lightning_green.power import check_power_control
from lightning_green.testing import SimulatedGPU, simulated_gpus


class _FakeNVML(SimulatedGPU):
    """A GPU that answers like NVML: no permission switch of its own, so the process's rights decide."""

    def __getattribute__(self, name):
        if name == "can_set_limits":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def _check_permission(self):
        if not capability.has_sys_admin():
            from zeus.device.gpu.common import ZeusGPUNoPermissionError

            raise ZeusGPUNoPermissionError("Insufficient Permissions")


class _Gpus(GPUs):
    def __init__(self, gpus):
        self._gpus = gpus

    def __del__(self):
        pass

    @property
    def gpus(self):
        return self._gpus


def test_simulated_permission_switch_decides():
    with simulated_gpus(1, can_set_limits=False) as gpus:
        control = check_power_control(gpus, 0)
    assert not control.ok and control.method == "simulated"


def test_probe_writes_the_same_value_back():
    with simulated_gpus(1, initial_limit_w=275) as gpus:
        control = check_power_control(gpus, 0)
        assert control.ok and control.current_mw == 275_000
        assert gpus.get_power_management_limit(0) == 275_000


@pytest.mark.parametrize("admin", [True, False])
def test_without_switch_the_sys_admin_capability_decides(monkeypatch, admin):
    monkeypatch.setattr(capability, "has_sys_admin", lambda: admin)
    control = check_power_control(_Gpus([_FakeNVML()]), 0)
    assert control.method == "SYS_ADMIN" and control.ok is admin
    if not admin:
        assert "SYS_ADMIN" in control.reason and "zeusd" in control.reason


def test_zeusd_socket_must_exist(monkeypatch, tmp_path):
    class ZeusdNVIDIAGPU(_FakeNVML):  # named like Zeus's daemon-backed GPU
        def _check_permission(self):
            pass

    monkeypatch.setenv("ZEUSD_SOCK_PATH", str(tmp_path / "zeusd.sock"))
    control = check_power_control(_Gpus([ZeusdNVIDIAGPU()]), 0)
    assert not control.ok and control.method == "zeusd" and "does not exist" in control.reason
    (tmp_path / "zeusd.sock").touch()
    assert check_power_control(_Gpus([ZeusdNVIDIAGPU()]), 0).ok
    assert os.environ["ZEUSD_SOCK_PATH"].endswith("zeusd.sock")


def test_missing_gpu_and_fixed_limit():
    with simulated_gpus(1, min_limit_w=250, max_limit_w=250) as gpus:
        assert "not found" in check_power_control(gpus, 3).reason
        assert "no adjustable power limit" in check_power_control(gpus, 0).reason
