"""Which GPU (Zeus index) a rank trains on — shared by the callbacks that measure or tune it."""

from __future__ import annotations

import lightning.pytorch as pl

__all__ = ["rank_gpu_index"]


def rank_gpu_index(trainer: pl.Trainer) -> int | None:
    """The Zeus GPU index of this rank's training device, or ``None`` when it trains on none.

    A CUDA run uses its CUDA device. A CPU run uses GPU ``local_rank`` only when *simulated* GPUs are installed at
    Zeus's seam (:mod:`lightning_green.testing`), so dry runs on a laptop measure and tune a simulated device; a
    CPU run on a machine with real GPUs never picks one.
    """
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return device.index or 0
    import zeus.device.gpu as zeus_gpu

    gpus = zeus_gpu._gpus  # read only, never initialised here: Zeus's process-wide GPU singleton
    if getattr(gpus, "simulated", False) and trainer.local_rank < len(gpus):  # type: ignore[arg-type]
        return trainer.local_rank
    return None
