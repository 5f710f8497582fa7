import json
import math
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_green import AMPScheduler
from lightning_green.demos import DigitsCNN, DigitsDataModule
from lightning_green.precision import resolve_policy
from tests.helpers import DestroyProcessGroupAtExit

NAMES = {torch.float32: "32", torch.bfloat16: "bf16", torch.float16: "16"}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster, and immune to a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Recorder(LightningModule):
    """A small BatchNorm + Linear model that records the dtype it computes in, and can misbehave on cue.

    ``nan_steps``: global steps whose input is multiplied by NaN (non-finite activations, loss, gradients and
    BatchNorm statistics), on every rank or only on ``nan_rank``. ``loss_nan_steps``: steps whose loss alone is
    NaN (a detached term: the gradients stay finite, so under DDP only that rank can see it). ``storm_steps``:
    global steps whose fp16 backward overflows (a finite loss whose fp16 gradient exceeds 65504 whatever the loss
    scale). ``manual``: manual optimization, stepping every ``step_every`` batches.
    """

    def __init__(
        self, nan_steps=(), nan_rank=None, loss_nan_steps=(), storm_steps=(), manual=False, step_every=1, out_dir=None
    ):
        super().__init__()
        self.loss_nan_steps = set(loss_nan_steps)
        self.bn = nn.BatchNorm1d(16)
        self.layer = nn.Linear(16, 4)
        self.nan_steps, self.nan_rank, self.storm_steps = set(nan_steps), nan_rank, set(storm_steps)
        self.automatic_optimization = not manual
        self.step_every = step_every
        self.out_dir = out_dir
        self.train_log: list[tuple[int, int, int, str]] = []  # (epoch, global_step, batch_idx, dtype)
        self.val_log: list[tuple[int, str]] = []
        self.seen = 0

    def forward(self, x):
        return self.layer(self.bn(x))

    def _loss(self, x):
        mine = self.nan_rank in (None, self.global_rank)
        if self.global_step in self.nan_steps and mine:
            x = x * float("nan")
        out = self(x)
        self.train_log.append((self.current_epoch, self.global_step, self.seen, NAMES[out.dtype]))
        if self.global_step in self.storm_steps and out.dtype == torch.float16:
            return out.float().sum() * 1e8
        loss = out.float().pow(2).mean()
        if self.global_step in self.loss_nan_steps and mine:
            loss = loss + torch.tensor(float("nan"), device=loss.device)
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch[0])
        self.seen += 1
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        self.manual_backward(loss / self.step_every)
        if self.seen % self.step_every == 0:
            opt.step()
            opt.zero_grad()
        return None

    def validation_step(self, batch, batch_idx):
        self.val_log.append((self.current_epoch, NAMES[self(batch[0]).dtype]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 16, generator=g)), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 16)), batch_size=8)

    def on_train_end(self):
        if self.out_dir is not None:  # ddp_spawn: report from each worker
            finite = all(
                torch.isfinite(t).all() for t in [*self.parameters(), *self.buffers()] if t.is_floating_point()
            )
            amp = next(cb for cb in self.trainer.callbacks if isinstance(cb, AMPScheduler))
            Path(self.out_dir, f"rank{self.global_rank}.json").write_text(
                json.dumps({"log": self.train_log, "finite": bool(finite), "fallbacks": amp.fallbacks})
            )


def make_trainer(tmp_path, callbacks, **kwargs):
    opts = dict(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        accelerator="cpu",
        devices=1,
    )
    opts.update(kwargs)
    return Trainer(callbacks=callbacks, **opts)


def steps_by_dtype(model):
    """{global_step: dtype} of the training batches (checks one dtype per step)."""
    out: dict[int, str] = {}
    for _, step, _, dtype in model.train_log:
        assert out.setdefault(step, dtype) == dtype, f"dtype changed inside step {step}"
    return out


def all_finite(module):
    return all(torch.isfinite(t).all() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())


# ---------------------------------------------------------------------------------------------- schedules
def test_dtype_follows_epoch_schedule_in_training_and_validation(tmp_path):
    model = Recorder()
    amp = AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed", 3: "32-true"})
    make_trainer(tmp_path, [amp], max_epochs=4, limit_train_batches=2, num_sanity_val_steps=1).fit(model)
    by_epoch = {}
    for epoch, _, _, dtype in model.train_log:
        by_epoch.setdefault(epoch, set()).add(dtype)
    assert by_epoch == {0: {"32"}, 1: {"bf16"}, 2: {"bf16"}, 3: {"32"}}
    # sanity check (epoch 0) + one validation batch after each epoch, each in that epoch's mode
    assert model.val_log == [(0, "32"), (0, "32"), (1, "bf16"), (2, "bf16"), (3, "32")]
    assert [(s["epoch"], s["to"], s["cause"]) for s in amp.switches] == [
        (1, "bf16-mixed", "schedule"),
        (3, "32-true", "schedule"),
    ]


def test_dtype_follows_step_schedule_and_switches_only_between_accumulation_windows(tmp_path):
    model = Recorder()
    amp = AMPScheduler(schedule={0: "32-true", 3: "bf16-mixed", 5: "32-true"}, interval="step")
    make_trainer(tmp_path, [amp], max_epochs=2, limit_train_batches=6, accumulate_grad_batches=2).fit(model)
    expected = {s: "bf16" if 3 <= s < 5 else "32" for s in range(6)}
    assert steps_by_dtype(model) == expected  # one dtype per 2-batch window, switched where the schedule says
    assert len(model.train_log) == 12


