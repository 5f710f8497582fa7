"""Shared fixtures and the CUDA skip rule."""

from __future__ import annotations

import pytest
import torch

from lightning_green.testing import simulated_gpus


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def sim_gpu():
    """One simulated GPU installed at Zeus's device seam for the test's duration."""
    with simulated_gpus(1) as gpus:
        yield gpus.gpus[0]
