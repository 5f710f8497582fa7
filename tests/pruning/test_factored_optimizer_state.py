"""Optimizer state that is not shaped like its parameter (Adafactor's factored moments) across a prune."""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_green import StructuredPruning


class Net(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        self.example_input_array = torch.zeros(2, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adafactor(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(24, 8)), batch_size=8)


class Probe(Callback):
    """The optimizer state of each layer's weight at the end of epoch 0 and at the first batch of epoch 1."""

    def __init__(self):
        self.states = {}

    def _take(self, trainer, pl_module, when):
        opt = trainer.optimizers[0]
        self.states[when] = {
            i: {k: v.clone() for k, v in opt.state.get(pl_module.net[i].weight, {}).items()} for i in (0, 2, 4)
        }

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self._take(trainer, pl_module, "before")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:  # after the prune (StructuredPruning is listed first)
            self._take(trainer, pl_module, "after")


def test_adafactor_keeps_its_factored_moments_cut_to_the_kept_channels():
    # The state of every layer touched by the prune was dropped (its moments are not shaped like the weight).
    seed_everything(0)
    model, probe = Net(), Probe()
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False, ignored_layers=["net.2"])
    Trainer(
        max_epochs=2, callbacks=[pruning, probe], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    ).fit(model)  # fmt: skip
    assert model.net[0].weight.shape == (8, 8) and model.net[2].weight.shape == (16, 8)  # net.2's inputs cut too
    assert model.net[4].weight.shape == (2, 16)
    before, after = probe.states["before"], probe.states["after"]
    # the layer at the end was not cut at all: its state goes on; the others' moments are cut, not restarted
    assert all(torch.equal(before[4][k], after[4][k]) for k in ("row_var", "col_var")) and after[4]["step"] == 3
    assert after[0]["row_var"].shape == (8, 1) and after[0]["col_var"].shape == (1, 8) and after[0]["step"] == 3
    assert after[2]["col_var"].shape == (1, 8) and torch.equal(after[2]["row_var"], before[2]["row_var"])
