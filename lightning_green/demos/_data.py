"""What the demo datamodules share: their splits and the dataloaders over them."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_green._internal.validation import InvalidArgumentError

__all__ = ["SplitDataModule", "check_demo_data"]

#: What a demo datamodule's batches are (its ``serves``), in words for a message.
BATCH_KINDS = {
    "images": "(image, label) pairs",
    "token pairs": "(x, y) token-id windows",
    "token dicts": "Hugging Face dicts of token ids (input_ids, attention_mask, labels)",
}


class SplitDataModule(pl.LightningDataModule):
    """A datamodule whose ``setup`` fills ``train_set``, ``val_set`` and (optionally) ``test_set``.

    Test and predict read ``test_set``, or ``val_set`` where the data has no separate test split.
    """

    batch_size: int
    num_workers: int
    #: What its batches are: a key of :data:`BATCH_KINDS` (demo models check it in ``setup``).
    serves: str

    def __init__(self) -> None:
        super().__init__()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        assert ds is not None, "call setup() first"
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _held_out(self) -> Dataset | None:
        return self.test_set if self.test_set is not None else self.val_set

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches (the validation split where there is no test split)."""
        return self._loader(self._held_out(), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test batches, for prediction."""
        return self._loader(self._held_out(), shuffle=False)


def size_example_to_windows(module: pl.LightningModule, context_arg: str, context: int) -> None:
    """Size a language model's token-id ``example_input_array`` like its datamodule's windows (``seq_len``).

    Raises:
        InvalidArgumentError: The windows are longer than the model's context (``context_arg=context``).
    """
    datamodule: Any = getattr(module.trainer, "datamodule", None)
    seq_len = getattr(datamodule, "seq_len", None)
    if not isinstance(seq_len, int):
        return
    if seq_len > context:
        raise InvalidArgumentError(
            f"{type(module).__name__}({context_arg}={context}): the datamodule's seq_len={seq_len} is longer than the "
            f"model's context; raise {context_arg} to >= {seq_len} or lower seq_len."
        )
    module.example_input_array = torch.zeros(1, seq_len, dtype=torch.long)


def check_demo_data(module: pl.LightningModule, reads: tuple[str, ...], data: str) -> None:
    """Refuse a demo datamodule whose batches ``module`` cannot read, before any batch reaches it.

    A demo model on another demo's data (e.g. ``--model TinyGPT`` with the default digits data) otherwise fails deep
    inside torch (``embedding`` given float images). A datamodule without ``serves`` (the user's own) is not checked.

    Raises:
        InvalidArgumentError: The datamodule serves batches of another kind than ``reads`` (``data`` names one that
            serves the right kind).
    """
    datamodule: Any = getattr(module.trainer, "datamodule", None)
    serves = getattr(datamodule, "serves", None)
    if serves not in BATCH_KINDS or serves in reads:
        return
    name = type(module).__name__
    wanted = " or ".join(BATCH_KINDS[kind] for kind in reads)
    raise InvalidArgumentError(
        f"{name}: the datamodule {type(datamodule).__name__} serves {BATCH_KINDS[serves]}, and {name} reads {wanted}; "
        f"give it {data}."
    )
