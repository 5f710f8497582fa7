"""StructuredPruning checks every prune, undoes what breaks the model, and traces modules it is not handed ready."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.lstm import LightningLSTM
from lightning.pytorch.demos.transformer import LightningTransformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_green import EnergyMonitor, GreenReport, StructuredPruning
from lightning_green.demos import DigitsCNN
from lightning_green.pruning import ChannelPruner, load_pruned
from lightning_green.report import load_run
from tests.callbacks.test_structured_pruning import ParamCountScore, Probe, data, make_trainer, small_cnn

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}


def fit(tmp_path, model, loader, callbacks, max_epochs=2, **kwargs):
    settings = {"limit_train_batches": 3, "logger": False, "enable_checkpointing": False, **QUIET, **kwargs}
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=max_epochs, callbacks=callbacks, **settings)
    trainer.fit(model, loader)
    return trainer


def tokens(n=16, t=8, vocab=256):
    x = torch.randint(0, vocab, (n, t + 1), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=8)


def features(n=48, d=6):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)), 8)


class DemoTransformer(LightningTransformer):
    def prepare_data(self):  # the demo downloads WikiText-2; these tests use random tokens
        pass


class DemoLSTM(LightningLSTM):
    def prepare_data(self):
        pass


def run_lstm(model, batch):
    """``forward_fn`` for the LSTM demo's model (named by its import path in a test, as YAML would)."""
    return model(batch[0], model.init_hidden(batch[0].size(0)))


class HardCodedNet(LightningModule):
    """Branch ``a`` is reshaped with a hard-coded width (invisible to torch-pruning); branch ``b`` is free."""

    def __init__(self, free_branch=True):
        super().__init__()
        self.a1, self.bn, self.a2 = nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)
        self.b1 = nn.Linear(6, 16) if free_branch else None
        self.b2 = nn.Linear(16, 3) if free_branch else None
        self.drop = nn.Dropout(0.3)
        self.example_input_array = torch.zeros(2, 6)

    def forward(self, x):
        a = self.drop(self.bn(self.a1(x))).view(-1, 4, 4).relu().reshape(-1, 16)
        out = self.a2(a)
        return out + self.b2(self.b1(x).relu()) if self.b1 is not None else out

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class Snapshot(Callback):
    """Model, optimizer state and random streams at the first batch of ``epoch`` (before/after the pruner by order)."""

    def __init__(self, epoch=1):
        self.epoch = epoch
        self.taken = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch != self.epoch or batch_idx:
            return
        opt = trainer.optimizers[0]
        self.taken = {
            "objects": dict(pl_module.named_parameters()),
            "params": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
            "buffers": {n: b.clone() for n, b in pl_module.named_buffers()},
            "opt_params": [p for g in opt.param_groups for p in g["params"]],
            "opt_state": {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in pl_module.named_parameters()},
            "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()),
        }


