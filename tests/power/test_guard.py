import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zeus.device.gpu.common import ZeusGPUNoPermissionError

from lightning_green.power import LimitGuard
from lightning_green.testing import simulated_gpus

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_guard_script.py")


def _limit(state_dir: Path) -> int:
    return json.loads((state_dir / "gpu0.json").read_text())["limit_mw"]


def _history(state_dir: Path) -> list[int]:
    return json.loads((state_dir / "gpu0.json").read_text())["limit_history"]


def _start(mode: str, state_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(state_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_until(pred, timeout=90.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_restore_puts_back_the_original_not_the_maximum():
    with simulated_gpus(1, initial_limit_w=260) as gpus:
        guard = LimitGuard(gpus, [0])
        guard.arm()
        assert guard.originals == {0: 260_000}
        guard.set_limit(0, 120_000)
        assert guard.disarm() is True
        assert gpus.get_power_management_limit(0) == 260_000


def test_the_limit_set_last_is_known_until_restored():
    with simulated_gpus(1, initial_limit_w=260) as gpus:
        guard = LimitGuard(gpus, [0])
        guard.arm()
        assert guard.applied == {}
        guard.set_limit(0, 120_000)
        guard.set_limit(0, 150_000)
        assert guard.applied == {0: 150_000}
        guard.restore()
        assert guard.applied == {}


@pytest.mark.parametrize(
    ("now_w", "original_w"),
    [(150, 240), (120, 240), (220, 220), (240, 240)],
    ids=["left-by-the-killed-run", "another-of-its-limits", "set-by-an-administrator", "already-restored"],
)
def test_adopt_originals_takes_the_killed_runs_original_only_for_a_limit_it_left(now_w, original_w):
    with simulated_gpus(1, initial_limit_w=now_w) as gpus:
        guard = LimitGuard(gpus, [0])
        guard.arm()
        adopted = guard.adopt_originals({250_000, 150_000, 120_000}, {0: 240_000, 1: 200_000})
        assert adopted == ({0: 240_000} if original_w != now_w else {})
        assert guard.originals == {0: original_w * 1000}
        guard.disarm()
        assert gpus.get_power_management_limit(0) == original_w * 1000


def test_restore_failure_is_reported_not_raised():
    failures = []
    with simulated_gpus(1) as gpus:
        guard = LimitGuard(gpus, [0], on_restore_failure=lambda i, mw, err: failures.append((i, mw, type(err))))
        guard.arm()
        guard.set_limit(0, 200_000)
        gpus.gpus[0].can_set_limits = False
        assert guard.restore() is False
        assert failures == [(0, 300_000, ZeusGPUNoPermissionError)]
        gpus.gpus[0].can_set_limits = True
        guard.disarm()


def test_signal_restores_trips_and_chains_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with simulated_gpus(1, initial_limit_w=250) as gpus:
            guard = LimitGuard(gpus, [0])
            guard.arm()
            guard.install_signals()
            guard.set_limit(0, 150_000)
            os.kill(os.getpid(), signal.SIGTERM)
            assert _wait_until(lambda: seen, timeout=5)
            assert seen == [signal.SIGTERM]
            assert gpus.get_power_management_limit(0) == 250_000
            assert guard.tripped and guard.set_limit(0, 150_000) is False  # no re-capping during shutdown
            guard.disarm()
            assert signal.getsignal(signal.SIGTERM) is not guard._on_signal
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigint_with_default_handler_raises_keyboard_interrupt_after_restoring():
    # A process started in the background by a non-interactive shell inherits SIGINT ignored: install Python's
    # default handler for this test, as an interactive run has it.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with simulated_gpus(1) as gpus:
            guard = LimitGuard(gpus, [0])
            guard.arm()
            guard.install_signals()
            try:
                guard.set_limit(0, 150_000)
                with pytest.raises(KeyboardInterrupt):
                    guard._on_signal(signal.SIGINT, None)
                assert gpus.get_power_management_limit(0) == 300_000
            finally:
                guard.disarm()
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_sigterm_during_training_restores_the_original_limit(tmp_path):
    proc = _start("trainer", tmp_path)
    try:
        # The tuner starts at the maximum (250 W), then steps down; the original was 240 W.
        assert _wait_until(lambda: (tmp_path / "gpu0.json").exists() and _limit(tmp_path) < 240_000), "never capped"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert _limit(tmp_path) == 240_000, out
    assert 250_000 in _history(tmp_path) and min(_history(tmp_path)) < 240_000
    assert "fit returned" not in out  # Lightning stopped the run (SIGTERMException), it did not finish


@pytest.mark.parametrize(("mode", "killed"), [("signal", True), ("atexit", False)])
def test_plain_process_exit_paths_restore(tmp_path, mode, killed):
    proc = _start(mode, tmp_path)
    try:
        if killed:
            assert _wait_until(lambda: (tmp_path / "gpu0.json").exists() and _limit(tmp_path) == 150_000)
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert _limit(tmp_path) == 240_000, out
    assert _history(tmp_path)[-2:] == [150_000, 240_000]
    assert proc.returncode == (-signal.SIGTERM if killed else 0), out
