"""export(format="hf") of a module holding a frozen teacher and the (pruned) student saves the student."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from lightning_green.export import ExportError, export_model

tf = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _llama(intermediate: int = 64) -> nn.Module:
    cfg = tf.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=intermediate,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(cfg)


class _Distill(nn.Module):
    def __init__(self, frozen_teacher: bool = True) -> None:
        super().__init__()
        self.teacher = _llama(64).requires_grad_(not frozen_teacher)  # registered first
        self.student = _llama(32)  # as pruned
        self.example_input_array = torch.randint(0, 64, (1, 12))

    def forward(self, input_ids):
        return self.student(input_ids=input_ids).logits


def test_hf_export_saves_the_trainable_student_not_the_frozen_teacher(tmp_path):
    module = _Distill().eval()
    res = export_model(module, tmp_path / "hf", "hf", verbose=False)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["intermediate_size"] == 32
    assert res.params == sum(p.numel() for p in module.student.parameters())
    assert all(c.ok for c in res.checks)


def test_hf_export_of_two_trainable_models_asks_which(tmp_path):
    with pytest.raises(
        ExportError,
        match=r"_Distill holds 2 trainable Hugging Face models \('teacher', 'student'\), so which one to save is "
        r"ambiguous .*pass that model itself, e\.g\. export_model\(model\.student, \.\.\.\)",
    ):
        export_model(_Distill(frozen_teacher=False).eval(), tmp_path / "hf", "hf", verbose=False)