def test_shortcuts_warmup_and_final_fp32_epochs(tmp_path):
    model = Recorder()
    amp = AMPScheduler(policy="bf16-mixed", warmup_epochs=1, final_fp32_epochs=1)
    make_trainer(tmp_path, [amp], max_epochs=4, limit_train_batches=1).fit(model)
    assert [dtype for *_, dtype in model.train_log] == ["32", "bf16", "bf16", "32"]


def test_auto_policy_says_what_it_picked(tmp_path, caplog):
    amp = AMPScheduler()
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, [amp], max_epochs=1, limit_train_batches=1).fit(Recorder())
    assert amp.choice == resolve_policy("auto", "cpu")
    assert f"AMPScheduler: policy='auto' picked {amp.choice.mode}: {amp.choice.reason}." in caplog.text


def test_switch_announces_workload_change_and_trainer_plugin_is_restored(tmp_path):
    heard = []

    class Listener(Callback):
        def on_workload_changed(self, trainer, pl_module, change):
            heard.append((change.reason, change.source, change.details))

    model = Recorder()
    trainer = make_trainer(tmp_path, [AMPScheduler(schedule={1: "bf16-mixed"}), Listener()])
    original = trainer.strategy.precision_plugin
    trainer.fit(model)
    assert heard == [
        ("precision", "AMPScheduler", {"precision": "bf16-mixed", "previous": "32-true", "cause": "schedule"})
    ]
    assert trainer.strategy.precision_plugin is original
    trainer.validate(model, verbose=False)
    assert model.val_log[-1][1] == "32"  # later stages run in the Trainer's own precision


class ListLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "list"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append({**metrics, "step": step})

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_logs_mode_scale_and_fallbacks_to_every_logger(tmp_path):
    memory = ListLogger()
    csv = CSVLogger(tmp_path, name="csv")
    model = Recorder(nan_steps={2})
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=1)
    make_trainer(tmp_path, [amp], logger=[csv, memory], log_every_n_steps=1, max_epochs=1, limit_val_batches=0).fit(
        model
    )
    rows = [r for r in memory.rows if "precision/mode" in r]
    assert [r["precision/mode"] for r in rows] == [16.5, 16.5, 16.5, 32.0]  # bf16 → 16.5, fp32 → 32
    assert [r["precision/fallbacks"] for r in rows] == [0, 0, 1, 1]
    assert [r["precision/skipped_steps"] for r in rows] == [0, 0, 1, 1]
    assert all(r["precision/loss_scale"] == 1.0 for r in rows)
    header = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"precision/mode", "precision/loss_scale", "precision/fallbacks"} <= set(header)


def test_logs_every_n_steps_and_after_each_switch(tmp_path):
    memory = ListLogger()
    amp = AMPScheduler(schedule={0: "32-true", 4: "bf16-mixed"}, interval="step")
    make_trainer(tmp_path, [amp], logger=memory, log_every_n_steps=3, limit_val_batches=0).fit(Recorder())
    rows = [(r["step"], r["precision/mode"]) for r in memory.rows if "precision/mode" in r]
    # at Lightning's logging step (the loss's): first batch (0), steps 2 and 5 (every 3rd batch: 2, 5), and the
    # first bf16 batch (global_step 4 is batch 4 here)
    assert rows == [(0, 32.0), (2, 32.0), (4, 16.5), (5, 16.5)]


# ---------------------------------------------------------------------------------------------- fallback
class NaNDigits(DigitsCNN):
    """The demo CNN whose input turns NaN at chosen global steps."""

    def __init__(self, nan_steps=(), **kwargs):
        super().__init__(**kwargs)
        self.nan_steps = set(nan_steps)
        self.modes: dict[int, torch.dtype] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step in self.nan_steps:
            x = x * float("nan")
        low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        self.modes[self.global_step] = low
        return self._step((x, y), "train")


def _digits_run(tmp_path, nan_steps, amp):
    torch.manual_seed(0)
    model = NaNDigits(nan_steps=nan_steps, channels=[8, 16], lr=1e-2)
    data = DigitsDataModule(batch_size=128, image_size=8)
    trainer = make_trainer(tmp_path, [amp], max_epochs=4, limit_train_batches=None, limit_val_batches=None)
    trainer.fit(model, data)
    return model, float(trainer.callback_metrics["val_acc"])


def test_nan_injection_falls_back_skips_and_keeps_accuracy(tmp_path):
    clean_model, clean_acc = _digits_run(tmp_path / "clean", (), AMPScheduler(schedule={0: "bf16-mixed"}))
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=3)
    model, acc = _digits_run(tmp_path / "nan", {3, 20}, amp)
    assert amp.fallbacks == 2 and amp.skipped_steps == 2
    assert all_finite(model)  # weights and BatchNorm statistics
    fp32 = sorted(s for s, dt in model.modes.items() if dt == torch.float32)
    assert fp32 == [4, 5, 6, 21, 22, 23]  # cooldown after each NaN, then bf16 again
    assert [s["to"] for s in amp.switches] == ["32-true", "bf16-mixed", "32-true", "bf16-mixed"]
    assert clean_acc > 0.6  # it learned (10 classes)
    assert abs(acc - clean_acc) < 0.05, (acc, clean_acc)


def test_a_non_finite_step_right_after_a_prune_leaves_batchnorm_statistics_finite(tmp_path):
    # AMPScheduler before StructuredPruning (the README's order): its buffer snapshot is taken before the prune, in
    # the same hook, and the prune replaces the buffers; the poisoned forward on that step must still be undone.
    from lightning_green import StructuredPruning

    torch.manual_seed(0)
    model = NaNDigits(nan_steps={4}, channels=[8, 16], lr=1e-2)  # step 4: the first of epoch 1, where it prunes
    amp = AMPScheduler(schedule={0: "32-true"}, cooldown_steps=1)
    prune = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = make_trainer(tmp_path, [amp, prune], max_epochs=2, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model, DigitsDataModule(batch_size=32, image_size=8))
    assert prune.prunes_done == 1 and amp.skipped_steps == 1
    assert all_finite(model)  # weights and BatchNorm statistics


