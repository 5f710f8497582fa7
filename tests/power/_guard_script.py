"""Run by test_guard.py in a subprocess: a process that caps a (persistent) simulated GPU, then dies."""

import sys
import time

from lightning_green.testing import SimulatedGPUWorkload, simulated_gpus

GPU = {"curve": "v100-resnet50", "initial_limit_w": 240}


def main() -> None:
    mode, state_dir = sys.argv[1], sys.argv[2]

    if mode == "trainer":
        from lightning.pytorch import Trainer
        from lightning.pytorch.demos.boring_classes import BoringModel

        from lightning_green import PowerLimitTuner

        work = SimulatedGPUWorkload(step_work_s=0.005, state_dir=state_dir, gpu_kwargs=GPU)
        tuner = PowerLimitTuner(warmup_steps=2, profile_steps=20, pl_step_w=25, wait_steps=0)
        trainer = Trainer(
            max_steps=100_000,
            callbacks=[work, tuner],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
        )
        print("training", flush=True)
        trainer.fit(BoringModel())
        print("fit returned", flush=True)
    else:
        from lightning_green.power import LimitGuard

        with simulated_gpus(1, state_dir=state_dir, **GPU) as gpus:
            guard = LimitGuard(gpus, [0])
            guard.arm()
            guard.install_signals()
            guard.set_limit(0, 150_000)
            print("capped", flush=True)
            if mode == "atexit":
                sys.exit(0)  # no disarm, no restore: only the atexit hook can put the limit back
            time.sleep(60)  # mode "signal": wait for SIGTERM (default action: the process dies)


if __name__ == "__main__":  # pytest --doctest-modules imports this file: do nothing then
    main()
