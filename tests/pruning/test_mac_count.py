"""MACs per sample do not depend on the batch they are counted on."""

import pytest
import torch
from torch import nn

from lightning_green.pruning.graph import count_macs_params


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)),
    ],
)
def test_macs_per_sample_are_the_same_for_any_batch(make):
    # torch-pruning adds a Linear's bias once per call: per sample, a batch of 16 counted fewer MACs than one sample.
    torch.manual_seed(0)
    model = make()
    shape = (8,) if isinstance(model[0], nn.Linear) else (1, 8, 8)
    one = count_macs_params(model, torch.zeros(1, *shape))
    assert count_macs_params(model, torch.zeros(16, *shape)) == one


def test_a_linear_layer_over_a_sequence_counts_its_bias_at_every_position():
    macs, _ = count_macs_params(nn.Linear(4, 2), torch.zeros(1, 5, 4))  # one sample of 5 positions
    assert macs == 5 * (4 * 2 + 2)
