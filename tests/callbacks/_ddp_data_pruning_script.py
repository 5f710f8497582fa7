"""Run by test_data_pruning.py in a subprocess: strategy="ddp" re-launches this file once per extra rank.

Each rank records the sample indices it trained on per epoch and the kept set its DataPruning planned, and writes
them with the final scores to OUT/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_green import DataPruning, reduce_sample_losses

N = 37


class Indexed(Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return torch.tensor([float(i % 5)]), i


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen = []
        self.batches = []

    def train_dataloader(self):
        return DataLoader(Indexed(), batch_size=4, shuffle=True)

    def training_step(self, batch, batch_idx):
        x, idx = batch
        while len(self.seen) <= self.current_epoch:  # a resumed run starts at a later epoch
            self.seen.append([])
            self.batches.append(0)
        self.batches[self.current_epoch] += 1
        self.seen[self.current_epoch].extend(idx.tolist())
        # Rank-dependent losses for the same sample would make scores differ if they were not gathered.
        return reduce_sample_losses(self, self.difficulty(x) + self.layer(x)[:, 0] * 0.0)

    def difficulty(self, x):
        """Each sample's loss (before the zero-weighted trainable term)."""
        return x[:, 0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Dump(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.kept = []

    def on_train_epoch_start(self, trainer, pl_module):
        dp = next(cb for cb in trainer.callbacks if isinstance(cb, DataPruning))
        self.kept.append(dp.plan(trainer.current_epoch).order.tolist())

    def on_train_end(self, trainer, pl_module):
        dp = next(cb for cb in trainer.callbacks if isinstance(cb, DataPruning))
        torch.save(
            {
                "seen": pl_module.seen,
                "batches": pl_module.batches,
                "kept": self.kept,
                "scores": dp.scores.values.tolist(),
                "n": N,
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )


def ddp_trainer(out: Path, callbacks: list, **kwargs) -> Trainer:
    """Two CPU ranks under ``strategy="ddp"``, three epochs, quiet (also used by the resume script)."""
    return Trainer(
        default_root_dir=out,
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def main(out: Path, keep_steps: bool = False) -> None:
    seed_everything(0, verbose=False)
    callbacks = [DataPruning(prune_ratio=0.5, anneal_fraction=0.0, keep_steps=keep_steps), Dump(out)]
    ddp_trainer(out, callbacks, enable_checkpointing=False).fit(Model())
    # Lightning destroys only NCCL groups at exit; a gloo group left to interpreter finalization can abort the
    # process after a successful fit (pytorch/pytorch#190489).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), keep_steps=sys.argv[2:] == ["keep_steps"])
