import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from lightning_green import GreenRuntimeError
from lightning_green.demos import DigitsCNN
from lightning_green.pruning import ChannelPruner, count_macs_params


class ResidualNet(nn.Module):
    """Residual add, depthwise + pointwise, grouped conv, concatenation, BatchNorm, LayerNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.a = nn.Conv2d(32, 8, 1)
        self.b = nn.Conv2d(32, 8, 1)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = h + F.relu(self.b1(self.c1(h)))
        h = self.grouped(self.pw(self.dw(h)))
        h = torch.cat([self.a(h), self.b(h)], 1).mean((2, 3))
        return self.fc(self.ln(h))


class MHABlock(nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.emb = nn.Linear(8, d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        x = self.emb(x)
        a = self.ln1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x)


class Attention(nn.Module):
    """Hand-written causal attention with a fused qkv projection (timm/GPT style)."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class TinyGPT(nn.Module):
    def __init__(self, vocab=20, d=32, heads=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(self.lnf(x))


def test_residual_depthwise_grouped_concat_layernorm_prune_and_still_run():
    net = ResidualNet().train()
    x = torch.randn(2, 3, 8, 8)
    dense_macs, _ = count_macs_params(net, x)
    result = ChannelPruner().prune(net, x, ratio=0.5)
    assert net(x).shape == (2, 10)
    assert net.stem.out_channels == net.c1.out_channels == net.dw.out_channels == 8  # residual: cut alike
    assert net.dw.groups == net.dw.in_channels == 8  # depthwise stays depthwise
    assert net.grouped.out_channels == 16 and net.grouped.groups == 4
    assert net.ln.normalized_shape == (net.a.out_channels + net.b.out_channels,)  # concatenation
    assert net.fc.out_features == 10  # the output layer is never cut
    assert result.macs < dense_macs / 2
    assert net.training  # torch-pruning's eval() during tracing is undone


def test_multihead_attention_is_cut_in_multiples_of_its_heads():
    net = MHABlock(d=32, heads=4)
    x = torch.randn(2, 6, 8)
    ChannelPruner().prune(net, x, ratio=0.3)
    assert net.attn.embed_dim < 32
    assert net.attn.embed_dim % 4 == 0
    assert net.attn.head_dim * 4 == net.attn.embed_dim
    assert net(x).shape == (2, 6, 5)


def test_hand_written_attention_loses_the_same_dims_in_every_head():
    net = TinyGPT(d=32, heads=4)
    x = torch.randint(0, 20, (2, 6))
    result = ChannelPruner(num_heads={"attn.qkv": 4}).prune(net, x, ratio=0.5)
    assert net(x).shape == (2, 6, 20)
    assert net.head.out_features == 20
    out = net.attn.qkv.out_features
    assert out < 96 and out % 12 == 0  # q, k, v × 4 heads of equal size
    _, steps = result.lineage.trace(net.attn.qkv.weight)
    kept = torch.arange(96)
    for dim, keep in steps:
        if dim == 0:
            kept = kept[keep]
    per_head = kept.reshape(12, -1) % 8  # 12 chunks (3 projections × 4 heads) of the original head size 8
    assert (per_head == per_head[0]).all()


def test_output_layer_is_protected_and_frozen_modules_keep_every_channel():
    model = DigitsCNN(channels=[8, 16, 32])
    model.features[3].requires_grad_(False)  # frozen conv in the middle
    x = model.example_input_array
    ChannelPruner().prune(model, x, ratio=0.5)
    assert model.classifier.out_features == 10
    assert tuple(model.features[3].weight.shape) == (16, 8, 3, 3)  # neither its outputs nor its inputs
    assert model.features[0].out_channels == 8  # the group feeding the frozen conv is left alone
    assert not model.features[3].weight.requires_grad
    assert model.features[7].out_channels == 16  # the rest is cut


def test_ignored_layers_take_names_and_patterns():
    model = DigitsCNN(channels=[8, 16, 32])
    ChannelPruner(ignored_layers=["features.[07]"]).prune(model, model.example_input_array, ratio=0.5)
    assert model.features[0].out_channels == 8
    assert model.features[7].out_channels == 32
    assert model.features[3].out_channels == 8


def test_magnitude_removes_the_smallest_channels():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with torch.no_grad():
        net[0].weight[[1, 4, 6]] *= 1e-3
        survivors = net[0].weight[[0, 2, 3, 5, 7]].clone()
    result = ChannelPruner(importance="magnitude-l1").prune(net, torch.zeros(1, 1, 8, 8), ratio=3 / 8)
    assert torch.equal(net[0].weight, survivors)
    assert result.entries == [["0", True, [1, 4, 6]]]


def test_taylor_ranks_by_weight_times_gradient():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    grads = {"0.weight": torch.ones(6, 4), "0.bias": torch.ones(6)}
    grads["0.weight"][[2, 3]] = 0.0  # zero sensitivity: cut first, however large the weights
    grads["0.bias"][[2, 3]] = 0.0
    with torch.no_grad():
        net[0].weight[[2, 3]] = 10.0
    result = ChannelPruner(importance="taylor").prune(net, torch.zeros(1, 4), ratio=2 / 6, gradients=grads)
    assert result.entries[0][2] == [2, 3]
    assert all(p.grad is None for p in net.parameters())


def test_taylor_without_gradients_on_the_prunable_layers_is_refused():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(GreenRuntimeError, match=r"\(importance='taylor'\): .*no gradient reached the layers"):
        ChannelPruner(importance="taylor").prune(
            net, torch.zeros(1, 4), ratio=0.5, gradients={"2.weight": torch.ones(2, 6)}
        )
    assert net[0].out_features == 6


def test_target_macs_is_reached_from_below_in_few_steps():
    model = DigitsCNN()
    x = model.example_input_array
    dense, _ = count_macs_params(model, x)
    result = ChannelPruner().prune(model, x, target_macs=dense / 2)
    assert result.reached
    assert 0.35 * dense < result.macs <= 0.5 * dense
    assert result.macs == count_macs_params(model, x)[0]


def test_max_layer_ratio_counts_from_the_dense_width():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.zeros(1, 4)
    dense = {"0": [100, 4], "2": [8, 8]}  # layer 0 already lost 92 % of a (pretend) dense width of 100
    ChannelPruner(max_layer_ratio=0.9).prune(net, x, ratio=0.5, dense_channels=dense)
    assert net[0].out_features == 8
    assert net[2].out_features == 4


def test_channels_last_layout_survives():
    model = DigitsCNN(channels=[8, 16, 32], channels_last=True)
    ChannelPruner().prune(model, model.example_input_array, ratio=0.5)
    w = model.features[7].weight
    assert w.shape[0] == 16 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ignored_layers": ["features.9", "nothing.*"]}, r"`ignored_layers` must be .*'features.9' matches none"),
        ({"num_heads": {"features.1": 2}}, r"`num_heads` must be keyed by names of nn.Linear .*'features.1'"),
        ({"importance": "bn-scale"}, r"importance='bn-scale'\): .*no BatchNorm"),
    ],
)
def test_settings_that_do_not_fit_the_model_are_refused(kwargs, match):
    model = DigitsCNN(channels=[8, 16])
    if kwargs.get("importance") == "bn-scale":
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=match):
        ChannelPruner(**kwargs).check_module(model)


