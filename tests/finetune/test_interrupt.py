"""Ctrl-C / SIGTERM during ``tttgraph finetune``: the run stops after its current step with a checkpoint
of it, prints one line naming the checkpoint and the command that continues (``--resume``), exits with
130 / 143, and the continued run repeats the uninterrupted run's losses exactly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tttgraph.finetune.checkpointing import list_checkpoints
from tttgraph.finetune.stages import StageConfig
from tttgraph.finetune.trainer import read_metrics, run_stage

from .conftest import write_config

STEPS = 40


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # as the in-process reference runs (conftest.one_thread): same float sums
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # even where the test runner was started with SIGINT ignored


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_says_how_to_continue_and_the_run_continues_exactly(clips_3s, tmp_path):
    config = write_config(tmp_path / "c.json", clips_3s, steps=STEPS)  # checkpoints every 2 steps, keep 2
    out = tmp_path / "run"
    cmd = ["finetune", "--config", str(config), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "tttgraph", *cmd], env=_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not list_checkpoints(out / "checkpoints") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "\r" not in err and "Traceback" not in err  # plain progress lines, no traceback
    step, where = list_checkpoints(out / "checkpoints")[-1]
    assert 2 <= step < STEPS, "the run finished before it could be interrupted"
    assert err.splitlines()[-1] == (
        f"tttgraph finetune: interrupted by SIGINT; saved checkpoint {where} (step {step}); continue with: "
        f"tttgraph {shlex.join(cmd)} --resume")
    assert not (out / "ttt").exists()

    command = shlex.split(err.splitlines()[-1].split("; continue with: ")[1])
    done = subprocess.run([sys.executable, "-m", "tttgraph", *command[1:]], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {where} (step {step})" in done.stdout
    assert (out / "ttt" / "tttgraph_recipe.json").is_file()

    run_stage(StageConfig.load(config), tmp_path / "reference", progress=False, log=lambda *a: None)
    assert [r["loss"] for r in read_metrics(out)] == [r["loss"] for r in read_metrics(tmp_path / "reference")]
