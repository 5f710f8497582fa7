import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import nn

from lightning_green import GreenRuntimeError, StructuredPruning
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.pruning import load_pruned, macs_fraction

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}


def make_trainer(tmp_path, callbacks, max_epochs=3, **kwargs):
    settings = {
        "default_root_dir": tmp_path,
        "max_epochs": max_epochs,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "logger": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        **QUIET,
    }
    settings.update(kwargs)
    return Trainer(callbacks=callbacks, **settings)


def small_cnn(**kwargs):
    return DigitsCNN(channels=[8, 16], **kwargs)


def data(batch_size=32):
    return DigitsDataModule(batch_size=batch_size)


class OrderedDigits(DigitsDataModule):
    """Unshuffled training batches, so two runs see the same data at the same step."""

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=False)


class Listener(Callback):
    def __init__(self):
        self.changes = []

    def on_workload_changed(self, trainer, pl_module, change):
        self.changes.append(change)


class Losses(Callback):
    def __init__(self):
        self.by_step = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.by_step[trainer.global_step] = float(outputs["loss"])


class Probe(Callback):
    """Copies parameters and optimizer state at the first batch of ``epoch`` (before or after the pruner, by order)."""

    def __init__(self, epoch):
        self.epoch = epoch
        self.params = None
        self.state = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            opt = trainer.optimizers[0]
            self.params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            self.state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in pl_module.named_parameters()}


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"pruning_ratio": 0.0},
            ValueError,
            r"StructuredPruning\(pruning_ratio=0.0\): `pruning_ratio` must be a number > 0 and < 1",
        ),
        ({"pruning_ratio": 1.0}, ValueError, r"`pruning_ratio` must be a number > 0 and < 1"),
        ({"pruning_ratio": "half"}, TypeError, r"`pruning_ratio` must be a number"),
        (
            {"pruning_ratio": 0.5, "target_speedup": 2.0},
            ValueError,
            r"`pruning_ratio` must be None when `target_speedup` is given",
        ),
        ({"target_speedup": 1.0}, ValueError, r"`target_speedup` must be a number > 1"),
        (
            {"importance": "l3"},
            ValueError,
            r"importance='l3'\): `importance` must be one of \('magnitude-l1', 'magnitude-l2', 'taylor'",
        ),
        ({"schedule": "exp"}, ValueError, r"`schedule` must be one of \('linear', 'cubic'\)"),
        ({"start_epoch": 3, "end_epoch": 2}, ValueError, r"start_epoch=3\): `start_epoch` must be <= end_epoch \(2\)"),
        ({"start_epoch": -1}, ValueError, r"`start_epoch` must be an int >= 0"),
        ({"start_step": 5}, ValueError, r"`start_step` must be given together with `end_step`"),
        ({"start_step": 5, "end_step": 2}, ValueError, r"`start_step` must be <= end_step \(2\)"),
        ({"frequency": 0}, ValueError, r"`frequency` must be an int >= 1"),
        ({"global_pruning": 1}, TypeError, r"`global_pruning` must be a bool"),
        ({"round_to": 0}, ValueError, r"`round_to` must be an int >= 1"),
        ({"ignored_layers": "classifier"}, TypeError, r"`ignored_layers` must be a list of strings"),
        ({"max_layer_ratio": 1.0}, ValueError, r"`max_layer_ratio` must be a number > 0 and < 1"),
        ({"pruning_ratio": 0.95}, ValueError, r"`pruning_ratio` must be <= max_layer_ratio \(0.9\) without global"),
        ({"num_heads": {"attn.qkv": 0}}, TypeError, r"`num_heads` must be None or a dict of module name -> number"),
        ({"importance_batches": 0}, ValueError, r"`importance_batches` must be an int >= 1"),
        ({"regularization": "l1"}, ValueError, r"`regularization` must be one of \('none', 'group-norm', 'bn-scale'\)"),
        ({"regularization_strength": 0.0}, ValueError, r"`regularization_strength` must be a number > 0"),
        ({"monitor": "val_acc"}, ValueError, r"max_drop=None\): `max_drop` must be given together with `monitor`"),
        ({"monitor": "val_acc", "max_drop": -0.1}, ValueError, r"`max_drop` must be a number >= 0"),
        ({"monitor": ""}, TypeError, r"`monitor` must be None or the name of a logged validation metric"),
        ({"mode": "best"}, ValueError, r"`mode` must be one of \('max', 'min'\)"),
        ({"verbose": "yes"}, TypeError, r"`verbose` must be a bool"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        StructuredPruning(**kwargs)


def test_ignored_layer_that_matches_nothing_fails_in_setup(tmp_path):
    trainer = make_trainer(tmp_path, [StructuredPruning(ignored_layers=["features.0", "backbone.*"])])
    with pytest.raises(
        ValueError, match=r"`ignored_layers` must be .*'backbone\.\*' matches none \(modules: 'features'"
    ):
        trainer.fit(small_cnn(), data())


@pytest.mark.parametrize(
    "strategy", [FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)], ids=["fsdp", "deepspeed"]
)
def test_sharded_strategies_are_refused(strategy):
    trainer = SimpleNamespace(strategy=strategy, max_epochs=3, callbacks=[])
    with pytest.raises(ValueError, match=r"`strategy` must be a single device or 'ddp' \(sharded parameters"):
        StructuredPruning().setup(trainer, small_cnn(), "fit")