def test_a_second_fit_on_the_trainer_keeps_a_final_fallback(tmp_path):
    torch.manual_seed(0)
    model = NaNDigits(nan_steps={3}, channels=[8, 16], lr=1e-2)
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, max_fallbacks=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = make_trainer(
        tmp_path, [amp, ckpt], max_epochs=2, limit_train_batches=4, limit_val_batches=1, enable_checkpointing=True
    )
    trainer.fit(model, DigitsDataModule(batch_size=32, image_size=8))
    assert amp.fallbacks == 1 and amp.mode == "32-true"
    # A validation from an earlier checkpoint in between leaves the run's own state alone.
    trainer.validate(model, DigitsDataModule(batch_size=32, image_size=8), ckpt_path=tmp_path / "ck" / "step=1.ckpt")
    trainer.fit_loop.max_epochs = 4  # continue training on the same Trainer: the same run
    trainer.fit(model, DigitsDataModule(batch_size=32, image_size=8))
    assert amp.fallbacks == 1 and len(amp.switches) == 1
    assert {dt for s, dt in model.modes.items() if s >= 8} == {torch.float32}  # "final: fp32 for the rest of the run"


def test_max_fallbacks_keeps_fp32_for_the_rest_of_the_run(tmp_path):
    model = Recorder(nan_steps={1, 4, 6})
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=1, max_fallbacks=2)
    with pytest.warns(UserWarning, match="non-finite loss or gradient in fp32"):
        make_trainer(tmp_path, [amp]).fit(model)
    assert steps_by_dtype(model) == {0: "bf16", 1: "bf16", 2: "32", 3: "bf16", 4: "bf16", 5: "32", 6: "32", 7: "32"}
    assert (amp.fallbacks, amp.skipped_steps, amp.mode) == (2, 3, "32-true")
    assert "final" in amp.switches[-1]["cause"]
    assert all_finite(model)


def test_fp16_overflow_storm_falls_back_then_retries(tmp_path):
    plugin = MixedPrecision("16-mixed", "cpu")  # Trainer(precision="16-mixed") would turn into bf16 on CPU
    model = Recorder(storm_steps=range(2, 8))
    amp = AMPScheduler(schedule={0: "16-mixed"}, overflow_patience=3, cooldown_steps=2)
    memory = ListLogger()
    with pytest.warns(UserWarning, match="16-mixed on cpu: .*fp16 autocast on CPU is slow"):
        make_trainer(tmp_path, [amp], plugins=[plugin], max_epochs=3, logger=memory, log_every_n_steps=1).fit(model)
    modes = steps_by_dtype(model)
    assert [modes[s] for s in range(10)] == ["16"] * 5 + ["32"] * 2 + ["16"] * 3
    assert amp.fallbacks == 1 and amp.overflows == 4  # steps 2-4, then 7 after the retry
    assert amp.skipped_steps == 0  # the scaler skipped those updates, not the callback: counted apart, and logged
    logged = [r for r in memory.rows if "precision/overflows" in r]
    assert logged and logged[-1]["precision/overflows"] == 4.0
    assert amp.switches[0]["cause"] == "fallback after 3 consecutive fp16 overflows at step 4"
    assert amp.switches[1]["cause"] == "retry after the fp32 cooldown"
    assert plugin.scaler.get_scale() == 2.0**16 / 2**4  # the user's scaler was used and kept across the switch
    assert all_finite(model)
    # Logged at Lightning's logging steps only (50 here), the last value was the first step's 0: the run's last
    # counts are logged at its end.
    memory = ListLogger()
    amp = AMPScheduler(schedule={0: "16-mixed"}, overflow_patience=10)
    make_trainer(tmp_path, [amp], plugins=[MixedPrecision("16-mixed", "cpu")], logger=memory).fit(
        Recorder(storm_steps={5, 6})
    )
    logged = [r for r in memory.rows if "precision/overflows" in r]
    assert amp.overflows == 2 and logged[-1]["precision/overflows"] == 2.0 and len(logged) == 2
    assert logged[-1]["step"] == 7  # the last batch's step (one past it, a later fit() logged that step again)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_overflow_storm_on_cuda(tmp_path):
    model = Recorder(storm_steps=range(2, 8))
    amp = AMPScheduler(schedule={0: "16-mixed"}, overflow_patience=3, cooldown_steps=2)
    make_trainer(tmp_path, [amp], accelerator="cuda", precision="16-mixed", max_epochs=3).fit(model)
    modes = steps_by_dtype(model)
    assert [modes[s] for s in range(10)] == ["16"] * 5 + ["32"] * 2 + ["16"] * 3
    assert amp.fallbacks == 1 and amp.loss_scale == 2.0**16 / 2**4
    assert all_finite(model)


def test_manual_optimization_follows_schedule_and_falls_back(tmp_path):
    model = Recorder(manual=True, nan_steps={3})
    amp = AMPScheduler(schedule={0: "32-true", 2: "bf16-mixed"}, interval="step", cooldown_steps=2)
    make_trainer(tmp_path, [amp]).fit(model)
    assert steps_by_dtype(model) == {0: "32", 1: "32", 2: "bf16", 3: "bf16", 4: "32", 5: "32", 6: "bf16", 7: "bf16"}
    assert amp.fallbacks == 1 and amp.skipped_steps == 1
    assert all_finite(model)


