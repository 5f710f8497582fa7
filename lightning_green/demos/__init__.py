"""Built-in demo models and data modules (no download: the data ships with scikit-learn / Python)."""

from lightning_green.demos.digits import DigitsCNN, DigitsDataModule

__all__ = ["DigitsCNN", "DigitsDataModule"]