def test_open_ended_training_needs_an_end_epoch():
    from lightning.pytorch.strategies import SingleDeviceStrategy

    trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"), max_epochs=-1, callbacks=[])
    with pytest.raises(ValueError, match=r"end_epoch=None\): `end_epoch` must be an int when the Trainer has no"):
        StructuredPruning().setup(trainer, small_cnn(), "fit")


@pytest.mark.slow
def test_ddp_spawn_fails_early_and_names_ddp(tmp_path):
    trainer = make_trainer(tmp_path, [StructuredPruning()], strategy="ddp_spawn", devices=2)
    with pytest.raises(Exception, match=r'`strategy` must be \'ddp\' \(use Trainer\(strategy="ddp"\)\)'):
        trainer.fit(small_cnn(), data())


def test_taylor_without_an_optimizer_is_refused(tmp_path):
    class NoOptimizer(DigitsCNN):
        def configure_optimizers(self):
            return None

    trainer = make_trainer(tmp_path, [StructuredPruning(importance="taylor")])
    with pytest.raises(GreenRuntimeError, match=r"`importance` must be a criterion without gradients .*no gradients"):
        trainer.fit(NoOptimizer(channels=[8, 16]), data())


def test_taylor_without_gradients_on_the_prunable_layers_is_refused(tmp_path):
    class DetachedFeatures(DigitsCNN):
        def training_step(self, batch, batch_idx):  # only the (never pruned) classifier learns
            x, y = batch
            features = torch.flatten(self.pool(self.features(x)), 1).detach()
            return F.cross_entropy(self.classifier(features), y)

    trainer = make_trainer(tmp_path, [StructuredPruning(importance="taylor", importance_batches=2)])
    with pytest.raises(GreenRuntimeError, match=r"importance=.taylor.\): .*no gradient reached the layers it"):
        trainer.fit(DetachedFeatures(channels=[8, 16]), data())


def test_monitor_that_is_never_logged_is_reported(tmp_path):
    pruning = StructuredPruning(monitor="val_f1", max_drop=0.1, start_epoch=1, end_epoch=1)
    with pytest.raises(RuntimeError, match=r"monitor='val_f1'\): `monitor` was not logged before prune 1 \(logged: \["):
        make_trainer(tmp_path, [pruning]).fit(small_cnn(), data())