# ------------------------------------------------------------------------------------------- Lightning's demos
@pytest.mark.parametrize(
    "given", [pytest.param(True, marks=pytest.mark.slow), False], ids=["example_input_array", "first-batch"]
)
def test_lightning_transformer_demo_prunes_its_positional_encoding_along(tmp_path, given):
    seed_everything(0)
    model = DemoTransformer(vocab_size=256)
    if given:
        model.example_input_array = (torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    pruning = StructuredPruning(pruning_ratio=0.4, start_epoch=0, end_epoch=1, verbose=False)
    fit(tmp_path, model, tokens(), [pruning], limit_train_batches=2)
    assert pruning.speedup > 1.5 and len(pruning.history) == 2 and not pruning.stopped and not pruning.left_whole
    width = model.model.transformer.d_model
    assert width < 200 and model.model.pos_encoder.pe.shape == (1, 5000, width)
    assert model.model.embedding.embedding_dim == width
    assert all(event["check_s"] > 0 for event in pruning.history)  # the check's cost is in the pruning log


def test_lightning_lstm_demo_without_module_is_refused_at_setup(tmp_path):
    trainer = make_trainer(tmp_path, [StructuredPruning(start_epoch=0, end_epoch=1)])
    with pytest.raises(
        ValueError,
        match=r"^StructuredPruning: DemoLSTM has no `forward` of its own, so it cannot be traced; name the submodule "
        r"to prune with `module=` \(e\.g\. StructuredPruning\(module='model'\)\), or give `forward_fn=`\.$",
    ):
        trainer.fit(DemoLSTM(vocab_size=256), tokens())
    assert trainer.global_step == 0


@pytest.mark.slow
def test_lightning_lstm_demo_trains_through_module_and_a_dotted_forward_fn(tmp_path):
    model = DemoLSTM(vocab_size=256)
    pruning = StructuredPruning(
        pruning_ratio=0.4,
        start_epoch=0,
        end_epoch=1,
        module="model",
        forward_fn="tests.callbacks.test_structured_pruning_verify.run_lstm",
        verbose=False,
    )
    # torch-pruning 1.6 cannot cut a multi-layer nn.LSTM (it asserts num_layers == 1 halfway through the cut).
    with pytest.warns(UserWarning, match=r"cutting 'rnn' broke the model.*torch-pruning cannot cut it"):
        trainer = fit(tmp_path, model, tokens(n=8, t=4), [pruning], limit_train_batches=2)
    assert trainer.state.finished and trainer.global_step == 2
    assert set(pruning.left_whole) == {"rnn"} and pruning.stopped and pruning.history == []
    assert model.model.rnn.hidden_size == 512 and pruning.dense_macs and pruning.speedup == 1.0


# ---------------------------------------------------------------------------------------- undo, bisect, leave whole
def test_a_hard_coded_reshape_is_undone_and_left_whole_with_a_warning(tmp_path):
    seed_everything(0)
    model = HardCodedNet()
    before, after = Snapshot(epoch=1), Snapshot(epoch=1)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    with pytest.warns(
        UserWarning, match=r"prune 1/1: cutting 'a1' broke the model, so the prune was undone .*\('a1': RuntimeError: "
    ):
        fit(tmp_path, model, features(), [before, pruning, after], max_epochs=2)
    assert pruning.left_whole.keys() == {"a1"} and not pruning.stopped and len(pruning.history) == 1
    assert model.a1.out_features == 16 and model.b1.out_features == 8 and pruning.speedup > 1.0
    # The checks ran in eval mode without a trace: the left-whole BatchNorm's statistics and every random stream are
    # as they were before the prune.
    assert torch.equal(after.taken["buffers"]["bn.running_mean"], before.taken["buffers"]["bn.running_mean"])
    assert torch.equal(after.taken["buffers"]["bn.running_var"], before.taken["buffers"]["bn.running_var"])
    (t0, p0, n0), (t1, p1, n1) = before.taken["rng"], after.taken["rng"]
    assert torch.equal(t0, t1) and p0 == p1 and np.array_equal(n0, n1)


def test_a_rolled_back_prune_leaves_model_and_optimizer_bit_identical_and_training_goes_on(tmp_path):
    seed_everything(0)
    model = HardCodedNet(free_branch=False)  # every group's cut breaks the model
    before, after = Snapshot(epoch=1), Snapshot(epoch=1)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False)
    with pytest.warns(UserWarning, match=r"nothing left can be cut without breaking the model; pruning stops at 1.00x"):
        trainer = fit(tmp_path, model, features(), [before, pruning, after], max_epochs=3)
    assert trainer.global_step == 9 and pruning.stopped and pruning.history == [] and pruning.prunes_done == 1
    b, a = before.taken, after.taken
    assert a["objects"].keys() == b["objects"].keys()
    for name, p in a["objects"].items():
        assert p is b["objects"][name] and torch.equal(a["params"][name], b["params"][name])
        assert a["opt_state"][name].keys() == b["opt_state"][name].keys()
        assert all(torch.equal(v, b["opt_state"][name][k]) for k, v in a["opt_state"][name].items())
    assert all(torch.equal(v, b["buffers"][n]) for n, v in a["buffers"].items())
    assert a["opt_params"] == b["opt_params"] and all(
        x is y for x, y in zip(a["opt_params"], b["opt_params"], strict=True)
    )


