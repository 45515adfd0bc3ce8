"""Run torch single-threaded here: on a busy 2-core machine, OpenMP barriers between two threads
make small convolutions tens of times slower than one thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