# --------------------------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("importance", ["magnitude-l1", "magnitude-l2", "taylor", "bn-scale", "lamp", "random"])
def test_each_importance_prunes_per_the_linear_schedule(tmp_path, importance):
    widths = []

    class Widths(Callback):
        def on_workload_changed(self, trainer, pl_module, change):
            widths.append((pl_module.features[0].out_channels, pl_module.features[3].out_channels))

    pruning = StructuredPruning(
        pruning_ratio=0.5, importance=importance, start_epoch=1, end_epoch=2, importance_batches=2, verbose=False
    )
    model = small_cnn()
    make_trainer(tmp_path, [pruning, Widths()]).fit(model, data())
    assert widths == [(6, 12), (4, 8)]  # 25 % of the dense channels gone, then 50 %
    assert pruning.speedup > 3.0
    assert model(torch.zeros(2, 1, 24, 24)).shape == (2, 10)


@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_macs_fall_per_the_schedule_towards_the_target_speedup(tmp_path, schedule):
    listener = Listener()
    pruning = StructuredPruning(target_speedup=3.0, schedule=schedule, start_epoch=1, end_epoch=3, verbose=False)
    make_trainer(tmp_path, [pruning, listener], max_epochs=4).fit(DigitsCNN(channels=[16, 32]), data())
    dense = pruning.dense_macs
    macs = [c.details["macs"] for c in listener.changes]
    assert len(macs) == 3 and macs == sorted(macs, reverse=True)
    for k, m in enumerate(macs, start=1):
        goal = dense * macs_fraction(3.0, schedule, k, 3)
        assert 0.8 * goal < m <= goal
    assert pruning.speedup >= 3.0
    if schedule == "cubic":  # front-loaded: most of the way after the first prune (linear: a third of it)
        assert macs[0] < dense * 0.6


def test_pruned_layers_keep_training_and_adam_moments_follow_their_channels(tmp_path):
    before, after = Probe(epoch=1), Probe(epoch=1)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = make_trainer(tmp_path, [before, pruning, after], max_epochs=2)
    model = small_cnn()
    trainer.fit(model, data())
    assert model.features[0].out_channels == 4
    opt = trainer.optimizers[0]
    optimized = {p for group in opt.param_groups for p in group["params"]}
    for name, p in model.named_parameters():
        assert p in optimized, name
        assert opt.state[p]["exp_avg"].shape == p.shape, name
        assert not torch.equal(p.detach(), after.params[name]), f"{name} did not train after the prune"
    # The first conv lost output channels only: each surviving filter is an old one, and carries its own moments.
    old_w, new_w = before.params["features.0.weight"], after.params["features.0.weight"]
    kept0 = [next(j for j in range(8) if torch.equal(old_w[j], new_w[i])) for i in range(4)]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(after.state["features.0.weight"][key], before.state["features.0.weight"][key][kept0])
    assert torch.equal(after.state["features.0.weight"]["step"], before.state["features.0.weight"]["step"])
    # The second conv was cut on both sides: its inputs are the first conv's survivors.
    old_w, new_w = before.params["features.3.weight"], after.params["features.3.weight"]
    kept3 = [next(j for j in range(16) if torch.equal(old_w[j][kept0], new_w[i])) for i in range(8)]
    for key in ("exp_avg", "exp_avg_sq"):
        old_m = before.state["features.3.weight"][key]
        assert torch.equal(after.state["features.3.weight"][key], old_m[kept3][:, kept0])


def test_learning_rate_schedule_is_unaffected(tmp_path):
    def lrs(callbacks):
        seen = []

        class LR(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                seen.append(trainer.optimizers[0].param_groups[0]["lr"])

        trainer = make_trainer(tmp_path, [*callbacks, LR()], max_epochs=4)
        trainer.fit(small_cnn(), data())
        return seen, trainer.lr_scheduler_configs[0].scheduler.last_epoch

    dense, dense_epoch = lrs([])
    pruned, pruned_epoch = lrs([StructuredPruning(start_epoch=1, end_epoch=2, verbose=False)])
    assert len(set(dense)) > 2  # the cosine schedule really moves
    assert pruned == pytest.approx(dense, rel=1e-12)
    assert pruned_epoch == dense_epoch == 4


def test_resume_mid_pruning_gives_the_same_architecture_and_losses(tmp_path):
    def run(root, ckpt_path=None):
        seed_everything(0, verbose=False)
        losses = Losses()
        pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=3, verbose=False)
        checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
        trainer = make_trainer(root, [pruning, losses, checkpoints], max_epochs=4, enable_checkpointing=True)
        model = small_cnn()
        trainer.fit(model, OrderedDigits(batch_size=32), ckpt_path=ckpt_path)
        return model, losses.by_step, pruning

    full, full_losses, full_pruning = run(tmp_path / "a")
    ckpt = tmp_path / "a" / "epoch=1-step=6.ckpt"
    assert ckpt.exists(), os.listdir(tmp_path / "a")
    resumed, resumed_losses, resumed_pruning = run(tmp_path / "b", ckpt_path=ckpt)
    assert min(resumed_losses) == 7  # it really resumed after epoch 1 (steps 1-6)
    assert {k: v.shape for k, v in resumed.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
    runs = (full_pruning, resumed_pruning)
    untimed = [[{k: v for k, v in e.items() if k != "check_s"} for e in p.history] for p in runs]
    assert untimed[0] == untimed[1]
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_losses[step], rel=1e-5, abs=1e-6), step


