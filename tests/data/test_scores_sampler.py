import itertools
import math

import pytest
import torch
from lightning.pytorch import LightningModule

from lightning_green import reduce_sample_losses
from lightning_green.data import PruningSampler, SampleScores, annealing_start, plan_epoch
from lightning_green.data.scores import EpochPlan


def scored(values):
    s = SampleScores(len(values))
    s.update(torch.arange(len(values)), torch.tensor(values, dtype=torch.float64))
    return s


def test_plan_skips_only_well_learned_samples_and_weights_the_kept_ones():
    values = [0.1, 0.2, 0.3, 2.0, 3.0, 4.0, 0.05, 5.0]  # mean 1.83: indices 0, 1, 2, 6 are well learned
    plan = plan_epoch(scored(values), prune_ratio=0.75, epoch=5, seed=3, shuffle=False)
    well = {0, 1, 2, 6}
    kept = set(plan.order.tolist())
    assert {3, 4, 5, 7} <= kept  # hard samples always kept
    for i in range(len(values)):
        expected = (4.0 if i in kept else 0.0) if i in well else 1.0
        assert plan.weights[i].item() == pytest.approx(expected)
    assert plan.kept == len(kept) and plan.pruned


def test_well_learned_samples_are_skipped_with_probability_prune_ratio_over_epochs():
    values = [0.0] * 50 + [1.0] * 50
    scores = scored(values)
    kept = torch.zeros(100)
    epochs = 400
    for e in range(epochs):
        kept[plan_epoch(scores, 0.3, e, seed=0, shuffle=True).order] += 1
    assert torch.equal(kept[50:], torch.full((50,), float(epochs)))
    rate = kept[:50].sum().item() / (50 * epochs)  # binomial: sd = sqrt(.21 / 20000) = 0.0032
    assert abs(rate - 0.7) < 0.015


def linear_problem(seed):
    """A fixed linear least-squares model on 6 samples: inputs, targets and trainable weights (float64)."""
    torch.manual_seed(seed)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, dtype=torch.float64)
    return x, y, torch.randn(3, dtype=torch.float64, requires_grad=True)


def test_weights_make_the_expected_gradient_equal_the_full_data_gradient_exactly():
    # A fixed linear model; the expectation over the plan's sampling distribution is enumerated exactly: every
    # well-learned sample is skipped independently with probability r (the plan's rule), kept ones weigh the plan's
    # weight. E[sum_kept w_i grad l_i] must equal sum_i grad l_i (then also per batch mean of a fixed batch size).
    x, y, w = linear_problem(0)

    def per_sample_losses():
        return (x @ w - y) ** 2

    def grad_of(loss):
        (g,) = torch.autograd.grad(loss, w)
        return g

    r = 0.4
    scores = scored(per_sample_losses().detach().tolist())
    plan = plan_epoch(scores, r, epoch=1, seed=0, shuffle=False)
    well = torch.nonzero(scores.values < scores.mean()).reshape(-1).tolist()
    assert 0 < len(well) < 6
    weight = plan.weights[well[0]].item() if plan.weights[well[0]] > 0 else plan.weights[well[-1]].item()
    assert weight == pytest.approx(1 / (1 - r))
    full = grad_of(per_sample_losses().sum())
    expected = torch.zeros(3, dtype=torch.float64)
    total_p = 0.0
    for skip in itertools.product([False, True], repeat=len(well)):
        p = math.prod(r if s else 1 - r for s in skip)
        weights = torch.ones(6, dtype=torch.float64)
        for i, s in zip(well, skip, strict=True):
            weights[i] = 0.0 if s else weight
        expected += p * grad_of((per_sample_losses() * weights).sum())
        total_p += p
    assert total_p == pytest.approx(1.0)
    assert torch.allclose(expected, full, rtol=1e-12, atol=1e-12)


