"""Generation tests run their tiny models on one CPU thread.

The tiny models' ops are a few kilobytes each: a second OpenMP thread gains nothing, and on the
shared 2-core machines (other work running) its barriers made the tiny VAE decode 20x slower.
Results are compared only between runs with the same thread count, so this changes no assertion.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