def test_checkpoint_loads_weights_only_and_rebuilds_for_inference_and_validation(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    pruning = StructuredPruning(target_speedup=2.0, start_epoch=1, end_epoch=1, verbose=False)
    model = small_cnn()
    make_trainer(tmp_path, [pruning, checkpoints], max_epochs=2, enable_checkpointing=True).fit(model, data())
    path = tmp_path / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["callbacks"]["StructuredPruning"]
    assert state["version"] == 1 and len(state["history"]) == 1
    name, is_out, idxs = state["history"][0]["entries"][0]
    assert type(name) is str and type(is_out) is bool and all(type(i) is int for i in idxs)

    restored = load_pruned(small_cnn(), path).eval()
    x = torch.randn(5, 1, 24, 24)
    assert torch.equal(restored(x), model.eval()(x))

    fresh = small_cnn()
    trainer = make_trainer(tmp_path, [StructuredPruning(verbose=False)])
    (metrics,) = trainer.validate(fresh, data(), ckpt_path=path, verbose=False)
    assert fresh.features[0].out_channels == model.features[0].out_channels
    assert "val_acc" in metrics


def test_a_pruned_checkpoint_loads_through_lightning_without_the_callback(tmp_path):
    # DigitsCNN.load_from_checkpoint and validate(ckpt_path=) without StructuredPruning failed with torch's size
    # mismatch (15-23 lines); modules with LoadsPrunedCheckpoints (the demos) rebuild the pruned shapes first.
    from lightning_green.pruning import LoadsPrunedCheckpoints

    class Plain(LightningModule):  # a user's module without the mixin: Lightning's own error, as before
        def __init__(self):
            super().__init__()
            self.net = small_cnn()
            self.example_input_array = torch.zeros(1, 1, 24, 24)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Mine(LoadsPrunedCheckpoints, Plain):
        pass

    x = torch.randn(5, 1, 24, 24)
    for cls, folder in ((DigitsCNN, "demo"), (Mine, "mine")):
        checkpoints = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True)
        pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
        model = small_cnn() if cls is DigitsCNN else Mine()
        trainer = make_trainer(tmp_path, [pruning, checkpoints], max_epochs=2, enable_checkpointing=True)
        trainer.fit(model, data())
        path = tmp_path / folder / "last.ckpt"
        loaded = cls.load_from_checkpoint(path, map_location="cpu").eval()
        assert torch.equal(loaded(x), model.eval()(x))
    fresh = small_cnn()
    (metrics,) = make_trainer(tmp_path, []).validate(fresh, data(), ckpt_path=tmp_path / "demo" / "last.ckpt")
    assert fresh.features[0].out_channels == 4 and "val_acc" in metrics
    with pytest.raises(RuntimeError, match="size mismatch"):
        Plain.load_from_checkpoint(tmp_path / "mine" / "last.ckpt")