# ------------------------------------------------------------------------------------------------------ bad input
def test_module_naming_no_submodule_is_refused_at_setup(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"^StructuredPruning\(module='backbone'\): `module` must be None or the name of a submodule of "
        r"DigitsCNN \(its children: \['.*'\]\)\.$",
    ):
        make_trainer(tmp_path, [StructuredPruning(module="backbone")]).fit(small_cnn(), data())


def test_example_input_the_module_cannot_take_is_refused_at_fit_start(tmp_path):
    trainer = make_trainer(tmp_path, [StructuredPruning(example_input=torch.zeros(2, 5))])
    with pytest.raises(
        ValueError,
        match=r"^StructuredPruning\(example_input=\['tensor', \[2, 5\], 'float32'\]\): DigitsCNN cannot be run on "
        r"example_input \(RuntimeError: .*\); `example_input` must name",
    ):
        trainer.fit(small_cnn(), data())
    assert trainer.global_step == 0


def test_forward_fn_returning_no_tensor_is_refused(tmp_path):
    def nothing(module, example):
        module(example)

    trainer = make_trainer(tmp_path, [StructuredPruning(forward_fn=nothing)])
    with pytest.raises(
        ValueError,
        match=r"^StructuredPruning\(forward_fn=.*nothing\): `forward_fn` must give an output that holds a tensor; "
        r"DigitsCNN returned a NoneType\.$",
    ):
        trainer.fit(small_cnn(), data())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"module": ""}, TypeError, r"`module` must be None or the name of a submodule"),
        ({"example_input": [1, 2]}, TypeError, r"`example_input` must be None or a tensor, a tuple or a dict"),
        ({"forward_fn": "run"}, TypeError, r"forward_fn='run'\): `forward_fn` must be None, a callable"),
        ({"forward_fn": "tests.no_such_module.run"}, ValueError, r"; it does not import \(ModuleNotFoundError: No"),
        ({"forward_fn": "math.pi"}, ValueError, r"; it names a float\.$"),
    ],
)
def test_bad_module_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        StructuredPruning(**kwargs)


# --------------------------------------------------------------------------------- issue 11 items 9, 11 and 16
def test_accuracy_guard_rolls_back_the_whole_model_not_only_the_reshaped_layers(tmp_path):
    class AfterRollback(Callback):
        params = None

        def on_validation_end(self, trainer, pl_module):
            if self.params is None and pruning.rollbacks:
                self.params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    before, after = Probe(epoch=1), AfterRollback()
    pruning = StructuredPruning(
        pruning_ratio=0.5,
        start_epoch=1,
        end_epoch=2,
        ignored_layers=["features.0"],  # keeps its shape, and is fine-tuned in the window like the rest
        monitor="val_score",
        max_drop=1.0,
        verbose=False,
    )
    make_trainer(tmp_path, [before, pruning, after], max_epochs=3).fit(ParamCountScore(channels=[8, 16]), data())
    assert pruning.stopped and len(pruning.rollbacks) == 1 and after.params is not None
    assert after.params.keys() == before.params.keys()
    for name, value in after.params.items():
        assert torch.equal(value, before.params[name]), name


def test_regulariser_runs_once_per_batch_with_two_optimizers(tmp_path, monkeypatch):
    class TwoOptimizers(type(small_cnn())):
        def __init__(self):
            super().__init__(channels=[8, 16])
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            x, y = batch
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(F.cross_entropy(self(x), y))
                opt.step()

        def configure_optimizers(self):
            return [
                torch.optim.SGD(self.features.parameters(), 0.01),
                torch.optim.SGD(self.classifier.parameters(), 0.01),
            ]

    calls = []
    build = ChannelPruner.regularizer

    def counting(self, *args, **kwargs):
        reg = build(self, *args, **kwargs)
        original = reg.regularize
        reg.regularize = lambda model, *a, **k: calls.append(1) or original(model, *a, **k)
        return reg

    monkeypatch.setattr(ChannelPruner, "regularizer", counting)
    pruning = StructuredPruning(start_epoch=1, end_epoch=1, regularization="group-norm", verbose=False)
    make_trainer(tmp_path, [pruning], max_epochs=1).fit(TwoOptimizers(), data())
    assert len(calls) == 3  # 3 batches, 2 optimizer steps each


