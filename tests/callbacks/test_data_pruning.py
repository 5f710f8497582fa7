import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_green import DataPruning, EnergyMonitor, reduce_sample_losses
from lightning_green._internal.validation import InvalidArgumentError
from lightning_green.data import PruningSampler, SampleScores, plan_epoch
from lightning_green.data.install import rebuild_with_sampler
from lightning_green.data.sampler import epoch_batches
from tests.helpers import SavesAtStep, busy_cpu

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}
N = 40


def difficulty(i):
    """The fixed per-sample loss of sample i: well learned (below the mean 2.0) for i % 5 in {0, 1}."""
    return float(i % 5)


class Indexed(Dataset):
    """Items carry their index only so the test can check the callback's bookkeeping; DataPruning never reads it."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return torch.tensor([difficulty(i)]), i


class Model(LightningModule):
    """Per-sample loss = difficulty (+0 x a trainable output): the scores are known exactly."""

    def __init__(self, batch_size=4, shuffle=True, num_workers=0, drop_last=False, call=True, nan_at=None):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.loader_kwargs = {
            "batch_size": batch_size,
            "shuffle": shuffle,
            "num_workers": num_workers,
            "drop_last": drop_last,
            "persistent_workers": num_workers > 0,
        }
        self.call = call
        self.nan_at = nan_at
        self.seen: dict[int, list[int]] = {}
        self.mismatches = 0

    def train_dataloader(self):
        return DataLoader(Indexed(), **self.loader_kwargs)

    def training_step(self, batch, batch_idx):
        x, idx = batch
        self.seen.setdefault(self.current_epoch, []).extend(idx.tolist())
        dp = next((cb for cb in self.trainer.callbacks if isinstance(cb, DataPruning)), None)
        if dp is not None and dp.batch_indices != idx.tolist():
            self.mismatches += 1
        losses = self.base_losses(x) + 0.0 * self.layer(x)[:, 0]
        if self.nan_at is not None and self.nan_at in idx.tolist():
            losses = torch.where(idx == self.nan_at, torch.full_like(losses, float("nan")), losses)
        return reduce_sample_losses(self, losses) if self.call else losses.mean()

    def base_losses(self, x):
        """Each sample's loss: its difficulty."""
        return x[:, 0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(tmp_path, model, dp, max_epochs=4, ckpt_path=None, **kwargs):
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        callbacks=[dp, *kwargs.pop("callbacks", [])],
        **QUIET,
        **kwargs,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(
    ("num_workers", "drop_last", "shuffle"), [(0, False, True), (2, True, True), (0, False, False)]
)
def test_batches_map_to_their_indices_and_the_kept_sets_follow_the_rule(tmp_path, num_workers, drop_last, shuffle):
    seed_everything(0)
    model = Model(num_workers=num_workers, drop_last=drop_last, shuffle=shuffle)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25)
    trainer = fit(tmp_path, model, dp, max_epochs=4)
    assert model.mismatches == 0
    hard = {i for i in range(N) if difficulty(i) >= 2.0}
    full = (N // 4) * 4 if drop_last else N
    assert len(model.seen[0]) == full  # epoch 0: nothing scored yet, all kept
    for epoch in (1, 2):
        seen = model.seen[epoch]
        kept = set(dp.plan(epoch).order.tolist())
        assert len(seen) == len(set(seen))  # no sample twice in an epoch
        assert hard <= kept  # only well-learned samples are skipped
        if drop_last:
            assert set(seen) <= kept and len(seen) == len(kept) // 4 * 4
        else:
            assert set(seen) == kept
        assert dp.history[epoch]["kept"] == len(seen) < N  # what the epoch loaded (drop_last takes its part off)
        assert dp.history[epoch]["planned"] == len(kept)
    assert len(set(model.seen[3])) == full  # annealing epoch: every sample again
    expected = torch.tensor([difficulty(i) for i in range(N)], dtype=torch.float64)
    if not drop_last:
        assert torch.equal(dp.scores.values, expected)  # each sample's loss landed on its own index
    assert trainer.callback_metrics["data/kept_fraction"].item() == 1.0
    assert trainer.callback_metrics["data/samples_seen"].item() == sum(len(v) for v in model.seen.values())
    if shuffle:
        assert model.seen[1] != sorted(model.seen[1])
    else:
        assert model.seen[1] == sorted(model.seen[1])


@pytest.mark.parametrize(("num_workers", "drop_last"), [(0, False), (2, True)])
def test_keep_steps_runs_the_full_data_batch_count_with_smaller_batches(tmp_path, num_workers, drop_last):
    class Count(Model):
        def on_train_epoch_start(self):
            self.loader_sizes = getattr(self, "loader_sizes", [])
            self.loader_sizes.append(self.trainer.train_dataloader.batch_size)

        def on_train_batch_start(self, batch, batch_idx):
            self.batches = getattr(self, "batches", {})
            self.batches[self.current_epoch] = self.batches.get(self.current_epoch, 0) + 1

    seed_everything(0)
    model = Count(batch_size=8, num_workers=num_workers, drop_last=drop_last)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25, keep_steps=True)
    trainer = fit(tmp_path, model, dp, max_epochs=4)
    assert model.mismatches == 0  # shuffled (and multi-worker) batches still map to their indices
    full_batches = N // 8  # 5 either way (40 samples)
    assert model.batches[0] == model.batches[3] == full_batches and model.loader_sizes[0] == model.loader_sizes[3] == 8
    for epoch in (1, 2):
        kept = dp.plan(epoch).order.tolist()
        size = math.ceil(len(kept) / full_batches)
        assert model.loader_sizes[epoch] == size < 8  # smaller batches ...
        # ... as many as on the full data (24 hard samples are always kept, so ceil rounds to exactly 5 here)
        assert model.batches[epoch] == (len(kept) // size if drop_last else full_batches)
        assert set(model.seen[epoch]) <= set(kept) and len(model.seen[epoch]) == len(set(model.seen[epoch]))
        if not drop_last:
            assert sorted(model.seen[epoch]) == sorted(kept)
    assert trainer.callback_metrics["data/samples_seen"].item() == sum(len(v) for v in model.seen.values())


def test_keep_steps_with_a_loader_returned_again_every_epoch(tmp_path):
    class Cached(Model):
        def train_dataloader(self):
            if not hasattr(self, "loader"):
                self.loader = DataLoader(Indexed(), batch_size=8, shuffle=True)
            return self.loader

    seed_everything(0)
    model = Cached()
    fit(tmp_path, model, DataPruning(prune_ratio=0.5, anneal_fraction=0.25, keep_steps=True), max_epochs=4)
    assert model.mismatches == 0 and len(model.seen[1]) < N
    assert len(model.seen[3]) == N and model.loader.batch_size == 8  # the annealing epoch is back to batches of 8


def test_keep_steps_accepts_a_positional_batch_size_and_refuses_a_loader_that_cannot_change_it(tmp_path):
    class Positional(Model):
        def train_dataloader(self):
            return DataLoader(Indexed(), 4, shuffle=True)  # batch_size given positionally

        def on_train_epoch_start(self):
            self.sizes = [*getattr(self, "sizes", []), self.trainer.train_dataloader.batch_size]

    seed_everything(0)
    model = Positional()
    fit(tmp_path, model, DataPruning(prune_ratio=0.5, anneal_fraction=0.0, keep_steps=True), max_epochs=3)
    assert model.mismatches == 0 and len(model.seen[2]) < N
    assert model.sizes[0] == 4 and model.sizes[1] < 4  # the positional batch_size was replaced

    class FixedSize(DataLoader):
        def __init__(self, dataset, batch_size=1, shuffle=False, sampler=None, batch_sampler=None, drop_last=False):
            super().__init__(dataset, batch_size=4, shuffle=shuffle, sampler=sampler)  # ignores batch_size

    scores = SampleScores(N)
    sampler = PruningSampler(N, lambda e: plan_epoch(scores, 0.5, e, 0, True), batch_size=4)
    rebuilt = rebuild_with_sampler(DataLoader(Indexed(), batch_size=4, shuffle=True), sampler, 3)
    assert rebuilt.batch_size == 3 and rebuilt.sampler is sampler
    with pytest.raises(ValueError, match=r"keep_steps=True\): the training FixedSize cannot be re-created with a sm"):
        rebuild_with_sampler(FixedSize(Indexed(), shuffle=True), sampler, 3)


def test_every_hard_sample_is_kept_and_well_learned_ones_are_skipped_at_about_prune_ratio(tmp_path):
    model = Model()
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    fit(tmp_path, model, dp, max_epochs=9)
    hard = {i for i in range(N) if difficulty(i) >= 2.0}
    skipped = 0
    for epoch in range(1, 9):
        assert hard <= set(model.seen[epoch])
        skipped += N - len(model.seen[epoch])
    assert 0.3 < skipped / (8 * 16) < 0.7  # 16 well-learned samples, skip probability 0.5


def test_losses_are_reweighted_for_the_kept_well_learned_samples(tmp_path):
    class Capture(Model):
        def training_step(self, batch, batch_idx):
            x, idx = batch
            losses = x[:, 0] + 0.0 * self.layer(x)[:, 0]
            out = reduce_sample_losses(self, losses)
            w = torch.tensor([2.0 if self.current_epoch > 0 and difficulty(i) < 2.0 else 1.0 for i in idx.tolist()])
            assert out.item() == pytest.approx((losses.detach() * w).mean().item())
            return out

    fit(tmp_path, Capture(), DataPruning(prune_ratio=0.5, anneal_fraction=0.0), max_epochs=3)


def test_datamodule_and_the_installed_sampler_are_lightning_s_own_route(tmp_path):
    # The private Lightning seams used by data/install.py still exist and apply (the last two: keep_steps).
    from lightning.pytorch.utilities.data import (  # noqa: F401
        _get_dataloader_init_args_and_kwargs,
        _reinstantiate_wrapped_cls,
        _update_dataloader,
    )

    class DM(LightningDataModule):
        def train_dataloader(self):
            return DataLoader(Indexed(), batch_size=8, shuffle=True)

    class Check(Model):
        def on_train_epoch_start(self):
            assert isinstance(self.trainer.train_dataloader.sampler, PruningSampler)

    model = Check()
    dp = DataPruning(prune_ratio=0.5)
    trainer = Trainer(
        default_root_dir=tmp_path, max_epochs=3, logger=False, enable_checkpointing=False, callbacks=[dp], **QUIET
    )
    assert hasattr(trainer.fit_loop, "_data_source")
    trainer.fit(model, datamodule=DM())
    assert len(model.seen[1]) < N and "dataloader" not in vars(trainer.fit_loop._data_source)  # undone
    assert trainer.reload_dataloaders_every_n_epochs == 0  # restored


def test_resume_reproduces_the_kept_sets(tmp_path):
    seed_everything(0)
    full = Model()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = Trainer(
        default_root_dir=tmp_path, max_epochs=5, logger=False, callbacks=[DataPruning(0.5, 0.2), ckpt], **QUIET
    )
    trainer.fit(full)
    resumed = Model()
    dp = DataPruning(0.5, 0.2)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=5, logger=False, callbacks=[dp], **QUIET)
    trainer.fit(resumed, ckpt_path=str(tmp_path / "ck" / "epoch=1.ckpt"))
    assert set(resumed.seen) == {2, 3, 4}
    for epoch in (2, 3):
        assert resumed.seen[epoch] == full.seen[epoch]  # same samples, same order
        assert len(full.seen[epoch]) < N
    assert dp.history[-1]["epoch"] == 4 and len(dp.history) == 5


