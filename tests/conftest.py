import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FEDLAB_FAST", "1")

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