class TwoOptimizers(Recorder):
    """Manual optimization with two optimizers stepping every batch (global_step advances by 2 a batch)."""

    def __init__(self, **kwargs):
        super().__init__(manual=True, **kwargs)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch[0])
        self.seen += 1
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.bn.parameters(), lr=0.01), torch.optim.SGD(self.layer.parameters(), lr=0.01)]


def test_a_fallback_with_two_optimizers_runs_its_cooldown_in_fp32(tmp_path):
    # The second optimizer's step in the batch of the fallback ate into the cooldown: cooldown_steps=1 counted a
    # fallback that never ran an fp32 step, and 3 ran only 2.
    for cooldown, batches in ((1, 1), (3, 2)):
        model = TwoOptimizers(nan_steps={4})
        amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=cooldown)
        make_trainer(tmp_path, [amp], max_epochs=1, limit_train_batches=8).fit(model)
        modes = steps_by_dtype(model)  # keyed by the step each batch starts at: 0, 2, 4, ...
        assert [s for s, dt in modes.items() if dt == "32"] == [6 + 2 * i for i in range(batches)]
        assert amp.fallbacks == 1 and [s["to"] for s in amp.switches] == ["32-true", "bf16-mixed"]
        assert all_finite(model)


def test_a_resume_between_the_fallback_and_the_next_batch_still_falls_back(tmp_path):
    # The checkpoint of the batch the fallback was asked in kept no such request: the resumed run never fell back
    # (two optimizers: its cooldown had passed), or recorded the switch as a bare "fallback".
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=1)
    make_trainer(tmp_path, [amp, ckpt], max_epochs=1, limit_train_batches=8, enable_checkpointing=True).fit(
        TwoOptimizers(nan_steps={4})
    )
    resumed, model = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=1), TwoOptimizers()
    make_trainer(tmp_path, [resumed], max_epochs=1, limit_train_batches=8).fit(
        model, ckpt_path=tmp_path / "ck" / "step=6.ckpt"
    )
    assert steps_by_dtype(model) == {6: "32", 8: "bf16", 10: "bf16", 12: "bf16", 14: "bf16"}
    assert [s["cause"] for s in resumed.switches] == [s["cause"] for s in amp.switches]
    assert resumed.switches[0]["cause"] == "fallback after non-finite loss or gradients at step 4"


def test_a_step_schedule_under_manual_optimization_is_not_said_to_be_out_of_reach(tmp_path, recwarn):
    # Lightning's estimate counts batches; two optimizers take two steps a batch, so step 10 of 8 batches is reached.
    model = TwoOptimizers()
    amp = AMPScheduler(schedule={0: "32-true", 10: "bf16-mixed"}, interval="step")
    make_trainer(tmp_path, [amp], max_epochs=1, limit_train_batches=8).fit(model)
    assert not [w for w in recwarn if "never reached" in str(w.message)]
    assert steps_by_dtype(model)[10] == "bf16"
    # With one optimizer a step is a batch: the estimate holds, and a key past it is said.
    with pytest.warns(UserWarning, match=r"entries at steps \[100\] are never reached"):
        make_trainer(tmp_path, [AMPScheduler(schedule={0: "32-true", 100: "bf16-mixed"}, interval="step")]).fit(
            Recorder(manual=True)
        )


def test_manual_accumulation_delays_an_epoch_switch_to_the_next_step(tmp_path):
    model = Recorder(manual=True, step_every=3)  # windows of batches 0-2, 3-5, 6-8 across 4-batch epochs
    amp = AMPScheduler(schedule={1: "bf16-mixed"})
    make_trainer(tmp_path, [amp], max_epochs=3).fit(model)
    dtypes = [dtype for *_, dtype in model.train_log]
    assert dtypes == ["32"] * 6 + ["bf16"] * 6  # epoch 1 starts mid-window (batch 4): switch waits for batch 6


class DecayRecorder(Recorder):
    """Recorder with weight decay, so a skipped step that still reached the optimizer would show in the weights."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)


class StepProbe(Callback):
    """Copies the weights and momentum buffers before and after the batch of one global step."""

    def __init__(self, step):
        self.step = step
        self.before = self.after = None

    @staticmethod
    def _state(trainer, pl_module):
        momenta = [s["momentum_buffer"].clone() for s in trainer.optimizers[0].state.values()]
        return [p.detach().clone() for p in pl_module.parameters()], momenta

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.before = self._state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.before is not None and self.after is None:
            self.after = self._state(trainer, pl_module)

    def assert_untouched(self, model):
        """The probed step was skipped: no update, no momentum, no weight decay; everything finite."""
        (weights, momenta), (weights_after, momenta_after) = self.before, self.after
        assert all(torch.equal(a, b) for a, b in zip(weights, weights_after, strict=True))
        assert len(momenta) == 4 and all(torch.equal(a, b) for a, b in zip(momenta, momenta_after, strict=True))
        assert all_finite(model)


class ClipsItself(DecayRecorder):
    """Clips in configure_gradient_clipping with torch's own functions, as many modules do."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        torch.nn.utils.clip_grad_value_(self.parameters(), 0.5)  # raises on an empty gradient list
        self.clipped = getattr(self, "clipped", 0) + 1


