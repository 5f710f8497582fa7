"""Run by test_structured_pruning_hf.py in a subprocess: the DDP check of _ddp_pruning_script.py on a tiny HF Llama.

Random importance seeded per rank: the ranks agree only if rank 0's cut is broadcast and replayed (by the LLM
pruner's history entries; a decoder layer goes at the first prune, chosen on rank 0), and stay identical only if the
DDP wrapper was rebuilt. Writes OUT/rank<r>.pt.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import seed_everything  # noqa: E402

from lightning_green import StructuredPruning  # noqa: E402
from tests.callbacks._ddp_pruning_script import fit_ddp  # noqa: E402
from tests.pruning.hf_models import TinyLM  # noqa: E402


def main(out: Path) -> None:
    seed_everything(0, verbose=False)  # the model's initial weights, the same on every rank
    pruning = StructuredPruning(
        importance="random",
        pruning_ratio=0.5,
        prune_layers=1,
        importance_batches=1,
        start_epoch=1,
        end_epoch=2,
        verbose=False,
    )
    fit_ddp(out, pruning, TinyLM("llama"), limit_train_batches=2, limit_val_batches=0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