@pytest.mark.parametrize("keep_steps", [False, True])
def test_a_mid_epoch_resume_maps_batches_to_their_indices(tmp_path, keep_steps):
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=13, filename="{step}")
    dp = DataPruning(0.5, keep_steps=keep_steps)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=3, logger=False, callbacks=[dp, ckpt], **QUIET)
    full = Model()
    trainer.fit(full)
    resumed = Model()
    fit(tmp_path, resumed, DataPruning(0.5, keep_steps=keep_steps), max_epochs=3,
        ckpt_path=str(tmp_path / "ck" / "step=13.ckpt"))  # fmt: skip
    assert resumed.mismatches == 0 and set(resumed.seen) == {1, 2}
    assert resumed.seen[2] == full.seen[2]  # the same kept samples, in the same order and batches


@pytest.mark.parametrize(("saved_on", "step", "refused"), [(2, 13, True), (1, 13, False), (2, 18, False)])
def test_a_resume_inside_an_epoch_on_another_number_of_processes_is_refused(tmp_path, saved_on, step, refused):
    # Each rank continued its shard after the batches it had run, but under another world size the shards are other
    # samples: resumed on 1 process from a 2-process checkpoint, 8 samples of the epoch were trained twice. Step 13 is
    # batch 3 of the 8 of pruned epoch 1; a checkpoint at its end (step 18) leaves nothing of it to run: fine.
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=1, filename="{step}")
    fit(tmp_path, Model(), DataPruning(0.5), max_epochs=3, callbacks=[ckpt], enable_checkpointing=True)
    path = tmp_path / "ck" / f"step={step}.ckpt"
    saved = torch.load(path, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("DataPruning"))
    assert state["open_epoch"]["world_size"] == 1 and state["open_epoch"]["batches"] > 0
    state["open_epoch"]["world_size"] = saved_on  # as a checkpoint of a 2-process run records it
    torch.save(saved, path)
    run = lambda: fit(tmp_path / "r", Model(), DataPruning(0.5), max_epochs=3, ckpt_path=str(path))  # noqa: E731
    if not refused:
        run()
        return
    with pytest.raises(InvalidArgumentError, match=r"saved after batch \d+ of \d+ of epoch 1 on 2 process\(es\), and "
                       r"this run has 1; .* Resume on 2 process\(es\)"):  # fmt: skip
        run()


