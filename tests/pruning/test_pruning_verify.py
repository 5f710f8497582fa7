import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from lightning_green.pruning import ChannelPruner, count_macs_params
from lightning_green.pruning.verify import (
    ModelState,
    Probe,
    describe,
    example_from_spec,
    example_spec,
    probe_from_batch,
    prune_verified,
    quiet_forward,
)


class RunningNorm(nn.Module):
    """A custom norm that updates its running mean in every forward, whatever the mode."""

    def __init__(self, width):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * x.mean(0))
            self.count = self.count + 1  # replaced, not updated in place
        return x - self.running_mean


class HardCoded(nn.Module):
    """Branch ``a`` is reshaped with a hard-coded width (torch-pruning cannot see it); branch ``b`` is free."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.b1, self.b2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        a = self.a1(x).view(-1, 4, 4).relu().reshape(-1, 16)  # breaks when a1 loses outputs
        return self.a2(a) + self.b2(self.b1(x).relu())


class Attention(nn.Module):
    """Hand-written attention that reads its width from attributes."""

    def __init__(self, embed_dim=16, num_heads=2):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.qkv = nn.Linear(8, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, 4)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.embed_dim, dim=-1)
        q, k, v = (y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
        y = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), -1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, self.embed_dim))


class PositionalModel(nn.Module):
    """An embedding plus a registered positional-encoding buffer of the same width."""

    def __init__(self, width=16):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.register_buffer("pe", torch.randn(1, 10, width))
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head((self.embed(x) + self.pe[:, : x.size(1)]).relu())


def _rng_snapshot():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def test_quiet_forward_leaves_batchnorm_stats_modes_and_every_rng_stream_alone():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), RunningNorm(4), nn.Dropout(0.5)).train()
    net[2].eval()  # a mixed-mode model keeps each module's mode
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    torch_state, py_state, np_state = _rng_snapshot()
    out = quiet_forward(net, Probe(torch.ones(8, 3)))
    assert out.shape == (8, 4) and not out.requires_grad
    assert [m.training for m in net] == [True, True, False, True]
    assert all(torch.equal(b, buffers[k]) for k, b in net.named_buffers())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_state)


def test_model_state_puts_back_the_same_objects_bit_identical():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    before = {k: (p, p.detach().clone(), p.grad.clone()) for k, p in net.named_parameters()}
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    state = ModelState(net)
    ChannelPruner().prune(net, torch.zeros(1, 1, 8, 8), ratio=0.5)
    assert net[0].out_channels == 4
    state.restore()
    assert net[0].out_channels == 8 and net[1].num_features == 8 and net[3].in_channels == 8
    for k, p in net.named_parameters():
        obj, value, grad = before[k]
        assert p is obj and torch.equal(p, value) and torch.equal(p.grad, grad)
    assert all(torch.equal(b, buffers[k]) for k, b in net.named_buffers())


def test_model_state_keeps_a_registered_none_bias():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(2, 1, 8, 8)
    state = ModelState(net)
    ChannelPruner().prune(net, torch.zeros(1, 1, 8, 8), ratio=0.5)
    state.restore()
    assert "bias" in net[0]._parameters and net[0].bias is None  # a layer without bias reads `self.bias`
    assert net(x).shape == (2, 4, 4, 4)


def test_a_hard_coded_reshape_is_found_undone_and_left_whole_while_the_rest_is_cut():
    torch.manual_seed(0)
    net, x = HardCoded(), torch.randn(5, 6)
    expected = describe(quiet_forward(net, Probe(x)))
    dense = {k: p.detach().clone() for k, p in net.named_parameters()}
    pruner = ChannelPruner()

    def cut(ignored):
        saved, pruner.left_whole = pruner.left_whole, pruner.left_whole | ignored
        try:
            return pruner.prune(net, x, ratio=0.5)
        finally:
            pruner.left_whole = saved

    done = prune_verified(net, Probe(x), cut, roots=lambda r: [e[0] for e in r.entries], expected=expected)
    assert set(done.left_whole) == {"a1"} and "shape '[-1, 4, 4]' is invalid" in done.left_whole["a1"]
    assert net.a1.out_features == 16 and net.b1.out_features == 8  # only the free branch is cut
    assert torch.equal(net.a1.weight, dense["a1.weight"]) and torch.equal(net.a2.weight, dense["a2.weight"])
    assert net(x).shape == (5, 3) and done.attempts == 4 and done.checks >= 1 and done.check_s > 0


def test_when_nothing_can_be_cut_safely_the_model_is_exactly_as_before():
    net = nn.Sequential(nn.Linear(6, 16), nn.Unflatten(1, (4, 4)), nn.Flatten(), nn.Linear(16, 3))
    objects = list(net.parameters())
    values = [p.detach().clone() for p in objects]
    pruner = ChannelPruner()

    def cut(ignored):
        pruner.left_whole = set(ignored)
        return pruner.prune(net, torch.zeros(1, 6), ratio=0.5)

    done = prune_verified(net, Probe(torch.randn(2, 6)), cut, roots=lambda r: [e[0] for e in r.entries])
    assert done.result.entries == [] and list(done.left_whole) == ["0"] and done.attempts == 2
    assert list(net.parameters()) == objects and all(torch.equal(p, v) for p, v in zip(objects, values, strict=True))


def test_a_coupled_positional_buffer_is_cut_with_its_width():
    net = PositionalModel()
    pe = net.pe.clone()
    result = ChannelPruner().prune(net, torch.zeros(1, 10, 4), ratio=0.25)
    kept = result.lineage.trace(net.embed.weight)[1][0][1]
    assert net.embed.out_features == 12 and net.pe.shape == (1, 10, 12) and "pe" in dict(net.named_buffers())
    assert not isinstance(net.pe, nn.Parameter) and torch.equal(net.pe, pe[..., kept])
    assert net(torch.randn(3, 10, 4)).shape == (3, 10, 2)
    assert [n for n, _ in net.named_parameters()] == ["embed.weight", "embed.bias", "head.weight", "head.bias"]


def test_attention_width_attributes_follow_the_cut():
    net = Attention()
    ChannelPruner(num_heads={"qkv": 2}).prune(net, torch.zeros(1, 5, 8), ratio=0.5)
    assert net.qkv.out_features == 24 and (net.embed_dim, net.head_dim, net.num_heads) == (8, 4, 2)
    assert net(torch.randn(2, 5, 8)).shape == (2, 5, 4)


def test_mac_count_copies_no_weight(monkeypatch):
    # Regression (issue 11, item 9): torch-pruning's counter deep-copied the whole model, weights included.
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))
    expected = count_macs_params(net, torch.zeros(1, 3, 16, 16))
    copies = []
    original = nn.Parameter.__deepcopy__
    monkeypatch.setattr(
        nn.Parameter, "__deepcopy__", lambda self, memo: copies.append(self.device.type) or original(self, memo)
    )
    assert count_macs_params(net, torch.zeros(1, 3, 16, 16)) == expected
    assert "cpu" not in copies  # torch-pruning copies a shadow on the meta device (no storage)


def test_first_batch_example_is_its_first_element_or_the_batch():
    net = nn.Linear(3, 2)
    probe, what = probe_from_batch(net, (torch.ones(4, 3), torch.zeros(4)))
    assert what == "batch[0]" and describe(probe(net)) == ("tensor", (4, 2), "torch.float32")
    probe, what = probe_from_batch(net, torch.ones(4, 3))
    assert what == "the batch"
    with pytest.raises(ValueError, match=r"batch\[0\]: RuntimeError: .*; the batch: TypeError"):
        probe_from_batch(net, (torch.ones(4, 5), torch.zeros(4)))


def test_example_spec_rebuilds_shapes_and_dtypes_as_zeros():
    example = {"ids": torch.ones(2, 7, dtype=torch.long), "extra": (torch.ones(3), 4)}
    rebuilt = example_from_spec(example_spec(example))
    assert describe(rebuilt) == describe(example) and rebuilt["extra"][1] == 4 and not rebuilt["ids"].any()


def test_a_custom_norm_s_running_statistics_are_cut_with_its_width():
    net = nn.Sequential(nn.Linear(4, 8), RunningNorm(8), nn.ReLU(), nn.Linear(8, 2))
    ChannelPruner().prune(net, torch.zeros(1, 4), ratio=0.5)
    assert net[0].out_features == 4 and net[1].running_mean.shape == (4,)
    assert list(dict(net.named_buffers())) == ["1.running_mean", "1.count"] and net(torch.randn(3, 4)).shape == (3, 2)
