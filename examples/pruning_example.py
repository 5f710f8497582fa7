"""Train the digits demo with StructuredPruning, then reload the pruned checkpoint for inference.

    python examples/pruning_example.py [--quick]

The model loses whole channels during training (goal 2.5x fewer MACs; about 2.8x once ``round_to=8`` rounds the
kept channels down), the optimizer keeps its Adam moments for the surviving channels, and the checkpoint carries the
pruning history, so a fresh DigitsCNN is rebuilt to the pruned shape by ``load_pruned``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_green import EnergyMonitor, StructuredPruning
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.pruning import count_macs_params, load_pruned


def main(quick: bool = False) -> None:
    seed_everything(0)
    root = Path(tempfile.mkdtemp(prefix="pruning-example-"))
    pruning = StructuredPruning(
        target_speedup=2.5, importance="taylor", schedule="cubic", start_epoch=1, end_epoch=3, round_to=8
    )
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=4 if quick else 8,
        limit_train_batches=5 if quick else None,
        callbacks=[EnergyMonitor(print_summary=False), pruning, checkpoint],
        enable_progress_bar=False,
    )
    data = DigitsDataModule()
    trainer.fit(DigitsCNN(), data)
    print(f"pruning history: {len(pruning.history)} prunes, {pruning.speedup:.2f}x fewer MACs than dense")

    model = load_pruned(DigitsCNN(), root / "last.ckpt").eval()
    x = model.example_input_array
    macs, params = count_macs_params(model, x)
    print(f"reloaded: {macs / 1e6:.1f}M MACs, {params / 1e3:.1f}k parameters")
    batch = torch.randn(64, 1, 24, 24)
    dense = DigitsCNN().eval()
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    with torch.no_grad():
        for _ in range(21):  # alternate, take medians: a busy machine slows both alike
            for name, m in (("dense", dense), ("pruned", model)):
                t = time.perf_counter()
                m(batch)
                times[name].append(time.perf_counter() - t)
    t_dense, t_pruned = (statistics.median(times[k][1:]) for k in ("dense", "pruned"))
    print(f"one batch of 64: dense {1000 * t_dense:.1f} ms, pruned {1000 * t_pruned:.1f} ms")
    (result,) = trainer.test(model, data, verbose=False)
    print(f"test accuracy of the pruned model: {result['test_acc']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few batches per epoch")
    main(parser.parse_args().quick)
