"""A small ResNet-style CNN for the digits demo: residual blocks, so pruning has coupled channels to respect."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_green.demos.digits import DigitsCNN

__all__ = ["BasicBlock", "DigitsResNet"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN projection) shortcut, ReLU after the add.

    Example:
        >>> BasicBlock(8, 16, stride=2)(torch.zeros(1, 8, 12, 12)).shape
        torch.Size([1, 16, 6, 6])
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsResNet(DigitsCNN):
    """A ResNet-style digits classifier: a conv stem, one :class:`BasicBlock` per stage (stride 2 after the first).

    Same training recipe, logging and arguments as :class:`~lightning_green.demos.DigitsCNN`; ``channels`` are
    the widths of the stages.

    Example:
        >>> model = DigitsResNet(channels=[8, 16])
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
    ) -> None:
        super().__init__(channels, num_classes, lr, weight_decay, channels_last)
        stages: list[nn.Module] = [
            nn.Conv2d(1, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        ]
        c_in = channels[0]
        for i, c in enumerate(channels):
            stages.append(BasicBlock(c_in, c, stride=1 if i == 0 else 2))
            c_in = c
        self.features = nn.Sequential(*stages)
        if channels_last:
            self.to(memory_format=torch.channels_last)
