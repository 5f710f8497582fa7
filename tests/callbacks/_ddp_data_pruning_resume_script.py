"""Run by test_data_pruning.py in a subprocess (``strategy="ddp"`` re-launches this file once per extra rank).

``OUT STEP full``: fit 3 epochs on 2 ranks with losses that move between epochs, a checkpoint every STEP steps.
``OUT STEP resume``: the same fit resumed from ``step=STEP.ckpt``. Each writes OUT/<phase>/rank<r>.pt (kept sets,
scores, batch counts) through the Dump callback of the plain DDP script.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_green import DataPruning
from tests.callbacks._ddp_data_pruning_script import Dump, Model, ddp_trainer


class Drifting(Model):
    def difficulty(self, x):
        return x[:, 0] if self.current_epoch == 0 else 4.0 - x[:, 0]  # losses that move between epochs


def main(out: Path, step: int, phase: str) -> None:
    seed_everything(0, verbose=False)
    (out / phase).mkdir(parents=True, exist_ok=True)
    callbacks = [DataPruning(prune_ratio=0.5, anneal_fraction=0.0), Dump(out / phase)]
    if phase == "full":
        checkpoint = ModelCheckpoint(dirpath=out / "ck", save_top_k=-1, every_n_train_steps=step, filename="{step}")
        callbacks.append(checkpoint)
    trainer = ddp_trainer(out, callbacks)
    trainer.fit(Drifting(), ckpt_path=None if phase == "full" else str(out / "ck" / f"step={step}.ckpt"))
    if torch.distributed.is_initialized():  # see _ddp_data_pruning_script.py
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
