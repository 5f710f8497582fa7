"""StructuredPruning on set-ups an outside review brought.

Earlier checkpoints into a pruned module, an LSTM, Lightning's demo Transformer, weight averaging, schedules cut
short, a dict batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.demos import Transformer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_green import StructuredPruning
from lightning_green.pruning import load_pruned
from lightning_green.pruning.history import Architecture, rebuild_from_checkpoint
from tests.helpers import QUIET


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    base = {"logger": False, "enable_checkpointing": False, "num_sanity_val_steps": 0, "max_epochs": 3, **QUIET}
    return Trainer(default_root_dir=tmp_path, callbacks=callbacks, **{**base, **kwargs})


def _loader(n: int = 32, width: int = 16, classes: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, width, generator=g), torch.randint(0, classes, (n,), generator=g)), 8
    )


class MLP(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.example_input_array = torch.zeros(2, 16)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("epoch_score", float(self.current_epoch == 1))  # the "best" epoch is 1, between two prunes

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _widths(model: MLP) -> list[int]:
    return [m.out_features for m in model.net if isinstance(m, nn.Linear)]


def test_an_earlier_checkpoint_loads_into_the_module_pruned_since(tmp_path):
    # The best checkpoint is from epoch 1, after the first of two prunes; the module ends the fit cut twice.
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="epoch_score", mode="max", save_top_k=-1)
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = _trainer(tmp_path, [pruning, ckpt], enable_checkpointing=True, max_epochs=3)
    model = MLP()
    trainer.fit(model, _loader(), _loader())
    assert _widths(model) == [16, 16, 4] and ckpt.best_model_path.endswith("epoch=1-step=8.ckpt")
    expected = load_pruned(MLP(), ckpt.best_model_path)
    loss = F.cross_entropy(expected(_loader().dataset.tensors[0]), _loader().dataset.tensors[1]).item()

    result = trainer.test(model, _loader(n=32), ckpt_path="best", verbose=False)
    assert _widths(model) == [24, 24, 4]  # the best checkpoint's architecture, one prune in
    assert result[0]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values(), strict=True)
    )
    # And back: the checkpoint of the last epoch (cut twice) and the dense one of epoch 0 both load.
    for name, widths in (("epoch=2-step=12.ckpt", [16, 16, 4]), ("epoch=0-step=4.ckpt", [32, 32, 4])):
        trainer.test(model, _loader(), ckpt_path=str(tmp_path / name), verbose=False)
        assert _widths(model) == widths
        assert model.net[2].in_features == widths[0]


def test_a_failed_rebuild_leaves_the_module_as_it_was(tmp_path):
    trainer = _trainer(tmp_path, [StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False)])
    trainer.fit(MLP(), _loader())
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    checkpoint = torch.load(tmp_path / "pruned.ckpt", weights_only=True)

    class Wider(MLP):  # built with other hyperparameters than in training: the replay cannot give the shapes
        def __init__(self) -> None:
            super().__init__()
            self.net[4] = nn.Linear(32, 5)

    model = Wider()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="did not give its shapes.*left as it was"):
        rebuild_from_checkpoint(model, checkpoint, architecture=Architecture(model))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.net[2].in_features == 32


def test_architecture_restores_removed_layers_ties_and_lazy_tensors():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight
            self.register_buffer("scale", torch.arange(8.0), persistent=False)

    model = Tied()
    arch = Architecture(model)
    scale = model.scale.clone()
    model.emb.weight = nn.Parameter(torch.zeros(10, 4))  # what a prune and a layer drop leave behind
    model.head.weight = model.emb.weight
    model.blocks = nn.ModuleList([nn.Linear(4, 4)])
    model.scale = torch.zeros(4)
    kept_head = model.head
    assert arch.differs(model)
    arch.restore(model)
    assert not arch.differs(model)
    assert model.head is kept_head and model.head.weight is model.emb.weight  # same module, still tied
    assert len(model.blocks) == 2 and tuple(model.blocks[1].weight.shape) == (8, 8)
    assert torch.equal(model.scale, scale)  # a non-persistent buffer (not in checkpoints) keeps its values


def test_a_single_layer_lstm_is_left_whole_and_training_goes_on(tmp_path):
    class Recurrent(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.rnn = nn.LSTM(16, 32, batch_first=True)  # torch-pruning fails inside its LSTM rule: undone
            self.fc = nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)
            self.example_input_array = torch.zeros(2, 6, dtype=torch.long)

        def forward(self, x):
            h, _ = self.rnn(self.emb(x))
            return self.head(F.relu(self.fc(h[:, -1])))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 50, (32, 6), generator=g), torch.randint(0, 4, (32,), generator=g))
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    model = Recurrent()
    with pytest.warns(UserWarning, match="'rnn'.*left whole|left whole.*'rnn'"):
        _trainer(tmp_path, [pruning], max_epochs=2).fit(model, DataLoader(data, batch_size=8))
    assert pruning.prunes_done == 1 and "rnn" in pruning.left_whole
    assert model.rnn.weight_hh_l0.shape == (128, 32)
    assert model(torch.zeros(3, 6, dtype=torch.long)).shape == (3, 4)


class DemoTransformer(LightningModule):
    """Lightning's demo Transformer, whose positional encoding is a plain tensor made on the first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=50, ninp=32, nhead=2, nhid=32, nlayers=1, dropout=0.0)

    def forward(self, inputs, target):
        return self.model(inputs, target)

    def training_step(self, batch, batch_idx):
        return F.nll_loss(self(*batch), batch[1].view(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_demo_transformer_resumes_and_loads_pruned(tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens = TensorDataset(torch.randint(0, 50, (32, 8), generator=g), torch.randint(0, 50, (32, 8), generator=g))
    trainer = _trainer(tmp_path, [StructuredPruning(pruning_ratio=0.25, start_epoch=1, end_epoch=1, verbose=False)])
    trained = DemoTransformer()
    trainer.fit(trained, DataLoader(tokens, batch_size=8), ckpt_path=None)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    x, y = tokens.tensors[0][:4], tokens.tensors[1][:4]

    loaded = load_pruned(DemoTransformer(), tmp_path / "x.ckpt").eval()
    assert torch.allclose(loaded(x, y), trained.eval()(x, y), atol=1e-5)
    pruning = StructuredPruning(pruning_ratio=0.25, start_epoch=1, end_epoch=1, verbose=False)
    resumed = DemoTransformer()
    _trainer(tmp_path, [pruning], max_epochs=4).fit(
        resumed, DataLoader(tokens, batch_size=8), ckpt_path=tmp_path / "x.ckpt"
    )
    assert resumed.model.pos_encoder.pe.shape[-1] == resumed.model.embedding.embedding_dim < 32


# EMAWeightAveraging is Lightning 2.6's (the declared floor is 2.5).
EMA = getattr(pl_callbacks, "EMAWeightAveraging", None)


@pytest.mark.parametrize(
    "averaging",
    [
        StochasticWeightAveraging(swa_lrs=0.05),
        pytest.param(EMA() if EMA else None, marks=pytest.mark.skipif(EMA is None, reason="Lightning < 2.6")),
    ],
)
def test_weight_averaging_is_refused_at_setup(tmp_path, averaging):
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    with pytest.raises(ValueError, match=f"{type(averaging).__name__} cannot run in the same fit.*load_pruned"):
        _trainer(tmp_path, [pruning, averaging]).fit(MLP(), _loader())


def test_prunes_that_did_not_happen_are_reported_at_the_end(tmp_path):
    # An epoch schedule cut short by max_steps: 1 of 4 prunes.
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=4, verbose=False)
    with pytest.warns(UserWarning, match=r"8 optimizer steps with 1 of the 4 prunes done; the prunes at epoch 2, 3, 4"):
        _trainer(tmp_path, [pruning], max_epochs=10, max_steps=8).fit(MLP(), _loader())
    # Taylor's window of 4 batches fills a whole 4-batch epoch: each prune lands an epoch late, the last one never.
    pruning = StructuredPruning(pruning_ratio=0.5, importance="taylor", start_epoch=1, end_epoch=2, verbose=False)
    with pytest.warns(UserWarning, match=r"1 of the 2 prunes done; the prunes at epoch 2 .*importance_batches=4"):
        _trainer(tmp_path, [pruning], max_epochs=3).fit(MLP(), _loader())


def test_a_finished_schedule_says_nothing_at_the_end(tmp_path, recwarn):
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    _trainer(tmp_path, [pruning], max_epochs=2).fit(MLP(), _loader())
    assert pruning.prunes_done == 1
    assert not [w for w in recwarn if "did not happen" in str(w.message)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_step": 0, "end_step": 10, "end_epoch": 5}, r"end_epoch=5\): `end_epoch` must be None with a step"),
        ({"start_step": 0, "end_step": 10, "start_epoch": 3}, r"start_epoch=3\): `start_epoch` must be left at 1"),
    ],
)
def test_epoch_arguments_next_to_a_step_schedule_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredPruning(**kwargs)


