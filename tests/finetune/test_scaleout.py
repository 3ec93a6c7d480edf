"""Scale-out and fault tolerance: 2 processes (FSDP2 over gloo) and a run killed with SIGKILL.

Both compare against one uninterrupted single-process run of the same config (global batch 2):
the 2-process run (batch 1 each) must give the same losses up to float rounding, the killed and
resumed run exactly the same losses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tttgraph.finetune.checkpointing import list_checkpoints
from tttgraph.finetune.stages import StageConfig
from tttgraph.finetune.trainer import read_metrics, run_stage

from .conftest import write_config

STEPS = 10


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # as the in-process reference runs (conftest.one_thread): same float sums
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def reference(clips_3s, tmp_path_factory):
    """The uninterrupted single-process run: losses per step and the final trainable weights."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "b2.json", clips_3s, steps=STEPS)
    run_stage(StageConfig.load(config), root / "out", progress=False, log=lambda *a: None)
    return config, root / "out", [r["loss"] for r in read_metrics(root / "out")]


def test_two_processes_with_fsdp2_give_the_losses_of_one(reference, clips_3s, tmp_path):
    _, ref_out, ref_losses = reference
    config = write_config(tmp_path / "b1.json", clips_3s, steps=STEPS, batch_size=1)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tttgraph", "finetune", "--config", str(config), "--out", str(out), "--no-progress", "--device", "cpu"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es) on cpu, FSDP2" in done.stdout
    losses = [r["loss"] for r in read_metrics(out)]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    # Each process checkpointed its own shard; the gathered stage save matches the single process's.
    last = out / "checkpoints" / f"step-{STEPS:06d}"
    assert (last / "model-rank00000.safetensors").is_file() and (last / "model-rank00001.safetensors").is_file()
    two = load_file(str(out / "ttt" / "tttgraph_weights.safetensors"))
    one = load_file(str(ref_out / "ttt" / "tttgraph_weights.safetensors"))
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)

    # Resuming the sharded run from its step-8 checkpoint repeats steps 9 and 10 exactly.
    shutil.rmtree(last)
    done = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"(step {STEPS - 2})" in done.stdout
    assert [r["loss"] for r in read_metrics(out)] == losses


def test_sigkill_then_resume_repeats_the_uninterrupted_losses_exactly(reference, tmp_path):
    config, _, ref_losses = reference
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tttgraph", "finetune", "--config", str(config), "--out", str(out), "--no-progress",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list_checkpoints(out / "checkpoints") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    killed_at = list_checkpoints(out / "checkpoints")[-1][0]
    assert killed_at < STEPS, "the run finished before it could be killed"
    summary = run_stage(StageConfig.load(config), out, resume=True, progress=False, log=lambda *a: None)
    assert summary["start_step"] >= killed_at
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == ref_losses  # exact: same data order, noise, optimizer and RNG state