def test_keep_steps_weights_make_each_steps_expected_gradient_the_full_data_steps():
    # keep_steps: an epoch has the full data's number of steps, so each *step* (a batch's weighted mean) must expect
    # the full data's mean gradient. Enumerated exactly over the skip draws; a uniformly drawn batch of the kept set
    # has the kept set's weighted mean as its expectation.
    x, y, w = linear_problem(1)

    def grads():
        return torch.stack([torch.autograd.grad((x[i] @ w - y[i]) ** 2, w)[0] for i in range(6)])

    r = 0.4
    scores = scored(((x @ w - y) ** 2).detach().tolist())
    well = torch.nonzero(scores.values < scores.mean()).reshape(-1).tolist()
    assert 0 < len(well) < 6
    g = grads()
    expected, fewer = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for skip in itertools.product([False, True], repeat=len(well)):
        p = math.prod(r if s else 1 - r for s in skip)
        weights = torch.ones(6, dtype=torch.float64)
        for i, s in zip(well, skip, strict=True):
            weights[i] = 0.0 if s else 1 / (1 - r)
        plan = EpochPlan(epoch=1, order=torch.nonzero(weights > 0).reshape(-1), weights=weights, pruned=True)
        sampler = PruningSampler(6, lambda e, plan=plan: plan, batch_size=2, keep_steps=True)
        kept = plan.order.tolist()
        step_weights = sampler.weights_of(kept)
        expected += p * (step_weights[:, None] * g[kept]).mean(0)  # E over the batch = mean over the kept set
        fewer += p * (weights[kept][:, None] * g[kept]).mean(0)
    assert torch.allclose(expected, g.mean(0), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fewer, g.mean(0))  # the plain weights overshoot per step (fine with fewer steps)


def test_unscored_and_non_finite_samples_are_always_kept():
    s = SampleScores(4)
    assert plan_epoch(s, 0.9, 1, 0, False).kept == 4 and not plan_epoch(s, 0.9, 1, 0, False).pruned
    s.update(torch.arange(4), torch.tensor([0.1, 0.1, 5.0, 5.0]))
    s.update(torch.tensor([0]), torch.tensor([float("nan")]))  # un-scores sample 0
    assert math.isnan(s.values[0].item())
    for e in range(20):
        plan = plan_epoch(s, 0.9, e, 0, True)
        assert 0 in plan.order.tolist() and plan.weights[0].item() == 1.0


def test_full_data_epochs_keep_everything_with_weight_one():
    plan = plan_epoch(scored([0.0, 0.0, 1.0, 1.0]), 0.9, 7, 0, False, full_data=True)
    assert plan.order.tolist() == [0, 1, 2, 3] and torch.equal(plan.weights, torch.ones(4, dtype=torch.float64))
    assert not plan.pruned


@pytest.mark.parametrize(
    ("max_epochs", "fraction", "start"),
    [(8, 0.125, 7), (10, 0.0, 10), (4, 1.0, 0), (-1, 0.5, None), (16, 0.125, 14), (4, 0.125, 3), (0, 0.5, 0)],
)
def test_annealing_start(max_epochs, fraction, start):
    assert annealing_start(max_epochs, fraction) == start


@pytest.mark.parametrize(("max_epochs", "start"), [(15, 14), (10, 9), (30, 27)])
def test_annealing_never_takes_more_than_the_fraction(max_epochs, start):
    # Regression: ceil() annealed 2 of 15 epochs (13.3 %) for anneal_fraction=0.125, pruning one epoch less than asked.
    assert annealing_start(max_epochs, 0.125) == start
    assert (max_epochs - start) / max_epochs <= 0.125


