"""The built-in demo: a small CNN on scikit-learn's bundled handwritten digits (real data, no download).

``sklearn.datasets.load_digits`` ships 1,797 real 8×8 handwritten digits (UCI ML hand-written digits). They are
upsampled once to ``image_size`` so the convolutions do real work — the offline stand-in for MNIST.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_green._internal.validation import check_bool, check_choice, check_number, fail
from lightning_green.data.losses import reduce_sample_losses
from lightning_green.demos._data import SplitDataModule, check_demo_data
from lightning_green.pruning.history import LoadsPrunedCheckpoints

__all__ = ["DigitsCNN", "DigitsDataModule"]


class DigitsDataModule(SplitDataModule):
    """scikit-learn's handwritten digits as train/val/test splits (stratified, seeded).

    Args:
        batch_size: Samples per batch.
        image_size: Side the 8×8 images are upsampled to (bilinear), at least 8.
        val_fraction: Share of the data held out for validation.
        test_fraction: Share held out for testing (also used for ``predict``).
        seed: Seed of the split.
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), x.dtype, int(y.max()) <= 9
        ((32, 1, 24, 24), torch.float32, True)
        >>> len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
        1797
    """

    serves = "images"

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 24,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_number(name, "batch_size", batch_size, integer=True, ge=1)
        check_number(name, "image_size", image_size, integer=True, ge=8)
        check_number(name, "val_fraction", val_fraction, gt=0, lt=1)
        check_number(name, "test_fraction", test_fraction, gt=0, lt=1)
        if val_fraction + test_fraction >= 1:
            fail(
                name,
                "val_fraction",
                val_fraction,
                f"such that val_fraction + test_fraction < 1 (test_fraction={test_fraction})",
            )
        check_number(name, "seed", seed, integer=True)
        check_number(name, "num_workers", num_workers, integer=True, ge=0)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers

    def setup(self, stage: str) -> None:
        """Load, scale to [0, 1], upsample and split (once)."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != 8:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.5
        y = torch.tensor(data.target, dtype=torch.long)
        idx = list(range(len(y)))
        held = self.val_fraction + self.test_fraction
        train_idx, rest = train_test_split(idx, test_size=held, stratify=data.target, random_state=self.seed)
        val_idx, test_idx = train_test_split(
            rest, test_size=self.test_fraction / held, stratify=data.target[rest], random_state=self.seed
        )
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])


class DigitsCNN(LoadsPrunedCheckpoints, pl.LightningModule):
    """A small VGG-style CNN for the digits demo: conv-BN-ReLU blocks, max-pooling, a linear classifier.

    Args:
        channels: Output channels of the conv blocks; a max-pool follows every block but the first.
        num_classes: Output classes.
        lr: Learning rate (cosine-annealed over ``max_epochs``); 3e-3 suits Adam, SGD wants about 0.05.
        weight_decay: Weight decay.
        optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum 0.9, Nesterov). Under SGD an update is proportional
            to the gradient, which is what DataPruning's loss rescaling keeps unbiased; Adam normalises every step.
        channels_last: Keep weights and activations in NHWC, the layout oneDNN's fast (bf16) CPU kernels use.

    ``example_input_array`` (used for MAC counts and pruning graphs) follows the datamodule's ``image_size``.

    Example:
        >>> model = DigitsCNN(channels=[8, 16])
        >>> model(torch.zeros(2, 1, 24, 24)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        num_classes: int = 10,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        channels_last: bool = True,
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
            fail(name, "channels", channels, "a non-empty list of positive ints")
        check_number(name, "num_classes", num_classes, integer=True, ge=2)
        check_number(name, "lr", lr, gt=0)
        check_number(name, "weight_decay", weight_decay, ge=0)
        check_bool(name, "channels_last", channels_last)
        check_choice(name, "optimizer", optimizer, ("adam", "sgd"))
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes)
        self.example_input_array = torch.zeros(1, 1, 24, 24)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        """Size ``example_input_array`` like the datamodule's images; refuse a demo datamodule of other batches."""
        check_demo_data(self, ("images",), "image data, e.g. lightning_green.demos.DigitsDataModule")
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "image_size", None)
        if isinstance(size, int):
            self.example_input_array = torch.zeros(1, 1, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        # The plain mean, except under DataPruning in training (its weighted mean of the kept samples).
        loss = reduce_sample_losses(self, losses) if stage == "train" else losses.mean()
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(f"{stage}_loss", losses.mean(), prog_bar=stage != "train", on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", acc, prog_bar=stage != "train", on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one batch."""
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Validation loss and accuracy."""
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Test loss and accuracy."""
        self._step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Predicted class per image."""
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self):  # noqa: D102 - Lightning hook
        hp = self.hparams
        if hp.get("optimizer", "adam") == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 10
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