class CrashesOnce(Model):
    """Raises in training_step at one (epoch, batch_idx) of its first fit."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at = at

    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == self.at:
            self.at = None
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_a_checkpoint_on_exception_resumes_with_the_batch_that_failed(tmp_path):
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    seed_everything(0)
    full = Model()
    fit(tmp_path / "full", full, DataPruning(0.5), max_epochs=3)
    seed_everything(0)
    crashed = CrashesOnce(at=(1, 3))
    callbacks = [DataPruning(0.5), OnExceptionCheckpoint(tmp_path / "exc")]
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(default_root_dir=tmp_path, max_epochs=3, logger=False, callbacks=callbacks, **QUIET).fit(crashed)
    resumed = Model()
    dp = DataPruning(0.5)
    fit(tmp_path, resumed, dp, max_epochs=3, ckpt_path=str(tmp_path / "exc" / "on_exception.ckpt"))
    assert crashed.seen[1] + resumed.seen[1] == full.seen[1]  # the failed batch trains on resume, none is skipped
    assert dp.history[1]["seen"] == len(full.seen[1])


def test_a_checkpoint_by_a_callback_listed_first_counts_the_batch_that_trained(tmp_path):
    seed_everything(0)
    full = Model()
    fit(tmp_path / "full", full, DataPruning(0.5), max_epochs=3)
    seed_everything(0)
    saved = Model()
    callbacks = [SavesAtStep(step=9, path=tmp_path / "mid.ckpt"), DataPruning(0.5)]  # step 9: inside epoch 1
    Trainer(default_root_dir=tmp_path, max_epochs=3, logger=False, callbacks=callbacks, **QUIET).fit(saved)
    resumed = Model()
    dp = DataPruning(0.5)
    fit(tmp_path, resumed, dp, max_epochs=3, ckpt_path=str(tmp_path / "mid.ckpt"))
    trained_before = saved.seen[1][: len(full.seen[1]) - len(resumed.seen[1])]
    assert trained_before + resumed.seen[1] == full.seen[1]  # no batch twice, none skipped
    assert [h["seen"] for h in dp.history] == [len(full.seen[e]) for e in range(3)]


def test_overfit_batches_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"DataPruning: Trainer\(overfit_batches=2\) trains on a fixed few batches"):
        fit(tmp_path, Model(), DataPruning(), overfit_batches=2)


def test_reused_in_a_new_trainer_starts_a_new_run(tmp_path):
    dp = DataPruning(0.5, anneal_fraction=0.0)
    fit(tmp_path, Model(), dp, max_epochs=2)
    model = Model()
    fit(tmp_path, model, dp, max_epochs=2)  # the scores were of the other model
    assert [h["epoch"] for h in dp.history] == [0, 1]
    assert len(model.seen[0]) == N  # a new run's first epoch scores every sample
    assert dp.samples_seen == sum(len(v) for v in model.seen.values())


def test_no_reduce_sample_losses_call_in_the_first_epoch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="never called reduce_sample_losses in the first epoch"):
        fit(tmp_path, Model(call=False), DataPruning())


def test_non_finite_losses_warn_and_keep_their_sample(tmp_path):
    model = Model(nan_at=3)  # difficulty(3) = 3: a hard sample; NaN keeps it and it stays unscored
    dp = DataPruning(prune_ratio=0.9, anneal_fraction=0.0)
    match = r"1 non-finite \(NaN/inf\) loss\(es\) in epoch 0; those samples' scores are not updated"
    with pytest.warns(UserWarning, match=match):
        fit(tmp_path, model, dp, max_epochs=3)
    assert torch.isnan(dp.scores.values[3]) and all(3 in model.seen[e] for e in range(3))


def test_a_training_step_taking_the_dataloader_iterator_is_refused(tmp_path):
    class Iter(Model):
        def training_step(self, dataloader_iter):
            batch, batch_idx, _ = next(dataloader_iter)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"training_step\(self, dataloader_iter\) fetches its own batches"):
        fit(tmp_path, Iter(), DataPruning())


def test_two_reduce_sample_losses_calls_in_one_step_warn_once(tmp_path):
    class Twice(Model):
        def training_step(self, batch, batch_idx):
            x, _ = batch
            aux = reduce_sample_losses(self, 10.0 + x[:, 0] + 0.0 * self.layer(x)[:, 0])
            return super().training_step(batch, batch_idx) + 0.0 * aux

    with pytest.warns(UserWarning, match="called more than once in one training step") as rec:
        fit(tmp_path, Twice(), DataPruning(), max_epochs=2)
    assert sum("more than once" in str(w.message) for w in rec) == 1


def test_one_call_per_step_does_not_warn_about_calls(tmp_path, recwarn):
    fit(tmp_path, Model(), DataPruning(), max_epochs=2)
    assert not [w for w in recwarn if "more than once" in str(w.message)]


def test_early_stopping_warns_that_the_annealing_epochs_may_never_come(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    stop = EarlyStopping(monitor="data/score_mean", patience=100, check_on_train_epoch_end=True)
    with pytest.warns(UserWarning, match=r"from epoch 14 of max_epochs=16\), but EarlyStopping may end the run"):
        fit(tmp_path, Model(), DataPruning(anneal_fraction=0.125), max_epochs=16, callbacks=[stop])
    # min_epochs=14 lets it stop after epoch 13, before the first annealing epoch (14): still said.
    with pytest.warns(UserWarning, match=r"but EarlyStopping may end the run"):
        fit(tmp_path, Model(), DataPruning(anneal_fraction=0.125), max_epochs=16, min_epochs=14, callbacks=[stop])


@pytest.mark.parametrize(
    "case",
    [{"max_steps": 12}, {"min_epochs": 16}, {"without_early_stopping": True}, {"prune_ratio": 0.0}],
)
def test_the_early_stopping_warning_stays_silent_where_it_does_not_apply(tmp_path, recwarn, case):
    from lightning.pytorch.callbacks import EarlyStopping

    callbacks = [] if case.get("without_early_stopping") else [EarlyStopping(monitor="data/score_mean", patience=100)]
    kwargs = {"max_epochs": 16}
    if "max_steps" in case:  # no max_epochs: nothing anneals (its own warning says so)
        kwargs = {"max_epochs": -1, "max_steps": case["max_steps"]}
    if "min_epochs" in case:  # EarlyStopping cannot stop before min_epochs = max_epochs: every annealing epoch runs
        kwargs["min_epochs"] = case["min_epochs"]
    dp = DataPruning(prune_ratio=case.get("prune_ratio", 0.5), anneal_fraction=0.125)
    fit(tmp_path, Model(), dp, callbacks=callbacks, limit_train_batches=2, **kwargs)
    assert not [w for w in recwarn if "EarlyStopping may end the run" in str(w.message)]


def test_lbfgs_calling_training_step_several_times_per_batch_does_not_warn_about_calls(tmp_path, recwarn):
    class Lbfgs(Model):
        def base_losses(self, x):  # a loss with a gradient, so that LBFGS evaluates its closure more than once
            return x[:, 0] + 0.1 * self.layer(x)[:, 0] ** 2

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.steps = getattr(self, "steps", 0) + 1

    model = Lbfgs()
    fit(tmp_path, model, DataPruning(), max_epochs=2)
    assert not [w for w in recwarn if "more than once" in str(w.message)]
    assert sum(len(v) for v in model.seen.values()) > 4 * model.steps  # several closure calls per batch of 4


def test_drop_last_without_shuffle_does_not_always_drop_the_same_kept_samples(tmp_path):
    # Unshuffled, the loader drops the end of the kept order; were it always in index order, the same (hard, always
    # kept) last samples would never train in a pruned epoch.
    model = Model(batch_size=4, shuffle=False, drop_last=True)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    trainer = fit(tmp_path, model, dp, max_epochs=12)
    dropped_tails = []
    for epoch in range(1, 12):
        kept = dp.plan(epoch).order.tolist()
        seen = model.seen[epoch]
        assert set(seen) <= set(kept) and len(seen) == len(kept) // 4 * 4 == dp.history[epoch]["kept"]
        if len(seen) < len(kept):
            dropped = sorted(set(kept) - set(seen))
            dropped_tails.append(dropped == sorted(kept)[-len(dropped) :])
    assert dropped_tails and not all(dropped_tails)
    hard = [i for i in range(N) if difficulty(i) >= 2.0]
    assert all(sum(i in model.seen[e] for e in range(1, 12)) >= 6 for i in hard)
    last = dp.history[-1]
    assert trainer.callback_metrics["data/kept_fraction"].item() == pytest.approx(last["kept"] / N)


def test_length_mismatch_is_refused(tmp_path):
    class Short(Model):
        def training_step(self, batch, batch_idx):
            x, _ = batch
            return reduce_sample_losses(self, (x[:, 0] + 0.0 * self.layer(x)[:, 0])[:-1])

    with pytest.raises(ValueError, match=r"losses of length 3\): `losses` must hold one loss per sample of the batch"):
        fit(tmp_path, Short(), DataPruning())


def test_iterable_dataset_is_refused(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            yield from (Indexed()[i] for i in range(N))

    class M(Model):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=4)

    with pytest.raises(ValueError, match="dataset is an IterableDataset .* needs a map-style dataset"):
        fit(tmp_path, M(), DataPruning())


def test_a_step_scheduler_sized_for_the_full_data_warns_once(tmp_path):
    class OneCycle(Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    with pytest.warns(UserWarning, match="step-interval LR scheduler OneCycleLR is sized for 30 steps") as rec:
        fit(tmp_path, OneCycle(), DataPruning(), max_epochs=3)
    assert sum("step-interval LR scheduler" in str(w.message) for w in rec) == 1


@pytest.mark.parametrize("kind", ["linear", "hf_linear_warmup"])
def test_step_schedulers_that_say_their_length_elsewhere_warn_too(tmp_path, kind):
    import functools

    def hf_like(step, *, num_warmup_steps, num_training_steps):  # transformers' get_linear_schedule_with_warmup
        return min(1.0, (step + 1) / max(1, num_warmup_steps)) * max(0.0, 1 - step / num_training_steps)

    class Sized(Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            total = int(self.trainer.estimated_stepping_batches)
            if kind == "linear":
                sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total)
            else:
                lam = functools.partial(hf_like, num_warmup_steps=2, num_training_steps=total)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    name = "LinearLR" if kind == "linear" else "LambdaLR"
    with pytest.warns(UserWarning, match=f"step-interval LR scheduler {name} is sized for 30 steps"):
        fit(tmp_path, Sized(), DataPruning(), max_epochs=3)


def test_a_warmup_only_step_scheduler_does_not_warn(tmp_path, recwarn):
    class Warmup(Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    fit(tmp_path, Warmup(), DataPruning(), max_epochs=3)
    assert not [w for w in recwarn if "step-interval LR scheduler" in str(w.message)]


def test_keep_steps_leaves_a_full_data_step_scheduler_to_run_to_its_end(tmp_path, recwarn):
    class OneCycle(Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            self.sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=30)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}

    model = OneCycle(batch_size=8)
    fit(tmp_path, model, DataPruning(keep_steps=True, anneal_fraction=0.0), max_epochs=6)
    assert not [w for w in recwarn if "step-interval LR scheduler" in str(w.message)]
    assert model.sched.last_epoch == 30 and len(model.seen[3]) < N  # every step taken, on pruned epochs


def test_a_step_scheduler_in_a_run_that_max_steps_ends_runs_to_its_end_without_a_warning(tmp_path, recwarn):
    # Bounded by max_steps, shorter epochs only mean more of them: the scheduler sized with estimated_stepping_batches
    # (== max_steps) ends with the run. The warning told users to size it for fewer steps, which then raised.
    class OneCycle(Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches
            self.sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}

    model = OneCycle()
    trainer = fit(tmp_path, model, DataPruning(anneal_fraction=0.0), max_epochs=100, max_steps=40)
    assert not [w for w in recwarn if "step-interval LR scheduler" in str(w.message)]
    assert trainer.global_step == model.sched.last_epoch == 40 and len(model.seen[2]) < N  # pruned epochs, all steps


def test_a_module_kept_in_eval_mode_while_it_trains_is_still_pruned_and_weighted(tmp_path):
    # Training is the Trainer's stage: eval() (frozen BatchNorm, no dropout) is not validation.
    class Frozen(Model):
        def on_train_epoch_start(self):
            self.eval()

        def training_step(self, batch, batch_idx):
            x, idx = batch
            losses = self.base_losses(x) + 0.0 * self.layer(x)[:, 0]
            dp = self.trainer.callbacks[0]
            weights = dp._weights.clone()
            out = reduce_sample_losses(self, losses)
            self.unweighted += int(not torch.allclose(out, (losses * weights.to(losses.dtype)).mean()))
            self.seen.setdefault(self.current_epoch, []).extend(idx.tolist())
            return out

    model = Frozen()
    model.unweighted = 0
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    fit(tmp_path, model, dp, max_epochs=3)
    assert dp.scores.scored_count == N and model.unweighted == 0
    assert len(model.seen[1]) < N and dp.history[1]["kept"] < N


def test_the_draws_follow_seed_everything_unless_a_seed_is_given(tmp_path):
    def orders(global_seed, seed=None):
        seed_everything(global_seed)
        model = Model()
        fit(tmp_path, model, DataPruning(prune_ratio=0.5, anneal_fraction=0.0, seed=seed), max_epochs=2)
        return model.seen[0], model.seen[1]

    a, b = orders(1), orders(2)
    assert a[0] != b[0] and a[1] != b[1]  # each seed its own order and draws, as without DataPruning
    assert orders(1) == a  # reproducible
    assert orders(1, seed=5) == orders(2, seed=5)  # a given seed fixes them


def test_a_resumed_run_keeps_its_checkpoints_seed(tmp_path):
    seed_everything(3)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    full = Model()
    Trainer(default_root_dir=tmp_path, max_epochs=3, logger=False, callbacks=[dp, ckpt], **QUIET).fit(full)
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert next(v for k, v in state["callbacks"].items() if k.startswith("DataPruning"))["seed"] == 3
    seed_everything(4)  # another global seed on resume: the checkpoint's draws go on
    resumed, dp2 = Model(), DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    Trainer(default_root_dir=tmp_path, max_epochs=4, logger=False, enable_checkpointing=False, callbacks=[dp2],
            **QUIET).fit(resumed, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))  # fmt: skip
    seed_everything(3)
    again, dp3 = Model(), DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    fit(tmp_path, again, dp3, max_epochs=4)
    assert resumed.seen[3] == again.seen[3]


@pytest.mark.parametrize(
    ("keep_steps", "trainer_kwargs"),
    [
        (True, {"val_check_interval": 10}),  # keep_steps may give a few fewer batches than the full data's 10
        (False, {"limit_train_batches": 0.6, "val_check_interval": 5}),  # needs int(0.6 * b) >= 5: 9 batches
    ],
)
def test_an_epoch_too_short_for_an_int_val_check_interval_trains_on_all_the_data(tmp_path, keep_steps, trainer_kwargs):
    # Lightning raised "`val_check_interval` must be less than or equal to the number of the training batches".
    class Skewed(Drifting):
        def base_losses(self, x):
            return (x[:, 0] == 4.0).float() * 10.0  # one sample in five far above the mean: 80 % well learned

    seed_everything(0)
    model, dp = Skewed(), DataPruning(prune_ratio=0.5, anneal_fraction=0.0, keep_steps=keep_steps)
    with pytest.warns(UserWarning, match=r"would keep \d+ of 40 samples, \d batch\(es\) per rank, fewer than"):
        trainer = fit(tmp_path, model, dp, max_epochs=3, limit_val_batches=1, **trainer_kwargs)
    assert trainer.current_epoch == 3 and [h["kept"] for h in dp.history] == [40, 40, 40]


class Stateful(DataLoader):
    """A loader that saves and restores its place in an epoch (as torchdata's StatefulDataLoader)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ds: DataLoader(ds, batch_size=4, num_workers=1, in_order=False), r"has in_order=False"),
        (lambda ds: DataLoader(ds, batch_size=None), r"has batch_size=None \(the dataset yields whole batches\)"),
        (lambda ds: Stateful(ds, batch_size=4, shuffle=True), r"loader is a Stateful, which saves and restores"),
        (
            lambda ds: DataLoader(ds, batch_size=4, sampler=torch.utils.data.DistributedSampler(ds, 2, 0)),
            r"own sampler \(DistributedSampler\(num_replicas=2, rank=0; the run has 1 rank\(s\)\)\)",
        ),
    ],
)
def test_loaders_whose_batches_cannot_be_mapped_to_samples_are_refused(tmp_path, make, match):
    class M(Model):
        def train_dataloader(self):
            return make(Indexed())

    with pytest.raises(ValueError, match=match):
        fit(tmp_path, M(), DataPruning())