@pytest.mark.filterwarnings("ignore:AMPScheduler:UserWarning")
@pytest.mark.parametrize("mode", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize(
    ("module", "clipping"),
    [(DecayRecorder, {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"}), (ClipsItself, {})],
    ids=["lightning-clips", "module-clips"],
)
def test_skipped_step_with_clipping_by_value_leaves_weights_and_momentum(tmp_path, mode, module, clipping):
    # Lightning clips right after on_before_optimizer_step: clipping by value must not fail on a skipped step, and the
    # step must stay skipped (no update, no momentum, no weight decay). The skip dropped every gradient before that
    # hook, so a module clipping with torch itself crashed a run plain Lightning finished: now the gradients go after
    # the clipping, before the step.
    model = module(loss_nan_steps={2})
    probe = StepProbe(step=2)
    amp = AMPScheduler(schedule={0: mode})
    make_trainer(tmp_path, [amp, probe], max_epochs=1, **clipping).fit(model)
    assert amp.skipped_steps == 1 and model.trainer.global_step == 4
    assert module is not ClipsItself or model.clipped == 4  # the module's own clipping ran at every step
    probe.assert_untouched(model)


class FusedAdam(Recorder):
    """Recorder with a fused Adam: it unscales in its own step, so Lightning never calls the scaler's ``unscale_``."""

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01, fused=True)


class FusedAdamUnscalesItself(FusedAdam):
    """Manual optimization with torch's AMP recipe for clipping: ``scaler.unscale_`` before ``clip_grad_norm_``."""

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch[0])
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        opt.step()


@pytest.mark.parametrize(
    ("module", "manual"),
    [(FusedAdam, False), (FusedAdam, True), (FusedAdamUnscalesItself, True)],
    ids=["automatic", "manual", "manual-unscales-itself"],
)
def test_a_skipped_fp16_step_with_a_fused_optimizer_is_skipped_not_a_crash(tmp_path, module, manual):
    # Dropping every gradient left the grad scaler's step without an inf check: GradScaler.update() asserted
    # "No inf checks were recorded prior to update" and the fit crashed where a non-fused optimizer fell back. A step
    # that unscaled the gradients itself (to clip them) has its check already: it must not be unscaled twice.
    model = module(loss_nan_steps={2}, manual=manual)
    weights = {}

    class Weights(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            weights[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    amp = AMPScheduler(schedule={0: "16-mixed"}, cooldown_steps=2)
    make_trainer(tmp_path, [amp, Weights()], max_epochs=1, limit_val_batches=0).fit(model)
    assert (amp.fallbacks, amp.skipped_steps, model.trainer.global_step) == (1, 1, 4)
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[3], strict=True))  # step 2 left them alone
    assert not all(torch.equal(a, b) for a, b in zip(weights[1], weights[2], strict=True))  # step 1 did not
    assert all_finite(model)


class SkipsBatches(Recorder):
    """Recorder whose training_step returns None (Lightning's way to skip a batch: no backward) at ``none_steps``."""

    def __init__(self, none_steps=(), **kwargs):
        super().__init__(**kwargs)
        self.none_steps = set(none_steps)

    def training_step(self, batch, batch_idx):
        if self.global_step in self.none_steps:
            return None
        return super().training_step(batch, batch_idx)


def test_a_batch_without_backward_after_a_non_finite_step_is_not_counted(tmp_path):
    # step 2: NaN loss, the fallback (cooldown 0: bf16 again from step 3); step 3 has no loss at all
    model = SkipsBatches(none_steps={3}, loss_nan_steps={2})
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=0, max_fallbacks=2)
    make_trainer(tmp_path, [amp], limit_val_batches=0).fit(model)
    assert (amp.fallbacks, amp.skipped_steps, amp.tracker.locked) == (1, 1, False)
    assert {step: dtype for step, dtype in steps_by_dtype(model).items() if step > 3} == dict.fromkeys(
        range(4, 8), "bf16"
    )


# ---------------------------------------------------------------------------------------------- state
def test_resume_from_fp16_checkpoint_restores_mode_and_loss_scale(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    amp = AMPScheduler(schedule={0: "16-mixed"})
    make_trainer(tmp_path, [amp, ckpt_cb], plugins=[MixedPrecision("16-mixed", "cpu")], enable_checkpointing=True).fit(
        Recorder(storm_steps={1, 2})
    )
    path = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["MixedPrecision"]["scale"] == 2.0**14  # two overflows
    # Prove Lightning restores its own copy into the plugin installed by on_fit_start: keep only that copy.
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("AMPScheduler"))
    assert state["scaler"]["scale"] == 2.0**14 and state["mode"] == "16-mixed" and state["version"] == 1
    state["scaler"] = None
    ckpt["MixedPrecision"]["scale"] = 512.0
    torch.save(ckpt, path)

    seen = {}

    class Probe(Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["plugin_at_fit_start"] = trainer.strategy.precision_plugin

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            plugin = trainer.strategy.precision_plugin
            seen.setdefault("first", (type(plugin).__name__, plugin.precision, plugin.scaler.get_scale()))

    resumed = AMPScheduler(schedule={0: "16-mixed"})
    model = Recorder()
    make_trainer(tmp_path, [resumed, Probe()], max_epochs=3).fit(model, ckpt_path=path)
    assert seen["plugin_at_fit_start"].precision == "16-mixed"
    assert seen["first"] == ("MixedPrecision", "16-mixed", 512.0)
    assert resumed.tracker.overflows == 2 and resumed.switches == []
    assert {dtype for *_, dtype in model.train_log} == {"16"}


def test_resume_restores_fallback_counters_and_cooldown(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=3, max_fallbacks=5)
    make_trainer(tmp_path, [amp, ckpt_cb], max_epochs=1, enable_checkpointing=True).fit(Recorder(nan_steps={2}))
    resumed = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=3, max_fallbacks=5)
    model = Recorder()
    make_trainer(tmp_path, [resumed], max_epochs=2).fit(model, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=4.ckpt")
    # the fallback at step 2 forces fp32 up to step 5; the resumed run continues that cooldown
    assert steps_by_dtype(model) == {4: "32", 5: "32", 6: "bf16", 7: "bf16"}
    assert (resumed.fallbacks, resumed.skipped_steps) == (1, 1)
    assert [s["cause"] for s in resumed.switches][-1] == "retry after the fp32 cooldown"


def test_a_step_key_past_the_last_step_of_an_epoch_bounded_run_is_said(tmp_path):
    # Refused against max_steps, the same key went unsaid when only max_epochs bounds the run (never reached).
    amp = AMPScheduler(schedule={0: "32-true", 5: "bf16-mixed", 100: "bf16-mixed"}, interval="step")
    with pytest.warns(UserWarning, match=r"at most 8 optimizer steps .* entries at steps \[100\] are never reached"):
        make_trainer(tmp_path, [amp], max_epochs=2, limit_val_batches=0).fit(Recorder())
    reached = AMPScheduler(schedule={0: "32-true", 7: "bf16-mixed"}, interval="step")
    make_trainer(tmp_path, [reached], max_epochs=2, limit_val_batches=0).fit(model := Recorder())
    assert steps_by_dtype(model)[7] == "bf16"


@pytest.mark.filterwarnings("ignore:AMPScheduler. the checkpoint was saved in:UserWarning")
@pytest.mark.parametrize("first", ["16-mixed", None], ids=["other-mode", "no-amp-state"])
def test_a_resume_in_another_mode_records_no_switch_and_no_finished_cooldown(tmp_path, first):
    # The loops are restored after on_fit_start: at step 0 the checkpoint's finished cooldown (fallback at step 1,
    # fp32 until step 3) looked active, fp32 was installed, and the first batch recorded "fp32 -> bf16 (retry after
    # the fp32 cooldown)" with a workload change, at a step where the run switched nothing. Without AMPScheduler state
    # in the checkpoint, the epoch-0 mode was installed and the first batch recorded a "schedule" switch.
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    callbacks = [ckpt_cb] if first is None else [AMPScheduler(schedule={0: first}, cooldown_steps=2), ckpt_cb]
    make_trainer(tmp_path, callbacks, max_epochs=2, enable_checkpointing=True).fit(Recorder(loss_nan_steps={1}))
    resumed = AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed"}, cooldown_steps=2)
    heard = []

    class Listener(Callback):
        def on_workload_changed(self, trainer, pl_module, change):
            heard.append(change)

    model = Recorder()
    make_trainer(tmp_path, [resumed, Listener()], max_epochs=3).fit(
        model, ckpt_path=tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    )
    assert steps_by_dtype(model) == dict.fromkeys(range(8, 12), "bf16")
    assert [s for s in resumed.switches if s["step"] >= 8] == [] and heard == []
    assert resumed.mode == "bf16-mixed"


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_one_rank_nan_switches_both_ranks(tmp_path):
    # step 1: only rank 1's loss is NaN (its gradients stay finite, rank 0 cannot see it without the collective);
    # step 5: rank 1's activations are NaN (gradients too, after the all-reduce, and its BatchNorm statistics)
    model = Recorder(loss_nan_steps={1}, nan_steps={5}, nan_rank=1, out_dir=str(tmp_path))
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=1)
    make_trainer(
        tmp_path,
        [amp, DestroyProcessGroupAtExit()],
        strategy="ddp_spawn",
        devices=2,
        max_epochs=3,
        limit_train_batches=3,
    ).fit(model)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    modes = [[(step, dtype) for _, step, _, dtype in rep["log"]] for rep in reports]
    expected = [(s, "32" if s in (2, 6) else "bf16") for s in range(9)]
    assert modes[0] == expected and modes[1] == expected
    assert [rep["fallbacks"] for rep in reports] == [2, 2]
    assert all(rep["finite"] for rep in reports)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"interval": "hour"},
            ValueError,
            r"AMPScheduler(interval='hour'): `interval` must be one of ('epoch', 'step').",
        ),
        ({"policy": "fp8"}, ValueError, r"AMPScheduler(policy='fp8'): `policy` must be one of ('auto', 'bf16-mixed', "),
        ({"schedule": {0: "16-true"}}, ValueError, r"`schedule` must be mapping to one of ('32-true', 'bf16-mixed', "),
        ({"schedule": {0: "fp32"}}, ValueError, r"(found 'fp32' at 0)"),
        ({"schedule": {-2: "32-true"}}, ValueError, r"`schedule` must be keyed by epochs or steps >= 0"),
        ({"schedule": {"1": "32-true"}}, TypeError, r"`schedule` must be keyed by int epochs or steps"),
        ({"schedule": {}}, TypeError, r"`schedule` must be None or a non-empty dict"),
        ({"warmup_epochs": -1}, ValueError, r"AMPScheduler(warmup_epochs=-1): `warmup_epochs` must be an int >= 0."),
        ({"warmup_epochs": 1.5}, TypeError, r"`warmup_epochs` must be an int."),
        ({"final_fp32_epochs": -3}, ValueError, r"`final_fp32_epochs` must be an int >= 0."),
        ({"overflow_patience": 0}, ValueError, r"`overflow_patience` must be an int >= 1."),
        ({"cooldown_steps": -1}, ValueError, r"`cooldown_steps` must be an int >= 0."),
        ({"max_fallbacks": 0}, ValueError, r"`max_fallbacks` must be an int >= 1."),
        ({"guard_buffers": "yes"}, TypeError, r"`guard_buffers` must be a bool"),
        (
            {"schedule": {0: "auto"}, "warmup_epochs": 1},
            ValueError,
            r"`warmup_epochs` must be 0 when `schedule` is given",
        ),
        (
            {"schedule": {0: "bf16-mixed"}, "policy": "16-mixed"},
            ValueError,
            r"AMPScheduler(policy='16-mixed'): `policy` must be 'auto' (the default) when `schedule` names no 'auto'",
        ),
        (
            {"interval": "step", "final_fp32_epochs": 1},
            ValueError,
            r"AMPScheduler(interval='step'): `interval` must be 'epoch' with warmup_epochs/final_fp32_epochs",
        ),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        AMPScheduler(**kwargs)


