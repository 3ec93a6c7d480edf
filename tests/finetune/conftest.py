"""Shared fixtures: a tiny raw storyboard dataset and its precomputed 3 s clips (built once)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Run these tests on one intra-op thread (restored afterwards).

    The tiny models are bound by per-op overhead; on a shared 2-core machine a second OpenMP thread
    only adds contention (the tiny VAE decode measured 0.25 s on 1 thread, 3-9 s on 2 under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def raw_dataset(tmp_path_factory):
    from tttgraph.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("raw"), samples=3, seconds=6, height=32, width=48, seed=5)


@pytest.fixture(scope="package")
def bundle():
    from tttgraph.models.cogvideox_bundle import tiny_bundle

    return tiny_bundle(seed=0)


@pytest.fixture(scope="package")
def clips_3s(tmp_path_factory, raw_dataset, bundle):
    from tttgraph.finetune.precompute import precompute

    return precompute(bundle, raw_dataset, tmp_path_factory.mktemp("clips") / "3s", 3, shard_size=4, progress=False)


def write_config(path, precomputed, **train):
    """A tiny stage config on ``precomputed`` clips; ``train`` overrides the train section."""
    cfg = {"data": {"precomputed": str(precomputed)},
           "train": {"steps": 6, "batch_size": 2, "warmup_steps": 2, **train},
           "checkpoint": {"every": 2, "keep": 2}}
    path.write_text(json.dumps(cfg))
    return path
