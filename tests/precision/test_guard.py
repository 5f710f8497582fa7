import pytest
import torch
from torch import nn

from lightning_green.precision.guard import BufferSnapshot, FallbackTracker, drop_grads, grads_nonfinite


@pytest.mark.parametrize(
    ("values", "bad"),
    [([1.0, 2.0], False), ([1.0, float("nan")], True), ([float("-inf"), 0.0], True), ([3e38, -3e38], False)],
)
def test_grads_nonfinite(values, bad):
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    p.grad, q.grad = torch.tensor(values), torch.ones(3)
    assert grads_nonfinite([p, q, nn.Parameter(torch.zeros(1))]) is bad


def test_no_grads_is_finite():
    assert grads_nonfinite([nn.Parameter(torch.zeros(1))]) is False


def test_dropped_grads_leave_weights_and_adam_state_untouched():
    layer = nn.Linear(3, 2)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1, weight_decay=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    before = [p.detach().clone() for p in layer.parameters()]
    steps = [opt.state[p]["step"].item() for p in layer.parameters()]
    layer(torch.full((1, 3), float("nan"))).sum().backward()
    drop_grads(layer.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    assert [opt.state[p]["step"].item() for p in layer.parameters()] == steps


def test_buffer_snapshot_undoes_a_poisoned_batchnorm_update():
    bn = nn.BatchNorm1d(2)
    bn(torch.randn(8, 2))
    snap = BufferSnapshot(bn)
    snap.take()
    mean, tracked = bn.running_mean.clone(), int(bn.num_batches_tracked)
    bn(torch.full((8, 2), float("nan")))
    assert bn.running_mean.isnan().all()
    snap.restore()
    assert torch.equal(bn.running_mean, mean) and int(bn.num_batches_tracked) == tracked


def test_buffer_snapshot_follows_replaced_buffers():
    bn = nn.BatchNorm1d(2)
    snap = BufferSnapshot(bn)
    snap.take()
    bn.running_mean = torch.ones(2)  # e.g. a prune swapped the tensor
    snap.take()
    bn.running_mean.fill_(5.0)
    snap.restore()
    assert bn.running_mean.tolist() == [1.0, 1.0]


def test_tracker_cooldown_retry_and_lock():
    t = FallbackTracker(overflow_patience=3, cooldown_steps=2, max_fallbacks=2)
    assert t.record(4, "bf16-mixed", bad=True, overflow=False) == "non-finite loss or gradients"
    assert [t.forced_fp32(s) for s in (5, 6, 7)] == [True, True, False]
    assert not t.locked
    assert t.record(9, "bf16-mixed", bad=True, overflow=False) is not None
    assert t.locked and t.forced_fp32(10**9)
    assert (t.fallbacks, t.skipped_steps) == (2, 2)


def test_tracker_fp32_bad_step_is_skipped_without_fallback():
    t = FallbackTracker(overflow_patience=3, cooldown_steps=2, max_fallbacks=2)
    assert t.record(0, "32-true", bad=True, overflow=False) is None
    assert (t.fallbacks, t.skipped_steps) == (0, 1)


def test_tracker_overflow_streak_resets_on_a_clean_step():
    t = FallbackTracker(overflow_patience=2, cooldown_steps=0, max_fallbacks=5)
    assert t.record(0, "16-mixed", bad=False, overflow=True) is None
    assert t.record(1, "16-mixed", bad=False, overflow=False) is None
    assert t.record(2, "16-mixed", bad=False, overflow=True) is None
    assert t.record(3, "16-mixed", bad=False, overflow=True) == "2 consecutive fp16 overflows"
    assert (t.overflows, t.fallbacks, t.overflow_streak) == (3, 1, 0)
    assert not t.forced_fp32(4)  # cooldown_steps=0: retry at once


def test_tracker_state_round_trip():
    t = FallbackTracker(overflow_patience=2, cooldown_steps=5, max_fallbacks=3)
    t.record(1, "16-mixed", bad=False, overflow=True)
    t.record(2, "bf16-mixed", bad=True, overflow=False)
    u = FallbackTracker(overflow_patience=2, cooldown_steps=5, max_fallbacks=3)
    u.load_state_dict(t.state_dict())
    assert (
        u.state_dict()
        == t.state_dict()
        == {"fallbacks": 1, "overflow_streak": 0, "overflows": 1, "skipped_steps": 1, "cooldown_until": 8}
    )