def test_policy_decides_auto_in_a_schedule(tmp_path):
    model = Recorder()
    amp = AMPScheduler(schedule={0: "32-true", 1: "auto"}, policy="bf16-mixed")
    make_trainer(tmp_path, [amp], limit_train_batches=1).fit(model)
    assert [dtype for *_, dtype in model.train_log] == ["32", "bf16"]


@pytest.mark.parametrize(
    ("amp_kwargs", "trainer_kwargs", "match"),
    [
        (
            {"schedule": {0: "32-true", 3: "bf16-mixed"}},
            {"max_epochs": 3},
            r"keyed by epochs < Trainer\(max_epochs=3\)",
        ),
        (
            {"schedule": {10: "bf16-mixed"}, "interval": "step"},
            {"max_steps": 10},
            r"keyed by steps < Trainer\(max_steps=10\)",
        ),
        ({"warmup_epochs": 2, "final_fp32_epochs": 1}, {"max_epochs": 3}, r"warmup_epochs \+ final_fp32_epochs"),
        (
            {"warmup_epochs": 3},
            {"max_epochs": 3},
            r"warmup_epochs \+ final_fp32_epochs \(3 \+ 0 = 3\) < Trainer\(max_epochs=3\), leaving at least one epoch",
        ),
        ({"final_fp32_epochs": 1}, {"max_epochs": -1, "max_steps": 4}, r"0 when Trainer\(max_epochs\) is unbounded"),
        ({}, {"precision": "bf16-true"}, r"Trainer\(precision='bf16-true'\) is not supported: `precision` must be"),
        ({}, {"precision": "16-true"}, r"Trainer\(precision='16-true'\) is not supported"),
        ({}, {"precision": "64-true"}, r"Trainer\(precision='64-true'\) is not supported"),
    ],
)
def test_bad_setup_is_refused_before_training(tmp_path, amp_kwargs, trainer_kwargs, match):
    model = Recorder()
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, [AMPScheduler(**amp_kwargs)], **trainer_kwargs).fit(model)
    assert model.train_log == []


