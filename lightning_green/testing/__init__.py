"""Public test helpers: a simulated GPU that Zeus (and so every lightning-green callback) can measure and tune."""

from lightning_green.testing.simulated_gpu import SimulatedGPU, SimulatedGPUs, simulated_gpus

__all__ = ["SimulatedGPU", "SimulatedGPUs", "simulated_gpus"]
