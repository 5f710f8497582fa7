"""Checkpoints of a module that compiles a submodule (``torch.compile`` in ``configure_model``)."""

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_green import StructuredPruning
from lightning_green.pruning import load_pruned


class CompilesItsNet(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        self.example_input_array = torch.zeros(2, 8)

    def configure_model(self):
        if not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net, backend="eager")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 8)), batch_size=8)


def test_load_pruned_reads_a_checkpoint_of_a_compiled_submodule_into_a_plain_module(tmp_path):
    # The checkpoint names the weights `net._orig_mod.0.weight`, the plain module `net.0.weight`: load_pruned found
    # nothing to cut, and with strict=False returned the dense, untrained module.
    seed_everything(0)
    trained = CompilesItsNet()
    pruning = StructuredPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        callbacks=[pruning],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(trained)
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    assert "net._orig_mod.0.weight" in torch.load(ckpt, weights_only=True)["state_dict"]
    for strict in (True, False):
        model = load_pruned(CompilesItsNet(), ckpt, strict=strict).eval()
        assert model.net[0].weight.shape == (16, 8)
        x = torch.randn(4, 8)
        assert torch.equal(model(x), trained.eval()(x))