def test_metrics_reach_every_logger_and_listeners_hear_each_prune(tmp_path):
    listener = Listener()
    logger = CSVLogger(tmp_path, name="csv")
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False)
    make_trainer(tmp_path, [pruning, listener], logger=logger).fit(small_cnn(), data())
    assert [c.reason for c in listener.changes] == ["pruning", "pruning"]
    assert listener.changes[-1].source == "StructuredPruning"
    assert listener.changes[-1].details["speedup"] == pytest.approx(pruning.speedup)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("pruning/step")]
    assert [float(r["pruning/step"]) for r in rows] == [1.0, 2.0]
    assert float(rows[-1]["pruning/speedup"]) == pytest.approx(pruning.speedup)
    assert float(rows[-1]["pruning/macs"]) == pytest.approx(pruning.macs)
    assert float(rows[-1]["pruning/params"]) == pruning.params < pruning.dense_params


class ParamCountScore(DigitsCNN):
    """Validation "score" = parameter count: any prune makes it worse."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val_score", float(sum(p.numel() for p in self.parameters())))


@pytest.mark.parametrize("max_drop", [1.0, 1e9])
def test_accuracy_guard_rolls_back_model_and_optimizer_and_stops(tmp_path, max_drop):
    before = Probe(epoch=1)
    pruning = StructuredPruning(
        pruning_ratio=0.5, start_epoch=1, end_epoch=2, monitor="val_score", max_drop=max_drop, verbose=False
    )
    model = ParamCountScore(channels=[8, 16])
    trainer = make_trainer(tmp_path, [before, pruning], max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(model, data())
    if max_drop > 1e6:
        assert not pruning.stopped and len(pruning.history) == 2 and model.features[0].out_channels == 4
        return
    assert pruning.stopped and pruning.history == [] and len(pruning.rollbacks) == 1
    assert pruning.speedup == 1.0
    assert model.features[0].out_channels == 8 and model.features[3].out_channels == 16
    opt = trainer.optimizers[0]
    for name, p in model.named_parameters():
        assert p in {q for g in opt.param_groups for q in g["params"]}
        assert opt.state[p]["exp_avg"].shape == p.shape
        assert not torch.equal(p.detach(), before.params[name])  # restored at the prune, then trained on


@pytest.mark.parametrize(("monitor", "mode"), [(None, "max"), ("val_loss", "min")])
def test_a_resume_watching_another_metric_drops_the_checkpoints_guard(tmp_path, monitor, mode):
    # The checkpoint (step 4) is inside prune 1's fine-tune window, its guard's baseline a value of val_score.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    first = StructuredPruning(
        pruning_ratio=0.3, start_epoch=1, end_epoch=2, monitor="val_score", max_drop=1e9, verbose=False
    )
    make_trainer(tmp_path, [first, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        ParamCountScore(channels=[8, 16]), data()
    )
    drop = None if monitor is None else 1e9
    resumed = StructuredPruning(
        pruning_ratio=0.3, start_epoch=1, end_epoch=2, monitor=monitor, mode=mode, max_drop=drop, verbose=False
    )
    trainer = make_trainer(tmp_path, [resumed], max_epochs=3)
    with pytest.warns(UserWarning, match=r"guard of prune 1 watched monitor='val_score' \(mode='max'\).*not checked"):
        trainer.fit(ParamCountScore(channels=[8, 16]), data(), ckpt_path=tmp_path / "ckpt" / "step=4.ckpt")
    assert resumed.rollbacks == [] and len(resumed.history) == 2


def _widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


class SteadyScore(DigitsCNN):
    """Validation "score" that no prune changes."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val_score", 1.0)


def test_reused_for_a_new_model_after_a_rollback_stopped_it_prunes_the_new_one(tmp_path):
    pruning = StructuredPruning(
        pruning_ratio=0.5, start_epoch=1, end_epoch=2, monitor="val_score", max_drop=1.0, verbose=False
    )
    make_trainer(tmp_path, [pruning], num_sanity_val_steps=0).fit(ParamCountScore(channels=[8, 16]), data())
    assert pruning.stopped and pruning.history == []  # the guard rolled the first prune back
    model = SteadyScore(channels=[8, 16])
    make_trainer(tmp_path, [pruning], num_sanity_val_steps=0).fit(model, data())
    assert not pruning.stopped and _widths(model) == [4, 8]


