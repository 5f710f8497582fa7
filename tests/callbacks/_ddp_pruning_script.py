"""Run by test_structured_pruning.py in a subprocess: strategy="ddp" re-launches this file once per extra rank.

Each rank prunes with *random* importance seeded differently per rank, so ranks agree only if rank 0's decision is
broadcast; training continues after the prunes on different data shards, so parameters stay identical only if the
DDP wrapper was rebuilt around the new parameters. Each rank writes its parameters and history to OUT/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_green import StructuredPruning
from lightning_green.demos import DigitsCNN, DigitsDataModule


class PerRankSeed(Callback):
    def on_fit_start(self, trainer, pl_module):
        torch.manual_seed(1000 + trainer.global_rank)


class Dump(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
        state = {n: p.detach().cpu().clone() for n, p in pl_module.state_dict().items()}
        torch.save(
            {"state": state, "history": pruning.history, "speedup": pruning.speedup},
            self.out / f"rank{trainer.global_rank}.pt",
        )


def fit_ddp(out: Path, pruning: StructuredPruning, model, datamodule=None, **trainer_kwargs) -> None:
    """Fit ``model`` on 2 CPU ranks with ``pruning`` between PerRankSeed and Dump (3 epochs, no logs)."""
    seed_everything(0, verbose=False)
    trainer = Trainer(
        default_root_dir=out,
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[PerRankSeed(), pruning, Dump(out)],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule)
    # Lightning destroys only NCCL groups at exit; a gloo group left to interpreter finalization can abort the
    # process after a successful fit (pytorch/pytorch#190489).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(out: Path) -> None:
    seed_everything(0, verbose=False)  # the model's initial weights, the same on every rank
    fit_ddp(
        out,
        StructuredPruning(importance="random", pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False),
        DigitsCNN(channels=[8, 16], channels_last=False),
        DigitsDataModule(batch_size=16),
        limit_train_batches=3,
        limit_val_batches=1,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
