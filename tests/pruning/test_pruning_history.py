import pytest
import torch

from lightning_green.demos import DigitsCNN
from lightning_green.pruning import (
    ChannelPruner,
    ModuleSnapshot,
    find_pruning_state,
    load_pruned,
    rebuild_from_checkpoint,
    replay,
)


def _pruned_pair(ratio=0.5):
    torch.manual_seed(0)
    pruned = DigitsCNN(channels=[8, 16, 32])
    fresh = DigitsCNN(channels=[8, 16, 32])
    fresh.load_state_dict(pruned.state_dict())
    result = ChannelPruner().prune(pruned, pruned.example_input_array, ratio=ratio)
    return pruned, fresh, result


def test_replaying_the_entries_rebuilds_the_same_model():
    pruned, fresh, result = _pruned_pair()
    replay(fresh, fresh.example_input_array, result.entries)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    for a, b in zip(fresh.state_dict().values(), pruned.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same channels kept, not merely the same counts
    x = torch.randn(4, 1, 24, 24)
    assert torch.equal(fresh.eval()(x), pruned.eval()(x))


def test_entries_are_plain_lists():
    _, _, result = _pruned_pair()
    for name, is_out, idxs in result.entries:
        assert type(name) is str and type(is_out) is bool and all(type(i) is int for i in idxs)


def test_lineage_cuts_any_tensor_the_way_the_parameter_was_cut():
    torch.manual_seed(0)
    model = DigitsCNN(channels=[8, 16, 32])
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = ChannelPruner().prune(model, model.example_input_array, ratio=0.5)
    cut_both_ways = model.features[3].weight
    assert cut_both_ways.shape == (8, 4, 3, 3)
    for name, p in model.named_parameters():
        carried = result.lineage.carry(p, old[name])
        assert torch.equal(carried, p.detach()), name
    assert result.lineage.carry(cut_both_ways, torch.zeros(3)) is None


def test_module_snapshot_undoes_a_prune():
    torch.manual_seed(0)
    model = DigitsCNN(channels=[8, 16, 32]).eval()
    model.features[0].weight.requires_grad_(False)
    x = torch.randn(2, 1, 24, 24)
    before = model(x)
    snapshot = ModuleSnapshot(model)
    ChannelPruner(ignored_layers=["features.0"]).prune(model, model.example_input_array, ratio=0.5)
    assert model.features[3].out_channels == 8
    restored = snapshot.restore(model)
    assert "features.3" in restored and "classifier" in restored
    assert model.features[3].out_channels == 16 and model.features[4].num_features == 16
    assert torch.equal(model(x), before)
    assert not model.features[0].weight.requires_grad


def _checkpoint(path, pruned, entries, with_history=True):
    ckpt = {"state_dict": pruned.state_dict(), "epoch": 3}
    if with_history:
        ckpt["callbacks"] = {"StructuredPruning": {"version": 1, "history": [{"entries": entries}]}}
    torch.save(ckpt, path)
    return path


def test_load_pruned_rebuilds_for_inference(tmp_path):
    pruned, _, result = _pruned_pair()
    path = _checkpoint(tmp_path / "p.ckpt", pruned, result.entries)
    assert find_pruning_state(torch.load(path, weights_only=True))["version"] == 1
    model = load_pruned(DigitsCNN(channels=[8, 16, 32]), path).eval()
    x = torch.randn(3, 1, 24, 24)
    assert torch.equal(model(x), pruned.eval()(x))


def test_load_pruned_without_history_is_refused(tmp_path):
    pruned, _, result = _pruned_pair()
    path = _checkpoint(tmp_path / "p.ckpt", pruned, result.entries, with_history=False)
    with pytest.raises(
        ValueError,
        match=r"load_pruned: the checkpoint has weights of other shapes .* saved with `save_weights_only=True`",
    ):
        load_pruned(DigitsCNN(channels=[8, 16, 32]), path)


def test_load_pruned_leaves_a_dense_checkpoint_dense(tmp_path):
    dense = DigitsCNN(channels=[8, 16])
    path = tmp_path / "d.ckpt"
    torch.save({"state_dict": dense.state_dict()}, path)
    model = load_pruned(DigitsCNN(channels=[8, 16]), path)
    assert model.features[0].out_channels == 8
    assert torch.equal(model.classifier.weight, dense.classifier.weight)


def test_rebuild_refuses_a_module_built_with_other_hyperparameters(tmp_path):
    pruned, _, result = _pruned_pair()
    checkpoint = torch.load(_checkpoint(tmp_path / "p.ckpt", pruned, result.entries), weights_only=True)
    with pytest.raises(ValueError, match=r"StructuredPruning: replaying the checkpoint's pruning history did not"):
        rebuild_from_checkpoint(DigitsCNN(channels=[8, 16, 48]), checkpoint, owner="StructuredPruning")
    fresh = DigitsCNN(channels=[8, 16, 32])
    assert rebuild_from_checkpoint(fresh, checkpoint) is True
    assert rebuild_from_checkpoint(fresh, checkpoint) is False  # already cut: nothing to do