def test_a_resume_with_another_pruning_ratio_cuts_to_the_new_ratio_not_past_it(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    first = StructuredPruning(pruning_ratio=0.6, start_epoch=1, end_epoch=3, verbose=False)
    make_trainer(tmp_path, [first, ckpt], max_epochs=2, enable_checkpointing=True).fit(small_cnn(), data())
    assert first.prunes_done == 1  # at epoch 1 of 3 prunes: 0.2 of the channels gone
    resumed_model, fresh_model = small_cnn(), small_cnn()
    resumed = StructuredPruning(pruning_ratio=0.3, start_epoch=1, end_epoch=3, verbose=False)
    make_trainer(tmp_path, [resumed], max_epochs=4).fit(
        resumed_model, data(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    make_trainer(tmp_path / "fresh", [StructuredPruning(pruning_ratio=0.3, start_epoch=1, end_epoch=3, verbose=False)],
                 max_epochs=4).fit(fresh_model, data())  # fmt: skip
    assert _widths(resumed_model) == _widths(fresh_model)  # not 0.2 of the channels, then 0.3 of the rest


def test_a_second_fit_with_more_epochs_does_not_cut_past_the_pruning_ratio(tmp_path):
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, verbose=False)
    model = small_cnn()
    trainer = make_trainer(tmp_path, [pruning], max_epochs=4)
    trainer.fit(model, data())
    widths = _widths(model)
    assert widths == [4, 8]
    trainer.fit_loop.max_epochs = 8  # continue: the default end_epoch grows with max_epochs (more prune points)
    trainer.fit(model, data())
    assert _widths(model) == widths


def test_a_resumed_schedule_that_cannot_reach_its_goal_or_runs_prunes_back_to_back_warns(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    first = StructuredPruning(target_speedup=3.0, start_epoch=1, end_epoch=3, verbose=False)
    make_trainer(tmp_path, [first, ckpt], max_epochs=2, enable_checkpointing=True).fit(small_cnn(), data())
    ended = StructuredPruning(target_speedup=3.0, start_epoch=1, end_epoch=1, verbose=False)
    trainer = make_trainer(tmp_path, [ended], max_epochs=3)
    with pytest.warns(UserWarning, match=r"made 1 prunes and this schedule has 1 prune points.*not reached"):
        trainer.fit(small_cnn(), data(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    plain = ModelCheckpoint(dirpath=tmp_path / "plain", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    make_trainer(tmp_path, [plain], max_epochs=2, enable_checkpointing=True).fit(small_cnn(), data())
    added = StructuredPruning(target_speedup=3.0, start_epoch=1, end_epoch=3, verbose=False)
    trainer = make_trainer(tmp_path, [added], max_epochs=4)
    with pytest.warns(UserWarning, match=r"at epoch 2, 2 prunes are already due \(at epochs 1, 2\)"):
        trainer.fit(small_cnn(), data(), ckpt_path=tmp_path / "plain" / "epoch=1.ckpt")


def test_reused_for_a_new_model_in_a_new_trainer_prunes_it_from_the_start(tmp_path):
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, verbose=False)
    first, second = small_cnn(), small_cnn()
    make_trainer(tmp_path, [pruning], max_epochs=2).fit(first, data())
    make_trainer(tmp_path, [pruning], max_epochs=2).fit(second, data())  # e.g. the real run after a smoke test
    assert _widths(second) == _widths(first) == [4, 8]
    assert len(pruning.history) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_speedup": 3.0, "importance": "taylor", "importance_batches": 4},  # prunes wait for their window
        {"target_speedup": 200.0},  # out of reach (layers keep a channel): said at the prune itself
    ],
    ids=["importance-window", "unreachable"],
)
def test_a_resume_with_the_same_schedule_warns_nothing_of_it(tmp_path, kwargs):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    first = StructuredPruning(start_epoch=1, end_epoch=3, verbose=False, **kwargs)
    make_trainer(tmp_path, [first, ckpt], max_epochs=5, enable_checkpointing=True).fit(small_cnn(), data())
    for name in ("epoch=1.ckpt", "epoch=4.ckpt"):
        resumed = StructuredPruning(start_epoch=1, end_epoch=3, verbose=False, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(tmp_path, [resumed], max_epochs=5).fit(small_cnn(), data(), ckpt_path=tmp_path / "ckpt" / name)
        said = [str(w.message) for w in caught if "already due" in str(w.message) or "none is left" in str(w.message)]
        assert said == [], name


def test_a_target_speedup_run_saves_no_share_of_channels_for_a_ratio_resume(tmp_path):
    # A resume by `pruning_ratio` cannot know what share a target_speedup run cut: saved as unknown, not 0.
    pruning = StructuredPruning(target_speedup=2.0, start_epoch=0, end_epoch=0, verbose=False)
    trainer = make_trainer(tmp_path, [pruning], max_epochs=1)
    trainer.fit(small_cnn(), data())
    assert len(pruning.history) == 1 and pruning.state_dict()["ratio_done"] is None


def test_validate_from_a_checkpoint_with_another_monitor_says_nothing_of_the_guard(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    first = StructuredPruning(
        pruning_ratio=0.3, start_epoch=1, end_epoch=2, monitor="val_score", max_drop=1e9, verbose=False
    )
    make_trainer(tmp_path, [first, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        ParamCountScore(channels=[8, 16]), data()
    )
    trainer = make_trainer(tmp_path, [StructuredPruning(pruning_ratio=0.3, start_epoch=1, end_epoch=2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(ParamCountScore(channels=[8, 16]), data(), ckpt_path=tmp_path / "ckpt" / "step=4.ckpt")
    assert not [w for w in caught if "accuracy guard" in str(w.message)]


@pytest.mark.parametrize("regularization", ["group-norm", "bn-scale"])
def test_sparsity_regularisation_shrinks_what_it_targets(tmp_path, regularization):
    def bn_and_conv_norms(callbacks):
        seed_everything(0, verbose=False)
        model = small_cnn()
        make_trainer(tmp_path, callbacks, max_epochs=1).fit(model, OrderedDigits(batch_size=32))
        bn = sum(float(m.weight.abs().sum()) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        conv = sum(float(m.weight.norm()) for m in model.modules() if isinstance(m, nn.Conv2d))
        return bn, conv

    plain = bn_and_conv_norms([StructuredPruning(start_epoch=5, end_epoch=5, verbose=False)])
    reg = StructuredPruning(
        start_epoch=5, end_epoch=5, regularization=regularization, regularization_strength=0.5, verbose=False
    )
    regularised = bn_and_conv_norms([reg])
    assert regularised[0] < plain[0]
    if regularization == "group-norm":
        assert regularised[1] < plain[1]


def test_frozen_module_is_never_cut_nor_unfrozen(tmp_path):
    model = DigitsCNN(channels=[8, 16, 32])
    model.features[3].requires_grad_(False)
    make_trainer(tmp_path, [StructuredPruning(start_epoch=1, end_epoch=1, verbose=False)], max_epochs=2).fit(
        model, data()
    )
    assert tuple(model.features[3].weight.shape) == (16, 8, 3, 3)
    assert not model.features[3].weight.requires_grad
    assert model.features[7].out_channels == 16


def test_step_schedule_prunes_at_the_given_global_steps(tmp_path):
    steps = []

    class At(Callback):
        def on_workload_changed(self, trainer, pl_module, change):
            steps.append(trainer.global_step)

    pruning = StructuredPruning(start_step=2, end_step=5, frequency=3, verbose=False)
    make_trainer(tmp_path, [pruning, At()], max_epochs=2).fit(small_cnn(), data())
    assert steps == [2, 5]
    assert [e["global_step"] for e in pruning.history] == [2, 5]


class Unlogged(DigitsCNN):
    """DigitsCNN without self.log in training_step (dynamo cannot trace Lightning's logging)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass


@pytest.mark.parametrize("what", ["lightning-module", "submodule"])
def test_compiled_module_is_pruned_through_its_original(tmp_path, what):
    model = Unlogged(channels=[8, 16])
    if what == "submodule":
        model.features = torch.compile(model.features, backend="eager")
    pruning = StructuredPruning(target_speedup=2.0, start_epoch=1, end_epoch=1, verbose=False)
    losses = Losses()
    trainer = make_trainer(tmp_path, [pruning, losses], max_epochs=2)
    trainer.fit(torch.compile(model, backend="eager") if what == "lightning-module" else model, data())
    first_conv = model.features._orig_mod[0] if what == "submodule" else model.features[0]
    assert pruning.dense_macs > 700_000 and pruning.speedup >= 2.0  # MACs of the real layers, not 0
    assert first_conv.out_channels < 8
    assert max(losses.by_step) == 6  # trained on after the prune


class AttentionClassifier(LightningModule):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.emb = nn.Linear(8, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc = nn.Linear(d, 10)
        self.example_input_array = torch.zeros(1, 8, 8)

    def forward(self, x):
        h = self.emb(x)
        a = self.ln(h)
        return self.fc((h + self.attn(a, a, a, need_weights=False)[0]).mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x.view(-1, 24, 24)[:, ::3, ::3]), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_attention_model_trains_through_the_prune(tmp_path):
    model = AttentionClassifier()
    before, after = Probe(epoch=1), Probe(epoch=1)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    make_trainer(tmp_path, [before, pruning, after], max_epochs=2).fit(model, data())
    assert model.attn.embed_dim == 16 and model.attn.in_proj_weight.shape == (48, 16)
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), after.params[name]), name
        assert after.state[name]["exp_avg"].shape == p.shape
    # in_proj_weight was cut on both sides; its moments were carried, not restarted.
    assert int(after.state["attn.in_proj_weight"]["step"]) == int(before.state["attn.in_proj_weight"]["step"]) > 0
    assert float(after.state["attn.in_proj_weight"]["exp_avg_sq"].abs().sum()) > 0


@pytest.mark.slow
def test_ddp_ranks_prune_the_same_channels_and_stay_identical(tmp_path):
    script = Path(__file__).with_name("_ddp_pruning_script.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["history"] == rank1["history"] and len(rank0["history"]) == 2
    assert rank0["state"]["features.0.weight"].shape[0] == 4  # pruned from 8
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name


def test_example_config_builds_the_callback_through_the_cli(tmp_path):
    from lightning_green.cli import cli

    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "pruning.yaml"
    built = cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    (pruning,) = [cb for cb in built.trainer.callbacks if isinstance(cb, StructuredPruning)]
    assert (pruning.target_speedup, pruning.importance, pruning.schedule) == (2.5, "taylor", "cubic")
    assert (pruning.monitor, pruning.max_drop) == ("val_acc", 0.05)


def test_a_speedup_target_already_met_cuts_nothing_and_stays_quiet(tmp_path, recwarn):
    listener = Listener()
    # One channel less in each conv is the smallest cut, and it already meets the second prune's target.
    pruning = StructuredPruning(target_speedup=1.2, start_epoch=1, end_epoch=2, verbose=False)
    make_trainer(tmp_path, [pruning, listener]).fit(small_cnn(), data())
    assert pruning.prunes_done == 2 and pruning.finished
    assert len(pruning.history) == len(listener.changes) == 1
    assert pruning.speedup >= 1.2
    assert not [w for w in recwarn if "removed no channel" in str(w.message) or "StructuredPruning" in str(w.message)]
    assert not pruning.stopped


def test_a_crash_takes_the_restore_hook_off_the_module_and_frees_snapshots(tmp_path):
    class Crash(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("boom")

    model = small_cnn()
    pruning = StructuredPruning(pruning_ratio=0.3, start_epoch=1, end_epoch=1, monitor="val_acc", max_drop=0.5)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(tmp_path, [pruning, Crash()], max_epochs=4).fit(model, data())
    assert pruning.history  # it pruned before the crash
    assert "on_load_checkpoint" not in vars(model)  # the module is the user's again (picklable, no closure)
    assert pruning._snapshot is None