def test_round_to_must_respect_attention_heads():
    with pytest.raises(ValueError, match=r"round_to=6\): `round_to` must be a multiple of the 4 heads"):
        ChannelPruner(round_to=6).check_module(MHABlock())
    assert ChannelPruner().effective_round_to(MHABlock(heads=4)) == 4
    assert ChannelPruner(round_to=8).effective_round_to(MHABlock(heads=4)) == 8


def test_round_to_applies_to_the_final_prune_and_heads_to_every_prune():
    cnn = DigitsCNN(channels=[8, 16])
    assert ChannelPruner(round_to=8).effective_round_to(cnn, final=False) is None
    assert ChannelPruner(round_to=8).effective_round_to(cnn, final=True) == 8
    assert ChannelPruner(round_to=8).effective_round_to(MHABlock(heads=4), final=False) == 4
    model = DigitsCNN(channels=[24, 48, 96])
    x = model.example_input_array
    ChannelPruner(round_to=8).prune(model, x, ratio=0.1, final=False)
    assert [model.features[i].out_channels for i in (0, 3, 7)] == [21, 43, 86]  # not floored to multiples of 8
    ChannelPruner(round_to=8).prune(model, x, ratio=0.1, final=True)
    assert [model.features[i].out_channels for i in (0, 3, 7)] == [16, 32, 72]


