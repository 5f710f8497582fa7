"""Built-in demo models and data modules (no download: the data ships with scikit-learn / Python)."""

from lightning_green.demos.digits import DigitsCNN, DigitsDataModule
from lightning_green.demos.gpt import StdlibTextDataModule, TinyGPT
from lightning_green.demos.hf import HFCausalLM
from lightning_green.demos.resnet import DigitsResNet

__all__ = ["DigitsCNN", "DigitsDataModule", "DigitsResNet", "HFCausalLM", "StdlibTextDataModule", "TinyGPT"]
