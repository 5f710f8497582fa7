"""Public test helpers: a simulated GPU that Zeus (and so every lightning-green callback) can measure and tune."""

from lightning_green.testing.simulated_gpu import (
    CURVES,
    V100_RESNET50,
    PowerCurve,
    SimClock,
    SimulatedGPU,
    SimulatedGPUs,
    SimulatedGPUWorkload,
    installed_simulated_gpus,
    simulated_gpus,
)

__all__ = [
    "CURVES",
    "V100_RESNET50",
    "PowerCurve",
    "SimClock",
    "SimulatedGPU",
    "SimulatedGPUWorkload",
    "SimulatedGPUs",
    "installed_simulated_gpus",
    "simulated_gpus",
]