def test_each_ranks_own_loader_under_ddp_without_lightnings_sampler_is_refused():
    # use_distributed_sampler=False with a plain sampler: every rank's loader is its own (data sharded by the user, or
    # all of it on every rank). Data pruning would shard it again and merge the ranks' scores by index.
    from lightning_green.data.install import check_train_loader

    loader = DataLoader(Indexed(), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match=r"use_distributed_sampler=False\) on 2 ranks with a RandomSampler: each"):
        check_train_loader("DataPruning", loader, world_size=2, rank=1, distributed_sampler=False)
    check_train_loader("DataPruning", loader, world_size=2, rank=1, distributed_sampler=True)  # Lightning shards it
    check_train_loader("DataPruning", loader, world_size=1, rank=0, distributed_sampler=False)
    ds = Indexed()
    own = DataLoader(ds, batch_size=4, sampler=torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1))
    check_train_loader("DataPruning", own, world_size=2, rank=1, distributed_sampler=False)  # shards as ours does
    # install_train_sampler reads Lightning's flag from the Trainer (private: it has no public accessor).
    trainer = Trainer(use_distributed_sampler=False, logger=False, **QUIET)
    assert trainer._accelerator_connector.use_distributed_sampler is False


def test_a_users_distributed_sampler_for_this_world_is_replaced(tmp_path):
    class M(Model):
        def train_dataloader(self):
            ds = Indexed()
            return DataLoader(ds, batch_size=4, sampler=torch.utils.data.DistributedSampler(ds, 1, 0, shuffle=True))

    model, dp = M(), DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    fit(tmp_path, model, dp, max_epochs=2, use_distributed_sampler=False)
    assert len(model.seen[0]) == N and len(model.seen[1]) < N and model.mismatches == 0