@pytest.mark.parametrize(
    "amp_kwargs",
    [{"warmup_epochs": 1, "final_fp32_epochs": 1}, {"schedule": {0: "32-true", 100: "bf16-mixed"}, "interval": "step"}],
    ids=["shortcuts", "step-schedule"],
)
def test_fast_dev_run_runs_the_schedules_start(tmp_path, amp_kwargs):
    # Lightning forces max_epochs=1 / max_steps=1 for its smoke test: not a setting of the user's to refuse.
    model = Recorder()
    make_trainer(tmp_path, [AMPScheduler(**amp_kwargs)], max_epochs=10, fast_dev_run=True).fit(model)
    assert steps_by_dtype(model) == {0: "32"}


def test_a_precision_plugin_of_the_users_own_is_refused_naming_plugins(tmp_path):
    # It blamed the strategy ("`strategy` must be one that uses Lightning's plugins (single device, ...)") on a single
    # device. FSDP's and DeepSpeed's plugins get the strategy message (tests/precision, and below on CUDA).
    class OwnPrecision(Precision):
        pass

    with pytest.raises(ValueError, match=r"plugins=\[OwnPrecision\(...\)\]\) is a precision plugin of your own"):
        make_trainer(tmp_path, [AMPScheduler()], plugins=[OwnPrecision()]).fit(Recorder())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_trainable_half_weights_are_refused_and_a_frozen_half_teacher_is_not(tmp_path, dtype):
    # A model built in half precision (HF's from_config(..., dtype=...)): "32-true" epochs still computed in it while
    # logged as 32, and fp16 failed inside torch's grad scaler ("Attempting to unscale FP16 gradients").
    model = Recorder().to(dtype)
    with pytest.raises(
        ValueError, match=rf"trainable weights must be fp32 .*; 4 of 4 tensors are {dtype} \(e.g. 'bn.weight'\)"
    ):
        make_trainer(tmp_path, [AMPScheduler(schedule={0: "32-true", 1: "16-mixed"})]).fit(model)
    assert model.train_log == []
    model = Recorder()
    model.teacher = nn.Linear(16, 4).to(dtype).requires_grad_(False)
    make_trainer(tmp_path, [AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed"})]).fit(model)
    assert {(epoch, dtype) for epoch, _, _, dtype in model.train_log} == {(0, "32"), (1, "bf16")}


class LBFGSRecorder(Recorder):
    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=2)


def test_fp16_with_lbfgs_is_refused_before_the_run_and_bf16_runs(tmp_path):
    # Lightning's grad scaler cannot drive LBFGS: the run failed at the switch, after the fp32 epoch had trained.
    model = LBFGSRecorder()
    with pytest.raises(ValueError, match=r"\(schedule=\{0: '32-true', 1: '16-mixed'\}\) schedules 16-mixed"):
        make_trainer(tmp_path, [AMPScheduler(schedule={0: "32-true", 1: "16-mixed"})]).fit(model)
    assert model.train_log == []  # refused before the first batch
    model = LBFGSRecorder()
    make_trainer(tmp_path, [AMPScheduler(schedule={0: "32-true", 1: "bf16-mixed"})]).fit(model)
    by_epoch = {(epoch, dtype) for epoch, _, _, dtype in model.train_log}
    assert by_epoch == {(0, "32"), (1, "bf16")}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp_is_refused_in_setup(tmp_path):
    with pytest.raises(ValueError, match=r"the strategy FSDPStrategy uses its own precision plugin \(FSDPPrecision"):
        make_trainer(tmp_path, [AMPScheduler()], accelerator="cuda", strategy="fsdp").fit(Recorder())


def test_two_schedulers_are_refused(tmp_path):
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `AMPScheduler`"):
        make_trainer(tmp_path, [AMPScheduler(), AMPScheduler()]).fit(Recorder())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_policy_on_cuda_uses_native_low_precision(tmp_path):
    model = Recorder()
    amp = AMPScheduler(warmup_epochs=1)
    make_trainer(tmp_path, [amp], accelerator="cuda", max_epochs=2).fit(model)
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "16"
    assert {dtype for epoch, *_, dtype in model.train_log if epoch == 1} == {expected}
    assert math.isfinite(amp.loss_scale)


# ---------------------------------------------------------------------------------------------- CLI / YAML
ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _amp_of(trainer):
    return next(cb for cb in trainer.callbacks if isinstance(cb, AMPScheduler))


def test_example_yaml_runs_through_the_cli(tmp_path):
    from lightning_green.cli import cli

    config = ROOT / "examples" / "configs" / "amp.yaml"
    run = cli(
        ["fit", "--config", str(config), "--trainer.max_epochs=3", f"--trainer.default_root_dir={tmp_path}", *TINY]
    )
    amp = _amp_of(run.trainer)
    assert (amp.policy, amp.warmup_epochs, amp.final_fp32_epochs) == ("auto", 1, 1)
    low = amp.choice.mode  # bf16-mixed on a CPU with AVX-512-BF16/AMX, else 32-true
    expected = [] if low == "32-true" else [(1, low), (2, "32-true")]
    assert [(s["epoch"], s["to"]) for s in amp.switches] == expected
    assert run.trainer.state.finished


def test_yaml_schedule_is_typed(tmp_path):
    from lightning_green.cli import cli

    config = tmp_path / "schedule.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning_green.AMPScheduler\n"
        "      init_args:\n"
        "        schedule: {0: 32-true, 2: bf16-mixed}\n"
        "        interval: step\n"
    )
    run = cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    amp = _amp_of(run.trainer)
    assert amp.schedule == {0: "32-true", 2: "bf16-mixed"} and amp.interval == "step"


