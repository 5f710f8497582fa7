"""Write a power-limit profile with Zeus's own GlobalPowerLimitOptimizer on a simulated V100 (run as a script).

Usage: python _zeus_profile_script.py OUT.json PROFILE_STEPS. Prints, as JSON, the energy (J) of one step at each
limit measured directly on the simulated GPU, for the test to compare with. A subprocess, because the optimizer
registers an atexit handler that would outlive the test's simulated GPUs.
"""

import functools
import json
import sys

from zeus.monitor import ZeusMonitor
from zeus.optimizer.power_limit import Energy, GlobalPowerLimitOptimizer

from lightning_green.testing import SimClock, simulated_gpus

STEP_WORK_S = 0.01


def main(path: str, profile_steps: int) -> None:
    clock = SimClock()
    with simulated_gpus(1, curve="v100-resnet50", clock=clock) as gpus:
        gpu = gpus.gpus[0]
        monitor = ZeusMonitor(gpu_indices=[0], cpu_indices=[], approx_instant_energy=True)
        # CPU torch: the simulated GPU must not make Zeus synchronise CUDA
        monitor.begin_window = functools.partial(monitor.begin_window, sync_execution=False)
        monitor.end_window = functools.partial(monitor.end_window, sync_execution=False)
        opt = GlobalPowerLimitOptimizer(
            monitor, Energy(), wait_steps=0, warmup_steps=1, profile_steps=profile_steps, pl_step=50, profile_path=path
        )
        for _ in range(4 * (1 + profile_steps) + 2):
            opt.on_step_begin()
            gpu.run(STEP_WORK_S)
        assert type(opt.state).__name__ == "Done", opt.state
        per_step = {}
        for limit_w in (250, 200, 150, 100):
            gpu.set_power_management_limit(limit_w * 1000)
            before = gpu.get_total_energy_consumption()
            gpu.run(STEP_WORK_S)
            per_step[limit_w] = (gpu.get_total_energy_consumption() - before) / 1000.0
        print(json.dumps(per_step))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