def test_energy_report_gets_a_data_section(tmp_path):
    monitor = EnergyMonitor()
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25)
    fit(tmp_path, Model(), dp, max_epochs=4, callbacks=[monitor])
    section = monitor.report()["extra"]["data"]
    assert section["samples_full_data"] == 4 * N
    assert section["samples_seen"] == sum(section["kept_per_epoch"]) < 4 * N
    assert section["samples_saved"] == 4 * N - section["samples_seen"] > 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"prune_ratio": 1.0},
            ValueError,
            r"DataPruning\(prune_ratio=1.0\): `prune_ratio` must be a number >= 0 and < 1",
        ),
        ({"prune_ratio": -0.1}, ValueError, r"`prune_ratio` must be a number >= 0 and < 1"),
        (
            {"anneal_fraction": 1.5},
            ValueError,
            r"DataPruning\(anneal_fraction=1.5\): `anneal_fraction` must be a number >= 0 and <= 1",
        ),
        ({"anneal_fraction": "x"}, TypeError, r"`anneal_fraction` must be a number"),
        ({"seed": 0.5}, TypeError, r"DataPruning\(seed=0.5\): `seed` must be an int"),
        ({"keep_steps": "yes"}, TypeError, r"DataPruning\(keep_steps='yes'\): `keep_steps` must be a bool"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DataPruning(**kwargs)


def test_no_max_epochs_warns_that_nothing_anneals(tmp_path):
    with pytest.warns(UserWarning, match=r"anneal_fraction=0.125\): Trainer\(max_epochs\) is not set"):
        fit(tmp_path, Model(), DataPruning(), max_epochs=-1, max_steps=12)


@pytest.mark.slow
@pytest.mark.parametrize("keep_steps", [False, True])
def test_ddp_ranks_agree_on_the_kept_set_and_run_equal_batch_counts(tmp_path, keep_steps):
    script = Path(__file__).with_name("_ddp_data_pruning_script.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, str(script), str(tmp_path), *(["keep_steps"] if keep_steps else [])]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "self.log('data/" not in proc.stderr  # no "use sync_dist=True" warning per metric
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["kept"] == r1["kept"] and r0["scores"] == r1["scores"]
    for epoch, (a, b) in enumerate(zip(r0["seen"], r1["seen"], strict=True)):
        assert len(a) == len(b)  # equal batch counts: no hang
        kept = set(r0["kept"][epoch])
        assert set(a) | set(b) == kept and len(set(a) & set(b)) <= 1  # disjoint shards (one padded repeat at most)
    assert len(r0["kept"][1]) < r0["n"]  # epoch 1 pruned
    assert r0["batches"] == r1["batches"]
    if keep_steps:  # smaller batches, as many as on the full data (shard 19 -> 5 batches of 4) up to rounding
        assert r0["batches"][0] == 5
        for seen, count in zip(r0["seen"], r0["batches"], strict=True):
            assert count == math.ceil(len(seen) / math.ceil(len(seen) / 5))
        assert r0["batches"][1] == 5 and len(r0["seen"][1]) < 19
    else:
        assert r0["batches"][1] < r0["batches"][0]
    assert all(v == v for v in r0["scores"])  # every sample scored on both ranks (scores were gathered)


def test_green_report_and_comparison_show_the_data_section(tmp_path):
    from lightning_green.report import compare_runs, load_run, write_report
    from lightning_green.report.compare import comparison_table
    from tests.report.runs import fit_digits

    # all the batches: with limit_train_batches=4 both runs load 4 batches an epoch and nothing is saved
    base = fit_digits(tmp_path / "full", epochs=2, limit_train_batches=1.0)
    dp = DataPruning(prune_ratio=0.9, anneal_fraction=0.0)
    pruned = fit_digits(tmp_path / "pruned", epochs=2, callbacks=[dp], limit_train_batches=1.0)
    run = load_run(pruned.log_dir)
    assert run.extra("data")["samples_saved"] > 0
    assert run.extra("data")["samples_saved"] == run.extra("data")["samples_full_data"] - dp.samples_seen
    text = write_report(run).markdown.read_text()
    assert "## Data pruning" in text and "samples saved" in text
    header, rows = comparison_table(compare_runs([load_run(base.log_dir), run]))
    col = header.index("samples")
    assert rows[0][col] == "all" and rows[1][col] == f"{run.extra('data')['samples_seen']:,}"


def test_the_example_config_builds_it_through_the_cli(tmp_path, monkeypatch):
    from lightning_green.cli import cli

    monkeypatch.setattr("sys.argv", ["lightning-green"])
    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "data_pruning.yaml"
    built = cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    (dp,) = [cb for cb in built.trainer.callbacks if isinstance(cb, DataPruning)]
    assert (dp.prune_ratio, dp.anneal_fraction, dp.seed, dp.keep_steps) == (0.7, 0.125, None, True)


@pytest.mark.slow
@pytest.mark.parametrize("keep_steps", [False, True])
def test_next_to_structured_pruning_and_amp_on_the_digits_demo(tmp_path, keep_steps):
    from lightning_green import AMPScheduler, StructuredPruning
    from lightning_green.demos import DigitsCNN, DigitsDataModule

    seed_everything(0)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25, keep_steps=keep_steps)
    sp = StructuredPruning(importance="random", pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[AMPScheduler(policy="auto"), sp, dp],
        **QUIET,
    )
    trainer.fit(DigitsCNN(channels=[8, 16], channels_last=False), DigitsDataModule(image_size=8, batch_size=64))
    assert sp.speedup > 1.2
    assert [h["kept"] < h["total"] for h in dp.history] == [False, True, True, False]
    assert torch.isfinite(dp.scores.values).all()  # every sample scored through the pruned model
    steps = trainer.global_step
    assert steps == 4 * 20 if keep_steps else steps < 4 * 20  # 1257 training images, batches of 64


class Drifting(Model):
    """Losses that move between epochs, as real ones do (epoch 0: difficulty, later: 4 - difficulty), so the kept set
    of an epoch depends on every loss recorded in the epoch before it."""

    def base_losses(self, x):
        return x[:, 0] if self.current_epoch == 0 else 4.0 - x[:, 0]

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.layer(batch[0]).mean())

    def val_dataloader(self):
        return DataLoader(Indexed(), batch_size=8)


class SteppedByEstimate(Drifting):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.0)
        total = self.trainer.estimated_stepping_batches  # builds the training loader, as OneCycleLR users do
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 + 0 * total)}


