"""StaMo tests run single-threaded: the tiny models are too small to gain from a second thread, and on a
shared 2-core machine two threads per process made them up to 10x slower (issue 12 measurements)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
