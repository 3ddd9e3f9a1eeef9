import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FEDLAB_FAST", "1")

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)

# Tests are functional, not timed: one intra-op thread each keeps parallel workers (and other
# processes on a 2-core machine) from oversubscribing the CPU, which slows tiny ops 10-100x.
torch.set_num_threads(1)