def test_a_checkpoint_loaded_by_validate_test_or_predict_is_not_resumed_by_the_next_fit(tmp_path):
    dp = DataPruning(seed=0)
    trainer = Trainer(default_root_dir=tmp_path, logger=False, **QUIET)
    dp.setup(trainer, Model(), "validate")  # trainer.validate(ckpt_path=...) restores callback state too
    dp.load_state_dict({"version": 1, "seed": 7, "scores": {"values": [0.0] * N}, "samples_seen": 5,
                        "open_epoch": {"epoch": 0, "batches": 3, "index": [1], "sums": [1.0], "counts": [1.0],
                                       "bad": [0.0]}})  # fmt: skip
    dp.teardown(trainer, Model(), "validate")
    assert dp._draw_seed == 0 and dp.samples_seen == 0 and dp._pending_epoch is None and dp._pending_state is None


@pytest.mark.parametrize(
    ("checkpoint", "name"),
    [
        # mid-epoch: step 13 is the 4th batch of epoch 1 (10 batches, then 7 or 8 kept ones)
        ({"every_n_train_steps": 13, "filename": "{step}"}, "step=13.ckpt"),
        # at validation end, before the epoch end merged the epoch's losses (ModelCheckpoint saves there when
        # validation does not run every epoch)
        ({"every_n_epochs": 1, "filename": "{epoch}"}, "epoch=1.ckpt"),
        # at the last batch of epoch 0: Lightning then counts the epoch as done and never calls its end hook
        ({"every_n_train_steps": 10, "filename": "{step}"}, "step=10.ckpt"),
        # the same with a configure_optimizers that reads estimated_stepping_batches (OneCycleLR): Lightning builds
        # the training loader while current_epoch is still 0
        ({"every_n_train_steps": 13, "filename": "{step}", "esb": True}, "step=13.ckpt"),
    ],
)
def test_a_checkpoint_inside_an_epoch_resumes_to_the_same_kept_sets(tmp_path, checkpoint, name):
    kwargs = {"max_epochs": 4, "check_val_every_n_epoch": 2, "num_sanity_val_steps": 0, "limit_val_batches": 1}
    checkpoint = dict(checkpoint)
    model = SteppedByEstimate if checkpoint.pop("esb", False) else Drifting
    seed_everything(0)
    full, dp_full = model(), DataPruning(0.5, anneal_fraction=0.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, **checkpoint)
    Trainer(default_root_dir=tmp_path, logger=False, callbacks=[dp_full, ckpt], **QUIET, **kwargs).fit(full)
    saved = torch.load(tmp_path / "ck" / name, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("DataPruning"))
    assert state["open_epoch"]["index"]  # the losses of the epoch in progress so far
    seed_everything(0)
    resumed, dp = model(), DataPruning(0.5, anneal_fraction=0.0)
    fit(tmp_path, resumed, dp, ckpt_path=str(tmp_path / "ck" / name), **kwargs)
    assert resumed.mismatches == 0
    for epoch in (2, 3):
        assert resumed.seen[epoch] == full.seen[epoch]  # the same samples, in the same order
    assert [h["kept"] for h in dp.history] == [h["kept"] for h in dp_full.history]
    assert dp.samples_seen == dp_full.samples_seen
    assert torch.equal(dp.scores.values, dp_full.scores.values)
    if name.startswith("step"):  # the resumed epoch ran only the batches after the checkpoint, not the first again
        epoch1 = resumed.seen[1]
        assert len(epoch1) == len(set(epoch1)) and epoch1 == full.seen[1][-len(epoch1) :]


@pytest.mark.parametrize(
    ("loader", "trainer_kwargs", "needs", "least"),
    [
        ({"batch_size": 32, "drop_last": True}, {}, "than 1 batch(es) of up to 32 per rank with drop_last needs", 32),
        (
            {"batch_size": 16},
            {"limit_train_batches": 0.34},
            "3 batch(es) of up to 16 per rank (limit_train_batches=0.34",
            33,
        ),
    ],
)
def test_an_epoch_too_small_for_lightning_trains_on_all_the_data_with_one_warning(
    tmp_path, loader, trainer_kwargs, needs, least
):
    # Pruned, these epochs would have no whole batch (drop_last) or fewer batches than a float limit_train_batches
    # takes: Lightning stopped the fit ("No training batches") or raised from deep inside.
    class Small(Model):
        def train_dataloader(self):
            return DataLoader(Indexed(), shuffle=True, **loader)

    seed_everything(0)
    model, dp = Small(), DataPruning(prune_ratio=0.9, anneal_fraction=0.0)
    with pytest.warns(UserWarning, match=r"DataPruning: epoch \d would keep \d+ of 40 samples, ") as record:
        trainer = fit(tmp_path, model, dp, max_epochs=4, **trainer_kwargs)
    assert trainer.current_epoch == 4 and sorted(model.seen) == [0, 1, 2, 3]  # every epoch ran
    assert min(h["kept"] for h in dp.history) >= least and 40 in [h["planned"] for h in dp.history[1:]]
    (warning,) = [str(w.message) for w in record if "would keep" in str(w.message)]
    assert needs in warning