class NoExample(DigitsCNN):  # a user module usually has no example_input_array; DigitsCNN sets one
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.example_input_array = None

    def setup(self, stage):
        pass


def test_module_without_example_input_is_traced_on_its_first_batch_and_says_so_once(tmp_path, monkeypatch):
    said = []
    for where in ("structured_pruning", "green_report"):
        monkeypatch.setattr(f"lightning_green.callbacks.{where}.rank_zero_info", said.append)

    model = NoExample(channels=[8, 16])
    assert model.example_input_array is None
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, verbose=False)
    report = GreenReport()
    make_trainer(tmp_path, [EnergyMonitor(print_summary=False), report, pruning], max_epochs=2).fit(model, data())
    said = [m for m in said if "has no `example_input_array`" in m]
    assert said == [
        "GreenReport: NoExample has no `example_input_array`; counting MACs on the first training batch (batch[0]).",
        "StructuredPruning: NoExample has no `example_input_array`; tracing it on the first training batch (batch[0]).",
    ]
    assert len(pruning.history) == 2 and pruning.speedup > 2.0 and model.features[0].out_channels == 4
    section = load_run(tmp_path).extra("model")
    assert section["macs_start"] == pruning.dense_macs and section["macs"] == pruning.macs < pruning.dense_macs


class NoForward(NoExample):
    """The usual wrapper: no ``forward`` of its own, ``training_step`` calls the network itself."""

    forward = LightningModule.forward

    def _step(self, batch, stage):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.classifier(torch.flatten(self.pool(self.features(x)), 1)), y)
        self.log(f"{stage}_loss", loss)
        return loss


def test_green_report_says_once_why_a_module_it_cannot_run_gets_no_macs(tmp_path, monkeypatch):
    # It was said at debug level only: the report simply had no MACs.
    said = []
    monkeypatch.setattr("lightning_green.callbacks.green_report.rank_zero_info", said.append)
    make_trainer(tmp_path, [EnergyMonitor(print_summary=False), GreenReport()], max_epochs=2).fit(NoForward(), data())
    said = [m for m in said if "MACs" in m]
    assert len(said) == 1 and said[0].startswith("GreenReport: no MACs in the report: NoForward has no")
    assert "Set `example_input_array`" in said[0] and "count_macs=False" in said[0]
    assert "macs_start" not in (load_run(tmp_path).extra("model") or {})


def test_a_forward_that_does_not_take_the_example_input_array_is_refused_with_what_to_do(tmp_path):
    model = DemoTransformer(vocab_size=256)
    model.example_input_array = torch.zeros(2, 8, dtype=torch.long)  # forward takes (inputs, target)
    with pytest.raises(
        ValueError,
        match=r"^StructuredPruning: DemoTransformer's forward does not take its `example_input_array` \(TypeError: "
        r".*\); name the submodule to prune with `module=` \(e\.g\. StructuredPruning\(module='model'\)\), or give "
        r"`example_input=` / `forward_fn=`\.$",
    ):
        fit(tmp_path, model, tokens(), [StructuredPruning(start_epoch=0, end_epoch=1)])


def test_module_and_a_dotted_forward_fn_come_from_yaml(tmp_path):
    from lightning_green.cli import cli

    config = tmp_path / "pruning.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_green.StructuredPruning\n      init_args:\n"
        "        module: model\n        forward_fn: tests.callbacks.test_structured_pruning_verify.run_lstm\n"
    )
    built = cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    (pruning,) = [cb for cb in built.trainer.callbacks if isinstance(cb, StructuredPruning)]
    assert pruning.module == "model" and pruning._forward is run_lstm