def test_plans_are_reproducible_from_seed_and_epoch():
    s = scored([0.0] * 10 + [1.0] * 10)
    a, b = plan_epoch(s, 0.5, 3, 7, True), plan_epoch(s, 0.5, 3, 7, True)
    assert torch.equal(a.order, b.order)
    assert not torch.equal(a.order, plan_epoch(s, 0.5, 4, 7, True).order)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_equal_and_map_batches_to_indices(world, drop_last):
    s = scored([0.0] * 20 + [1.0] * 13)
    samplers = [
        PruningSampler(
            33, lambda e: plan_epoch(s, 0.5, e, 0, True), batch_size=4, drop_last=drop_last, num_replicas=world, rank=r
        )
        for r in range(world)
    ]
    for sp in samplers:
        sp.set_epoch(2)
    kept = samplers[0].plan.order.tolist()
    shards = [list(sp) for sp in samplers]
    assert len({len(sh) for sh in shards}) == 1 and len({sp.num_batches for sp in samplers}) == 1
    assert sorted(set(itertools.chain(*shards))) == sorted(kept)
    assert sum(len(sh) for sh in shards) - len(kept) < world  # only the padding repeats
    for sp, sh in zip(samplers, shards, strict=True):
        batches = [sh[i : i + 4] for i in range(0, len(sh), 4)]
        if drop_last and batches and len(batches[-1]) < 4:
            batches = batches[:-1]
        assert [sp.batch_indices(b) for b in range(sp.num_batches)] == batches


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_keep_steps_keeps_the_full_data_batch_count_with_smaller_batches(world, drop_last):
    s = scored([0.0] * 24 + [1.0] * 9)

    def sampler(rank, keep_steps, ratio=0.5):
        sp = PruningSampler(
            33,
            lambda e: plan_epoch(s, ratio, e, 0, True),
            batch_size=4,
            drop_last=drop_last,
            num_replicas=world,
            rank=rank,
            keep_steps=keep_steps,
        )
        sp.set_epoch(1)
        return sp

    full = sampler(0, False, ratio=0.0)  # nothing pruned: the full data's batches
    for r in range(world):
        fewer, kept = sampler(r, False), sampler(r, True)
        assert list(kept) == list(fewer) and len(kept) < len(full)  # the same samples either way
        assert fewer.epoch_batch_size == 4 and fewer.num_batches < full.num_batches
        assert kept.epoch_batch_size < 4
        assert fewer.num_batches < kept.num_batches <= full.num_batches
        if drop_last and len(kept) // (len(kept) // full.num_batches) == full.num_batches:
            assert kept.num_batches == full.num_batches  # exactly as many where one size gives that
        size, shard = kept.epoch_batch_size, list(kept)
        batches = [shard[i : i + size] for i in range(0, len(shard), size)]
        if drop_last and len(batches[-1]) < size:
            batches = batches[:-1]
        assert [kept.batch_indices(b) for b in range(kept.num_batches)] == batches
    assert sampler(0, True, ratio=0.0).epoch_batch_size == 4  # an unpruned epoch keeps the DataLoader's size
    unscored = SampleScores(1257)
    odd = PruningSampler(1257, lambda e: plan_epoch(unscored, 0.5, e, 0, True), batch_size=64, keep_steps=True)
    odd.set_epoch(0)
    assert odd.epoch_batch_size == 64  # not ceil(1257 / 20) = 63: nothing scored, nothing pruned
    in_use = sampler(0, True)
    in_use.use_batch_size(2)
    assert in_use.epoch_batch_size == 2 and in_use.batch_indices(0) == list(in_use)[:2]  # the DataLoader's size wins


@pytest.mark.parametrize(("n", "full"), [(850, 19), (30, 4), (29, 4), (10, 4), (23, 4)])
def test_keep_steps_with_drop_last_never_runs_more_batches_and_hits_the_count_where_it_can(n, full):
    # The full data: full * 64 samples in batches of 64; a pruned epoch keeps n of them.
    def planner(epoch):
        return EpochPlan(epoch=epoch, order=torch.arange(n), weights=torch.ones(full * 64), pruned=True)

    sp = PruningSampler(full * 64, planner, batch_size=64, drop_last=True, keep_steps=True)
    assert len(sp) == n and sp.num_batches <= full
    exact = [b for b in range(1, 65) if n // b == full]
    assert (sp.num_batches == full) == bool(exact)  # as many as the full data's whenever some batch size gives it


def test_keep_steps_runs_the_full_data_batch_count_on_a_thousand_samples():
    s = scored([0.0] * 700 + [1.0] * 300)
    for ratio in (0.3, 0.5, 0.7):
        sp = PruningSampler(1000, lambda e, r=ratio: plan_epoch(s, r, e, 0, True), batch_size=32, keep_steps=True)
        sp.set_epoch(1)
        assert sp.num_batches == 32 and sp.epoch_batch_size < 32  # ceil(1000 / 32) batches, smaller ones


def test_reduce_sample_losses_without_data_pruning_is_the_plain_mean():
    losses = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    out = reduce_sample_losses(LightningModule(), losses)
    assert out.item() == pytest.approx(7 / 3) and out.requires_grad


@pytest.mark.parametrize(
    ("losses", "exc", "match"),
    [
        (torch.tensor(1.5), ValueError, r"shape \(\)\): `losses` must be 1-D .* reduction='none'"),
        (torch.ones(2, 3), ValueError, r"shape \(2, 3\)\): `losses` must be 1-D with one loss per sample"),
        ([1.0, 2.0], TypeError, r"reduce_sample_losses\(losses=list\): `losses` must be a tensor"),
        (torch.tensor([1, 2]), TypeError, r"losses of dtype torch.int64\): `losses` must be floating point"),
        (torch.zeros(0), ValueError, r"losses of shape \(0,\)\): `losses` must hold one loss per sample"),
    ],
)
def test_reduce_sample_losses_refuses_what_is_not_one_loss_per_sample(losses, exc, match):
    with pytest.raises(exc, match=match):
        reduce_sample_losses(LightningModule(), losses)


def test_scores_refuse_a_checkpoint_of_another_dataset():
    with pytest.raises(ValueError, match="checkpoint scores 3 samples, the dataset has 4"):
        SampleScores(4).load_state_dict({"values": [0.0, 1.0, 2.0]})