def test_an_epoch_shorter_than_an_int_val_check_interval_trains_on_all_the_data(tmp_path):
    seed_everything(0)
    model, dp = Drifting(), DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    with pytest.warns(
        UserWarning, match=r"fewer than 9 batch\(es\) of up to 4 per rank .*val_check_interval=9\) needs"
    ):
        trainer = fit(tmp_path, model, dp, max_epochs=3, val_check_interval=9, limit_val_batches=1)
    assert trainer.current_epoch == 3 and [h["kept"] for h in dp.history] == [40, 40, 40]


def test_a_checkpoint_at_the_last_batch_of_a_pruned_epoch_resumes_a_longer_next_epoch_whole(tmp_path):
    # Lightning compares the finished epoch's batch count with the *next* loader's length on resume: an annealing
    # (full) epoch after a pruned one ran only its last batches, without on_train_epoch_start.
    kwargs = {"max_epochs": 4, "limit_val_batches": 0}
    seed_everything(0)
    full, dp_full = Drifting(), DataPruning(0.5, anneal_fraction=0.25)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=1, filename="{step}")
    Trainer(default_root_dir=tmp_path, logger=False, callbacks=[dp_full, ckpt], **QUIET, **kwargs).fit(full)
    batches = [math.ceil(len(full.seen[e]) / 4) for e in range(4)]
    assert batches[2] < batches[3] == 10  # a pruned epoch, then the annealing epoch on all the data
    step = sum(batches[:3])  # the last batch of epoch 2
    seed_everything(0)
    resumed, dp = Drifting(), DataPruning(0.5, anneal_fraction=0.25)
    fit(tmp_path, resumed, dp, ckpt_path=str(tmp_path / "ck" / f"step={step}.ckpt"), **kwargs)
    assert resumed.seen[3] == full.seen[3] and resumed.mismatches == 0
    assert [h["kept"] for h in dp.history] == [h["kept"] for h in dp_full.history]
    assert dp.samples_seen == dp_full.samples_seen


@pytest.mark.parametrize(
    "sampler",
    [
        lambda ds: torch.utils.data.SubsetRandomSampler(range(20)),
        lambda ds: torch.utils.data.WeightedRandomSampler([1.0, 0.0] * 20, num_samples=8),
        lambda ds: torch.utils.data.RandomSampler(ds, num_samples=10),
        lambda ds: torch.utils.data.RandomSampler(ds, replacement=True),
    ],
)
def test_a_sampler_of_the_users_own_is_refused(tmp_path, sampler):
    class OwnSampler(Model):
        def train_dataloader(self):
            ds = Indexed()
            return DataLoader(ds, batch_size=4, sampler=sampler(ds))

    with pytest.raises(ValueError, match=r"the training DataLoader has its own sampler \(\w+.*Subset"):
        fit(tmp_path, OwnSampler(), DataPruning())


@pytest.mark.parametrize(
    ("limits", "full_data"),
    [
        ({"limit_train_batches": 3}, 4 * 3 * 4),  # 3 batches of 4 an epoch, pruned or not: nothing saved
        ({"limit_train_batches": 0.5}, 4 * 5 * 4),  # 5 of the 10 batches
        ({"max_steps": 14, "max_epochs": -1}, 14 * 4),  # bounded by steps: as many full batches as the run took
    ],
)
def test_the_samples_saved_count_only_what_the_trainer_would_have_loaded(tmp_path, limits, full_data):
    monitor = EnergyMonitor(print_summary=False)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.0, keep_steps=True)
    fit(tmp_path, Model(), dp, **{"max_epochs": 4, **limits}, callbacks=[monitor])
    section = monitor.report()["extra"]["data"]
    assert section["samples_full_data"] == full_data
    assert section["samples_seen"] == dp.samples_seen
    assert section["samples_saved"] == full_data - dp.samples_seen
    assert section["training_samples"] == N


class CostsPerSample(Model):
    """Each sample burns the same CPU time, so an epoch's energy follows the samples it loads."""

    def training_step(self, batch, batch_idx):
        busy_cpu(0.004 * len(batch[1]))
        return super().training_step(batch, batch_idx)


def test_the_energy_forecast_counts_the_annealing_epochs_at_all_the_data(tmp_path):
    # Epochs 1-2 keep 26 of 40 samples, epochs 3-5 anneal on all 40: the forecast after epoch 2 took every epoch
    # left to cost as much as a pruned one and fell 20 % short (EnergyBudget's forecast stop came too late).
    monitor = EnergyMonitor(print_summary=False)
    dp = DataPruning(prune_ratio=0.9, anneal_fraction=0.5)
    seen = {}

    def listen(trainer, m):
        planned = dp.planned_samples(trainer, 1), dp.planned_samples(trainer, 4)
        seen[trainer.current_epoch] = (m.forecast_total_j, *planned)

    monitor.add_listener(listen)
    fit(tmp_path, CostsPerSample(), dp, max_epochs=6, callbacks=[monitor])
    assert [h["pruned"] for h in dp.history] == [False, True, True, False, False, False]
    forecast, pruned_epoch, annealing_epoch = seen[2]
    assert (pruned_epoch, annealing_epoch) == (None, N)  # a pruned epoch's kept set is drawn at its start
    assert forecast == pytest.approx(monitor.total_energy_j("fit"), rel=0.1)


class CostsPerStep(Model):
    """keep_steps: every epoch has the full data's steps, and each step costs about the same (an under-used GPU)."""

    def training_step(self, batch, batch_idx):
        busy_cpu(0.02 + 0.0004 * len(batch[1]))
        return super().training_step(batch, batch_idx)


def test_the_forecast_of_annealing_epochs_with_keep_steps_does_not_stop_a_run_within_its_budget(tmp_path):
    # Costing the annealing epochs per sample took a pruned epoch's per-step (and validation) costs for the samples':
    # the forecast was 17 % over, and EnergyBudget(on_forecast="stop") stopped after 2 of 6 epochs a run that fitted.
    from lightning_green import EnergyBudget

    def run(budget=None):
        seed_everything(0)
        monitor = EnergyMonitor(print_summary=False)
        seen = {}
        monitor.add_listener(lambda trainer, m: seen.__setitem__(trainer.current_epoch, m.forecast_total_j))
        callbacks = [monitor] + ([EnergyBudget(max_energy=budget, unit="J", on_forecast="stop")] if budget else [])
        dp = DataPruning(prune_ratio=0.9, anneal_fraction=0.5, keep_steps=True)
        trainer = fit(tmp_path, CostsPerStep(), dp, max_epochs=6, callbacks=callbacks)
        return monitor.total_energy_j("fit"), seen, trainer, callbacks[-1]

    total, seen, _, _ = run()
    assert seen[2] == pytest.approx(total, rel=0.1)
    _, _, trainer, budget = run(budget=1.15 * total)
    assert budget.stopped_reason is None and trainer.current_epoch == 6  # every epoch ran


