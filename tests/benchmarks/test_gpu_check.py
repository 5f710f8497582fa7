import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HELPER = ROOT / "benchmarks" / "_gpu_check.py"


def run(args, **env):
    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120)


def test_without_cuda_it_says_so_and_skips_with_exit_0(tmp_path):
    proc = run([str(tmp_path / "out")], CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA" in proc.stdout and "skipped" in proc.stdout
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["status"] == "skipped" and summary["steps"][0]["step"] == "cuda"
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


@pytest.mark.parametrize("args", [[], ["--help"], ["a", "b"]])
def test_usage_errors_exit_2(args):
    proc = run(args)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: ")


def fake_run(root, gpu_source):
    report = root / "lightning_logs" / "version_0" / "energy_report.json"
    report.parent.mkdir(parents=True)
    energy = {"gpu": 12.0 if gpu_source == "measured" else 0.0, "cpu": 3.0, "dram": 0.1, "total": 15.1}
    fit = {"energy_j": energy, "sources": {"gpu": gpu_source, "cpu": "estimated", "dram": "estimated"}}
    report.write_text(json.dumps({"version": 1, "stages": {"fit": fit}}))


@pytest.mark.parametrize(("source", "ok"), [("measured", True), ("none", False)])
def test_nvml_check_accepts_only_measured_gpu_energy(tmp_path, source, ok):
    fake_run(tmp_path, source)
    proc = subprocess.run([sys.executable, str(HELPER), "nvml-measured", str(tmp_path)], capture_output=True, text=True)
    assert (proc.returncode == 0) is ok
    if not ok:
        assert "the GPU's energy was not read from NVML" in proc.stderr


def test_summary_lists_every_step(tmp_path):
    steps = tmp_path / "steps.tsv"
    steps.write_text("pytest_cuda\tok\t12\t\nfit_gpu_nvml\tfailed\t3\texit status 1\n")
    subprocess.run([sys.executable, str(HELPER), "summary", str(tmp_path), "failed", "r", str(steps), "20"], check=True)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["status"] == "failed" and data["elapsed_s"] == 20
    assert [(s["step"], s["status"], s["seconds"]) for s in data["steps"]] == [
        ("pytest_cuda", "ok", 12),
        ("fit_gpu_nvml", "failed", 3),
    ]


@pytest.mark.parametrize("steps", ["pytest-cuda", "pytest_cuda,nope"])
def test_an_unknown_step_in_gpu_check_steps_is_refused(tmp_path, steps):
    proc = run([str(tmp_path / "out")], GPU_CHECK_STEPS=steps)
    assert proc.returncode == 2 and "GPU_CHECK_STEPS: no step named" in proc.stderr


def test_gpu_check_steps_may_have_spaces(tmp_path):
    proc = run([str(tmp_path / "out")], GPU_CHECK_STEPS="pytest_cuda, meter_cost_gpu", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