def test_a_model_traced_on_its_first_batch_resumes_and_reloads_pruned(tmp_path):
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, verbose=False)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(tmp_path, [pruning, checkpoints], max_epochs=2, enable_checkpointing=True)
    model = NoExample(channels=[8, 16])
    trainer.fit(model, data())
    assert model.features[0].out_channels == 4
    # The checkpoint keeps the first batch's shapes (not the batch), enough to trace the dense model again.
    again = StructuredPruning(pruning_ratio=0.75, start_epoch=0, end_epoch=2, verbose=False)  # one prune more
    resumed = NoExample(channels=[8, 16])
    make_trainer(tmp_path, [again], max_epochs=3).fit(resumed, data(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.features[0].out_channels < 4 and len(again.history) == 3
    reloaded = load_pruned(NoExample(channels=[8, 16]), tmp_path / "last.ckpt")
    assert reloaded.features[0].out_channels == 4


def test_module_prunes_only_that_submodule_and_keeps_the_optimizer_state_of_the_rest(tmp_path):
    model = NoExample(channels=[8, 16])
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, module="features", verbose=False)
    trainer = make_trainer(tmp_path, [pruning], max_epochs=2)
    trainer.fit(model, data())
    assert model.features[0].out_channels == 4 and model.features[4].num_features == 16  # its output stays whole
    assert pruning.history[0]["entries"][0][0] == "0"  # names relative to the submodule
    state = trainer.optimizers[0].state
    assert int(state[model.classifier.weight]["step"]) == int(state[model.features[0].weight]["step"]) == 6


@pytest.mark.parametrize("how", ["raised", "signal", "twice_after_the_cut"])
def test_ctrl_c_inside_a_prune_leaves_a_checkpoint_that_matches_its_history(tmp_path, monkeypatch, how):
    # KeyboardInterrupt after torch-pruning cut a first group: the model was left cut while the pruning history had
    # no entry, so Lightning's on-exception checkpoint could not be loaded ("replaying ... did not give its shapes").
    import signal

    from lightning.pytorch.callbacks import OnExceptionCheckpoint
    from torch_pruning.dependency.group import Group

    real, calls = Group.prune, {"n": 0}

    def prune(self, *args, **kwargs):
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        if calls["n"] == 2:  # in the middle of the cut
            if how == "raised":
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: held until the prune is whole
        return out

    if how == "twice_after_the_cut":  # the cut is verified, its bookkeeping not yet written: Ctrl-C pressed twice
        import lightning_green.callbacks.structured_pruning as sp_module

        real_rebuild = sp_module.rebuild_ddp

        def rebuild(trainer):
            calls["n"] = 2
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            return real_rebuild(trainer)

        monkeypatch.setattr(sp_module, "rebuild_ddp", rebuild)
    else:
        monkeypatch.setattr(Group, "prune", prune)
    sp = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, importance="magnitude-l1")
    model = small_cnn()
    trainer = make_trainer(tmp_path, [sp, OnExceptionCheckpoint(tmp_path)], enable_checkpointing=True)
    handler = signal.getsignal(signal.SIGINT)
    # Python's own Ctrl-C handler, whatever this process inherited (a shell's background job starts with SIGINT
    # ignored, and then Ctrl-C rightly does nothing).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown on KeyboardInterrupt
            trainer.fit(model, data())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT from then on
    assert calls["n"] >= 2
    ckpt = torch.load(tmp_path / "on_exception.ckpt", weights_only=True)
    history = next(v for k, v in ckpt["callbacks"].items() if k.startswith("StructuredPruning"))["history"]
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Raised inside the cut: undone (dense, no history). Ctrl-C: the prune finished first, then the run stopped.
    assert len(history) == (0 if how == "raised" else 1)
    assert (shapes == {k: tuple(v.shape) for k, v in small_cnn().state_dict().items()}) == (how == "raised")
    rebuilt = load_pruned(small_cnn(), str(tmp_path / "on_exception.ckpt"))
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