def test_cli_bad_schedule_ends_with_the_one_line_message(tmp_path, capsys):
    from lightning_green.cli import main

    config = tmp_path / "bad.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_green.AMPScheduler\n"
        "      init_args:\n        schedule: {0: fp8}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning-green: error: AMPScheduler(schedule={0: 'fp8'}): `schedule` must be mapping to one of" in err


def test_plain_python_example_runs(tmp_path, capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "examples" / "amp_example.py"))["main"]
    amp = main(["--epochs", "3", "--limit-train-batches", "2", "--root", str(tmp_path)])
    assert amp.final_fp32_epochs == 1 and amp.mode == "32-true"  # the last epoch is fp32 whatever the device
    assert "val_acc:" in capsys.readouterr().out


class JointLoss(LightningModule):
    """Manual optimization, GAN-style: one backward of a joint loss, then two optimizers step; NaN loss at batch 2."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)
        self.automatic_optimization = False
        self.changed: list[list[bool]] = []

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        loss = self.b(self.a(batch[0])).float().pow(2).mean()
        if batch_idx == 2:
            loss = loss + torch.tensor(float("nan"))  # detached: the gradients stay finite, only the loss is bad
        before = [p.detach().clone() for p in self.parameters()]
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()
        self.changed.append([not torch.equal(x, p) for x, p in zip(before, self.parameters(), strict=True)])

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=8)


def test_a_non_finite_joint_loss_skips_every_optimizer_of_the_batch(tmp_path):
    model = JointLoss()
    amp = AMPScheduler(schedule={0: "bf16-mixed"}, cooldown_steps=2)
    make_trainer(tmp_path, [amp], max_epochs=1).fit(model)
    assert model.changed[2] == [False] * 4  # neither optimizer updated on the NaN batch
    assert all(all(c) for i, c in enumerate(model.changed) if i != 2)
    assert amp.skipped_steps == 2 and amp.fallbacks == 1  # two skipped steps, one fallback for the one bad batch


class ClipAfterStep(JointLoss):
    """Manual optimization that clips each optimizer by value before and after its step (a skipped one included)."""

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        loss = self.b(self.a(batch[0])).float().pow(2).mean()
        if batch_idx == 2:
            loss = loss + torch.tensor(float("nan"))
        before = [p.detach().clone() for p in self.parameters()]
        self.manual_backward(loss)
        for opt in (opt_a, opt_b):
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="value")
            opt.step()
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="value")
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.changed.append([not torch.equal(x, p) for x, p in zip(before, self.parameters(), strict=True)])


def test_manual_clipping_by_value_after_a_skipped_step(tmp_path):
    model = ClipAfterStep()
    amp = AMPScheduler(schedule={0: "bf16-mixed"})
    make_trainer(tmp_path, [amp], max_epochs=1).fit(model)
    assert model.changed[2] == [False] * 4
    assert all(all(c) for i, c in enumerate(model.changed) if i != 2)
    assert amp.skipped_steps == 2