def test_tied_embedding_and_output_weights_stay_tied():
    net = TinyGPT(d=32, heads=4)
    net.head.weight = net.wte.weight
    x = torch.randint(0, 20, (2, 6))
    ChannelPruner(num_heads={"attn.qkv": 4}).prune(net, x, ratio=0.5)
    assert net.head.weight is net.wte.weight
    assert net.wte.weight.shape == (20, 16)
    assert net(x).shape == (2, 6, 20)


def test_cutting_the_residual_width_keeps_each_head_s_dimensions_together():
    from lightning_green.demos import TinyGPT as DemoGPT

    torch.manual_seed(0)
    model = DemoGPT(d_model=64, n_layers=1, n_heads=4)
    x = torch.zeros(1, 32, dtype=torch.long)
    pruner = ChannelPruner(owner="test", importance="magnitude-l2", round_to=8)
    dense_macs, _ = count_macs_params(model, x)
    result = pruner.prune(model, x, target_macs=dense_macs / 1.5, dense_channels=pruner.channels(model, x))
    attn = model.blocks[0].attn
    assert attn.embed_dim < 64  # the width was cut
    # Which original rows does each new head hold? All must come from one original head (16 dims each).
    original, steps = result.lineage.trace(attn.in_proj_weight)
    rows = torch.arange(original.shape[0])
    for dim, keep in steps:
        if dim == 0:
            rows = rows[keep]
    new = attn.embed_dim
    for block in (rows[:new], rows[new : 2 * new] - 64, rows[2 * new :] - 128):  # q, k, v
        assert [sorted(set((r // 16).tolist())) for r in block.view(4, attn.head_dim)] == [[0], [1], [2], [3]]
    assert torch.equal(rows[:new] + 64, rows[new : 2 * new])  # q and k keep the same dimensions
    # The lineage carries optimizer moments the same way: carrying the old weight gives the new one (q is also
    # rescaled by sqrt(new head_dim / old head_dim), as the layer's score scale changes).
    carried = result.lineage.carry(attn.in_proj_weight, original.detach())
    assert torch.equal(carried[new:], attn.in_proj_weight[new:].detach())
    scale = (attn.head_dim / 16) ** 0.5
    torch.testing.assert_close(carried[:new] * scale, attn.in_proj_weight[:new].detach())


class _AttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0])


def _dead_dims_net():
    torch.manual_seed(0)
    net = _AttnNet().eval()
    with torch.no_grad():
        # The residual dims 0-3 (all of "head 0's" positions) carry nothing: zero in, ignored out.
        net.inp.weight[:4] = 0
        net.inp.bias[:4] = 0
        net.out.weight[:, :4] = 0
        # Inside each head (4 dims), two q/k pairs and two v dims are dead: cutting them changes nothing.
        w, b, e = net.attn.in_proj_weight, net.attn.in_proj_bias, 8
        for rows in ([0, 1, 4, 5], [2, 3, 6, 7]):
            qk, v = (rows, None) if rows[0] == 0 else (None, rows)
            for r in qk or []:
                w[r], w[e + r], b[r], b[e + r] = 0, 0, 0, 0
            for r in v or []:
                w[2 * e + r], b[2 * e + r] = 0, 0
                net.attn.out_proj.weight[:, r] = 0
    return net


@pytest.mark.parametrize("how", ["linear root", "attention alias, nested sessions"])
def test_an_uneven_cut_of_the_width_drops_each_head_s_weakest_dimensions_and_keeps_the_function(how):
    from lightning_green.pruning.graph import build_graph, pruning_session

    net = _dead_dims_net()
    x = torch.randn(2, 5, 4)
    before = net(x)
    alias = tp.prune_multihead_attention_out_channels
    with pruning_session(net):
        if how == "linear root":
            graph = build_graph(net, x)
            graph.get_pruning_group(net.inp, tp.prune_linear_out_channels, [0, 1, 2, 3]).prune()
        else:  # torch-pruning's public alias still finds the group, and an inner session changes nothing
            with pruning_session(net):
                graph = build_graph(net, x)
                group = graph.get_pruning_group(net.attn, tp.prune_multihead_attention_out_channels, [0, 1, 2, 3])
                assert len(group) > 1
                group.prune()
    assert (net.attn.embed_dim, net.attn.head_dim) == (4, 2)
    torch.testing.assert_close(net(x), before)
    assert tp.prune_multihead_attention_out_channels is alias  # the session put torch-pruning's alias back


def test_heads_keep_a_dimension_that_only_its_bias_carries():
    from torch_pruning.pruner.function import MultiheadAttentionPruner

    from lightning_green.pruning.graph import regroup_heads

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    with torch.no_grad():
        mha.in_proj_weight[0:2] = 0.01  # head 0's q rows 0 and 1: weak weights ...
        mha.in_proj_bias[:8] = torch.arange(8) * 1e-3  # distinct, small
        mha.in_proj_bias[0] = 100.0  # ... but row 0 carries a large bias, so it stays
        mha.in_proj_weight[2:4] *= 10
    before = mha.in_proj_bias[:8].clone()
    regroup_heads(MultiheadAttentionPruner(), mha, [0, 1, 2, 3])  # two of head 0's four q/k pairs go
    kept_q_bias = mha.in_proj_bias[4:6] / (4 / 8) ** 0.5  # positions 4, 5 hold head 0's survivors (q rescaled)
    torch.testing.assert_close(kept_q_bias[0], before[0])  # row 0 kept (first of head 0's survivors)
    assert not torch.isclose(kept_q_bias, before[1]).any()  # row 1 (weak, no bias) dropped


def test_attention_torch_pruning_cannot_cut_is_refused_up_front():
    cross = nn.Module()
    cross.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=6)
    with pytest.raises(ValueError, match=r"`ignored_layers` must be a list that names nn.MultiheadAttention 'attn'"):
        ChannelPruner().check_module(cross)
    ChannelPruner(ignored_layers=["attn"]).check_module(cross)  # ignored: fine
    zero = nn.Module()
    zero.attn = nn.MultiheadAttention(8, 2, add_zero_attn=True)
    with pytest.raises(ValueError, match=r"cannot prune this model: .*'attn' has add_zero_attn=True"):
        ChannelPruner(ignored_layers=["attn"]).check_module(zero)


class KeywordNet(nn.Module):
    """Takes keyword inputs, like a Hugging Face model called with a batch dict."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, pixels, scale=None):
        return self.conv(pixels) if scale is None else self.conv(pixels) * scale


def test_macs_are_per_sample_for_keyword_inputs_and_forward_fn():
    # torch-pruning divides by len() of the first positional input: a dict batch used to count as one sample, and
    # an input handed to forward_fn as many samples as it has elements.
    net = KeywordNet()
    x = torch.zeros(8, 3, 6, 6)
    one, _ = count_macs_params(net, x[:1])
    assert one == 8 * 3 * 9 * 36 + 8 * 36  # multiply-adds + bias, one sample
    assert count_macs_params(net, x)[0] == one
    assert count_macs_params(net, {"pixels": x})[0] == one
    assert count_macs_params(net, {"pixels": x, "scale": torch.ones(8, 1, 1, 1)})[0] == one
    run = lambda m, batch: m(batch[0])  # noqa: E731
    assert count_macs_params(net, (x, torch.zeros(8)), forward_fn=run)[0] == one
    assert count_macs_params(net, (x[:1], torch.zeros(1)), forward_fn=run)[0] == one