class DictBatches(Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(16, generator=g), "extra": torch.randn(8, generator=g), "y": i % 4}


class TakesTheDict(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(16, 32), nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, batch):
        return self.head(F.relu(self.a(batch["x"]) + self.b(batch["extra"])))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_taking_the_whole_dict_batch_is_traced_on_it(tmp_path):
    trainer = _trainer(tmp_path, [StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)])
    model = TakesTheDict()
    trainer.fit(model, DataLoader(DictBatches(), batch_size=8))
    trainer.save_checkpoint(tmp_path / "d.ckpt")
    assert model.a.out_features == model.b.out_features == 16
    assert load_pruned(TakesTheDict(), tmp_path / "d.ckpt").a.out_features == 16


class Stateful(MLP):
    """Training state a checkpoint does not hold, a buffer added at the fit's start, layers made in configure_model."""

    def __init__(self) -> None:
        LightningModule.__init__(self)
        self.net = None
        self.example_input_array = torch.zeros(2, 16)
        self.loss_ema = torch.tensor(0.0)
        self.register_buffer("steps_seen", torch.tensor(0.0), persistent=False)

    def configure_model(self):
        if self.net is None:  # Lightning calls it after the callbacks' setup
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Dropout(0.5), nn.Linear(32, 4))

    def on_fit_start(self):
        self.register_buffer("class_counts", torch.zeros(4))

    def training_step(self, batch, batch_idx):
        self.loss_ema, self.steps_seen = torch.tensor(7.0), self.steps_seen + 1
        self.net[3].p = 0.1  # a schedule of the user's
        self.class_counts += torch.bincount(batch[1], minlength=4)
        return super().training_step(batch, batch_idx)


def test_an_earlier_checkpoint_changes_only_what_the_prunes_changed(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="epoch_score", mode="max")
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = _trainer(tmp_path, [pruning, ckpt], enable_checkpointing=True)
    model = Stateful()
    trainer.fit(model, _loader(), _loader())
    assert _widths(model) == [16, 16, 4] and pruning.speedup > 2.5
    saved = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]["class_counts"]

    trainer.test(model, _loader(), ckpt_path="best", verbose=False)
    assert _widths(model) == [24, 24, 4] and model.net[2].in_features == 24
    assert float(model.loss_ema) == 7.0 and float(model.steps_seen) == 12.0 and model.net[3].p == 0.1
    assert torch.equal(model.class_counts, saved)  # added after setup, and loaded from the checkpoint
    assert 1.5 < pruning.speedup < 2.0  # the model as loaded: one prune in, not the fit's two
