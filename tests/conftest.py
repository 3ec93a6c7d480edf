"""Shared test setup: `gpu` tests run only where CUDA is present (the GPU machine); the suite runs in
parallel processes (pytest-xdist, ``-n auto`` in pyproject.toml), one per core up to four, one thread each."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker gets one core: torch's default of one thread per core would make N workers fight over N cores.
    # Set before torch is imported so that subprocesses the tests start (torchrun, the CLI) inherit it too.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

MAX_WORKERS = 4  # the tiny models' tests are bound by Python; more workers mostly add start-up time


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one process on a GPU machine (GPU tests share one card and time it), else a core each."""
    if torch.cuda.is_available():
        return 0
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run on the GPU machine (pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
