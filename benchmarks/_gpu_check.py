"""Helpers of benchmarks/gpu_check.sh (kept in Python so the shell script stays readable).

python benchmarks/_gpu_check.py cuda-info               "yes N NAME | torch ..." or "no ..." (exit 0 either way)
python benchmarks/_gpu_check.py missing-deps            names of missing Python packages (empty: none)
python benchmarks/_gpu_check.py settings FILE           read (never set) every GPU's power limit, persistence
                                                        mode and application clocks through NVML, as JSON
python benchmarks/_gpu_check.py nvml-measured RUN_ROOT  assert the run's energy report has measured GPU energy
python benchmarks/_gpu_check.py meter-cost JSON          what one EnergyMeter read costs on GPU 0 (NVML energy
                                                        counter alone, a CUDA sync alone, a read with/without sync)
python benchmarks/_gpu_check.py summary OUT STATUS REASON STEPS_TSV ELAPSED_S
"""

from __future__ import annotations

import glob
import importlib.util
import json
import sys

DEPS = ["lightning", "zeus", "torch_pruning", "torchmetrics", "jsonargparse", "matplotlib", "tensorboard", "sklearn"]


def cuda_info() -> None:
    try:
        import torch
    except ImportError:
        print(f"no: torch is not installed for {sys.executable} (set PYTHON to the interpreter to check with)")
        return

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        print(f"yes {torch.cuda.device_count()} x {name} | torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        build = torch.version.cuda or "none (a CPU build of torch)"
        print(f"no: torch {torch.__version__} sees no CUDA device (CUDA build: {build})")


def missing_deps() -> None:
    print(" ".join(m for m in [*DEPS, "pytest"] if importlib.util.find_spec(m) is None))


def settings(path: str) -> None:
    import pynvml

    pynvml.nvmlInit()
    out = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        row = {"index": i, "name": str(pynvml.nvmlDeviceGetName(h))}
        readers = {
            "power_limit_mw": pynvml.nvmlDeviceGetPowerManagementLimit,
            "persistence_mode": pynvml.nvmlDeviceGetPersistenceMode,
            "app_clock_sm_mhz": lambda h: pynvml.nvmlDeviceGetApplicationsClock(h, pynvml.NVML_CLOCK_SM),
            "app_clock_mem_mhz": lambda h: pynvml.nvmlDeviceGetApplicationsClock(h, pynvml.NVML_CLOCK_MEM),
        }
        for key, read in readers.items():
            try:
                row[key] = read(h)
            except pynvml.NVMLError as err:
                row[key] = f"n/a ({err})"
        out.append(row)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))


def nvml_measured(root: str) -> None:
    paths = sorted(glob.glob(f"{root}/lightning_logs/version_*/energy_report.json"))
    assert paths, f"no energy report under {root}"
    with open(paths[-1], encoding="utf-8") as f:
        fit = json.load(f)["stages"]["fit"]
    print("fit energy (J):", fit["energy_j"], "sources:", fit["sources"])
    assert fit["sources"]["gpu"] == "measured", "the GPU's energy was not read from NVML"
    assert fit["energy_j"]["gpu"] > 0, "NVML reported no GPU energy"


def meter_cost(path: str, n: str = "300") -> None:
    """Milliseconds per call on an idle GPU 0, each the median of ``n`` calls (reads only: nothing is set)."""
    import statistics
    import time

    import torch
    from zeus.device import get_gpus

    from lightning_green.energy.meter import EnergyMeter

    def per_call_ms(fn) -> float:
        fn()
        times = []
        for _ in range(int(n)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(1000 * statistics.median(times), 4)

    gpus = get_gpus()
    out = {
        "gpu": torch.cuda.get_device_name(0),
        "nvml_total_energy_ms": per_call_ms(lambda: gpus.get_total_energy_consumption(0)),
        "cuda_synchronize_ms": per_call_ms(torch.cuda.synchronize),
    }
    for sync in (True, False):
        meter = EnergyMeter(gpu_indices=[0], sync_cuda=sync)
        meter.start()
        out[f"meter_read_ms_sync_{str(sync).lower()}"] = per_call_ms(meter.read)
        meter.stop()
    # The meter and a plain Zeus window over the same second of matrix products agree.
    from zeus.monitor import ZeusMonitor

    zeus = ZeusMonitor(gpu_indices=[0], cpu_indices=[])
    meter = EnergyMeter(gpu_indices=[0])
    meter.start()
    zeus.begin_window("check")
    x = torch.randn(8192, 8192, device="cuda")
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        x = torch.tanh(x @ x)
        torch.cuda.synchronize()
    got = meter.read().energy_j["gpu"]
    ref = sum(zeus.end_window("check").gpu_energy.values())
    out["one_second_of_matmul_j"] = {"meter": round(got, 2), "zeus_window": round(ref, 2)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))


def summary(out: str, status: str, reason: str, steps_path: str, elapsed: str) -> None:
    steps = []
    with open(steps_path, encoding="utf-8") as f:
        for line in f:
            name, st, seconds, note = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
            steps.append({"step": name, "status": st, "seconds": int(seconds or 0), "note": note})
    with open(f"{out}/gpu_check.json", "w", encoding="utf-8") as f:
        json.dump({"status": status, "reason": reason, "elapsed_s": int(elapsed), "steps": steps}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "cuda-info": cuda_info,
        "missing-deps": missing_deps,
        "settings": settings,
        "nvml-measured": nvml_measured,
        "meter-cost": meter_cost,
        "summary": summary,
    }[cmd](*args)
