import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def triton_interpret(monkeypatch):
    """Run Triton kernels in the CPU interpreter (must be set before a kernel first compiles)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return os.environ["TRITON_INTERPRET"]
