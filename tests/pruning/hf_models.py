"""Tiny Hugging Face causal LMs (2 layers, width 64, vocab 256) and a LightningModule around one, for pruning tests."""

from __future__ import annotations

import os

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2")


def tiny_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """lightning_green.testing's tiny 2-layer causal LM of ``family`` (width 64, MLP 128, 4 query / 2 KV heads where
    the family has GQA, Qwen2 with tied embeddings, vocabulary 256)."""
    from lightning_green.testing.hf import tiny_causal_lm

    return tiny_causal_lm(family, seed=seed)


def token_data(n: int = 64, length: int = 16, seed: int = 0) -> DataLoader:
    """Sequences that repeat a short random pattern (learnable), as ``{"input_ids": ...}`` batches."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(3, 256, (n, 4), generator=g)
    ids = base.repeat(1, length // 4)
    return DataLoader(
        TensorDataset(ids), batch_size=8, collate_fn=lambda rows: {"input_ids": torch.stack([r[0] for r in rows])}
    )


class TinyLM(LightningModule):
    """A LightningModule around a tiny HF causal LM; no ``example_input_array`` (the pruner makes its own)."""

    def __init__(self, family: str = "llama", lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = tiny_lm(family)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> DataLoader:
        return token_data()

    def val_dataloader(self) -> DataLoader:
        return token_data(n=16, seed=1)
