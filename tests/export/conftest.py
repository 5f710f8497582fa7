"""Checkpoints shared by the export tests (module scope: ONNX exports are the slow part, models are tiny)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_green.demos import DigitsCNN
from lightning_green.pruning import ChannelPruner


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # data-dependent control flow: no graph captures it


class Gated(nn.Module):
    """A model torch.export cannot take, blocked in its submodule ``gate``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.lin(x))


def save_ckpt(path, model, history=None):
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    if history is not None:
        ckpt["callbacks"] = {"StructuredPruning": {"version": 1, "history": [{"entries": history}]}}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="package")
def digits_ckpts(tmp_path_factory):
    """A dense DigitsCNN checkpoint and the same model pruned to half its channels, with its pruning history."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    dense = DigitsCNN(channels=[8, 16, 32]).eval()
    pruned = DigitsCNN(channels=[8, 16, 32])
    pruned.load_state_dict(dense.state_dict())
    result = ChannelPruner().prune(pruned, pruned.example_input_array, ratio=0.5)
    return {
        "dense": save_ckpt(root / "dense.ckpt", dense),
        "pruned": save_ckpt(root / "pruned.ckpt", pruned, result.entries),
        "pruned_model": pruned.eval(),
        "root": root,
    }
