"""Scale-out: the same command under torchrun (2 CPU processes, gloo) gives one process's latents.

``python -m torch.distributed.run`` is torchrun itself (the console script runs that module).

Heads are split by rank: rank r of 2 computes head r of every segment-local attention and every
TTT-MLP scan of the tiny model (2 heads); an all-gather restores both heads on every rank, the
linear layers are replicated. Each head runs exactly the kernels it runs in a single process, so
with the same thread count (1 here: torchrun's default for several processes) the latents agree
bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--tiny", "--seconds", "6", "--steps", "2", "--checkpoint-every", "1", "--keep-checkpoint", "--no-progress",
         "--ttt", "none"]


def _run(cmd: list[str]) -> str:
    """Run from the repository root, as a newcomer would (the root is then first on sys.path)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path):
    single = _run([sys.executable, "-m", "examples.one_minute_video", *FLAGS, "--out", str(tmp_path / "one.mp4")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    dist = _run([*torchrun, "-m", "tttgraph", "generate", *FLAGS, "--out", str(tmp_path / "two.mp4")])
    assert "heads of 2 attentions and 2 TTT layers split over 2 processes" in dist
    assert "split over" not in single
    one, two = (load_file(tmp_path / f"{n}.resume.safetensors") for n in ("one", "two"))
    assert one.keys() == two.keys() == {"latents", "old_pred"}
    for key in one:
        assert torch.equal(one[key], two[key]), (key, (one[key] - two[key]).abs().max())
    assert (tmp_path / "one.mp4").read_bytes() == (tmp_path / "two.mp4").read_bytes()