class WarmsUp(CostsPerSample):
    """The first training batch costs 0.5 CPU-s more (compilation, autotuning): epoch 0 is no model of the others."""

    def training_step(self, batch, batch_idx):
        if self.global_step == 0:
            busy_cpu(0.5)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("prune_ratio", [0.9, 0.0])
def test_the_forecast_of_annealing_epochs_leaves_the_first_epochs_warm_up_out(tmp_path, prune_ratio):
    # Costing the annealing epochs as epoch 0 (the only full-data epoch seen) multiplied its warm-up: +142 % (+91 %
    # with prune_ratio=0, where every epoch was "of a known size").
    monitor = EnergyMonitor(print_summary=False)
    seen = {}
    monitor.add_listener(lambda trainer, m: seen.__setitem__(trainer.current_epoch, m.forecast_total_j))
    fit(
        tmp_path,
        WarmsUp(),
        DataPruning(prune_ratio=prune_ratio, anneal_fraction=0.5),
        max_epochs=6,
        callbacks=[monitor],
    )
    assert seen[2] == pytest.approx(monitor.total_energy_j("fit"), rel=0.1)


@pytest.mark.parametrize(("limits", "fraction"), [({}, None), ({"limit_train_batches": 3}, 1.0)])
def test_the_kept_fraction_is_of_what_the_full_data_loads_under_the_same_limits(tmp_path, limits, fraction):
    # Under limit_train_batches=3 every epoch loads 12 samples pruned or not; kept_fraction said 0.8 (kept / N).
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.0)
    trainer = fit(tmp_path, Model(), dp, **limits)
    last = dp.history[-1]
    assert last["pruned"] and last["kept"] < N
    expected = last["kept"] / N if fraction is None else fraction
    assert float(trainer.callback_metrics["data/kept_fraction"]) == pytest.approx(expected)


def test_a_checkpoint_at_the_last_step_of_the_run_resumes_to_the_same_scores_and_report(tmp_path):
    # Lightning counts the checkpoint's epoch as done and ends the resumed fit at once, without its end hook: the
    # epoch's losses were never merged (history, samples_seen and scores short of one epoch; no report section).
    seed_everything(0)
    full, dp_full = Drifting(), DataPruning(0.5, anneal_fraction=0.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=1, filename="{step}")
    trainer = fit(tmp_path, full, dp_full, max_epochs=3, callbacks=[ckpt], enable_checkpointing=True)
    seed_everything(0)
    monitor = EnergyMonitor(print_summary=False)
    dp = DataPruning(0.5, anneal_fraction=0.0)
    last = str(tmp_path / "ck" / f"step={trainer.global_step}.ckpt")
    fit(tmp_path / "r", Drifting(), dp, max_epochs=3, ckpt_path=last, callbacks=[monitor])
    assert [h["kept"] for h in dp.history] == [h["kept"] for h in dp_full.history]
    assert dp.samples_seen == dp_full.samples_seen
    assert torch.equal(dp.scores.values, dp_full.scores.values)
    assert monitor.report()["extra"]["data"]["epochs"] == 3


def test_an_epoch_resumed_under_another_max_epochs_keeps_its_plan(tmp_path):
    # An annealing epoch (all the data) checkpointed after 5 batches and resumed with a larger max_epochs was
    # re-planned as a pruned one: its last batches came from another order (some samples twice, others never).
    seed_everything(0)
    full, dp_full = Drifting(), DataPruning(0.5, anneal_fraction=0.25)  # epoch 3 of 4 on all the data
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=1, filename="{epoch}-{step}")
    fit(tmp_path, full, dp_full, max_epochs=4, callbacks=[ckpt], enable_checkpointing=True)
    assert not dp_full.history[3]["pruned"] and len(full.seen[3]) == N
    in_epoch_3 = sorted((tmp_path / "ck").glob("epoch=3-*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
    seed_everything(0)
    resumed, dp = Drifting(), DataPruning(0.5, anneal_fraction=0.25)  # 8 epochs: annealing from epoch 6
    fit(tmp_path / "r", resumed, dp, max_epochs=8, ckpt_path=str(in_epoch_3[4]))
    assert resumed.seen[3] == full.seen[3][5 * 4 :]  # the rest of the epoch's own order
    assert not dp.history[3]["pruned"] and dp.history[4]["pruned"]  # later epochs follow the new max_epochs


@pytest.mark.slow
@pytest.mark.parametrize("step", [3, 5])  # mid-epoch 0; its last batch (37 samples: 19 a rank, 5 batches of 4)
def test_ddp_resume_inside_an_epoch_keeps_every_ranks_losses(tmp_path, step):
    script = Path(__file__).with_name("_ddp_data_pruning_resume_script.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    for phase in ("full", "resume"):
        args = [sys.executable, str(script), str(tmp_path), str(step), phase]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    full = torch.load(tmp_path / "full" / "rank0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / "resume" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["scores"] == r1["scores"] == full["scores"]  # both ranks' part of the open epoch came back
    assert r0["kept"] == r1["kept"] and r0["kept"][-1] == full["kept"][-1]
    assert r0["batches"][1:] == full["batches"][1:]


@pytest.mark.parametrize(
    ("limit", "drop_last", "world", "least"),
    [(1 / 161, False, 1, 162), (0.34, True, 1, 3 * 8), (0.5, False, 2, (8 + 1 - 1) * 2 + 1), (1.0, False, 3, 1)],
)
def test_the_fewest_samples_an_epoch_may_keep(limit, drop_last, world, least):
    from types import SimpleNamespace

    trainer = SimpleNamespace(
        limit_train_batches=limit, val_check_interval=1.0, check_val_every_n_epoch=1, limit_val_batches=1.0
    )
    trainer.world_size = world
    loader = SimpleNamespace(batch_size=1 if limit < 0.01 else 8, drop_last=drop_last)
    need, _, geometry = DataPruning()._fewest_batches(trainer, loader)  # int(batches * limit) >= 1, as Lightning counts
    assert next(k for k in range(1, 1000) if epoch_batches(k, 1000, *geometry) >= need) == least


@pytest.mark.parametrize(
    ("n", "world", "size", "drop_last"), [(10, 4, 3, True), (10, 4, 3, False), (1001, 8, 63, True)]
)
def test_planned_samples_of_an_annealing_epoch_are_what_the_ranks_load(n, world, size, drop_last):
    # The forecast matches an annealing epoch to the full-data epochs seen by the samples the monitor counted, DDP's
    # padding included: with drop_last the padding was left out (10 planned, 12 loaded).
    from types import SimpleNamespace

    dp = DataPruning(prune_ratio=0.3)
    dp.scores, dp._anneal_start = SampleScores(n), 1

    def planner(epoch):
        return plan_epoch(SampleScores(n), 0.3, epoch, 0, False, full_data=True)

    loaded = 0
    for rank in range(world):
        sampler = PruningSampler(n, planner, size, drop_last=drop_last, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        shard = len(list(iter(sampler)))
        loaded += (shard // size) * size if drop_last else shard
        dp._sampler = sampler
    trainer = SimpleNamespace(world_size=world, limit_train_batches=1.0)
    assert dp.planned_samples(trainer, 2) == loaded
    assert dp.planned_samples(trainer, 0) is None  # a pruned epoch: drawn at its start
