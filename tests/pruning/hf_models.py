"""Tiny Hugging Face causal LMs (2 layers, width 64, vocab 256) built from configs, and a LightningModule around one."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMON: dict[str, Any] = {"vocab_size": 256, "num_hidden_layers": 2, "max_position_embeddings": 64}
GQA: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2")


def tiny_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised 2-layer causal LM of ``family`` (GQA with 4 query / 2 KV heads where it has GQA)."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**GQA, **COMMON))
    elif family == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**GQA, **COMMON))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**GQA, tie_word_embeddings=True, **COMMON))
    elif family == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**GQA, head_dim=16, tie_word_embeddings=True, **COMMON))
    elif family == "phi3":
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**GQA, pad_token_id=0, bos_token_id=1, eos_token_id=2, **COMMON))
    elif family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
        )
        model = tf.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(family)
    return model


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
