"""SIGTERM / Ctrl-C during ``tttgraph generate``: one line with the step saved and the command that
continues, exit status 143 / 130, and the continued run gives the uninterrupted run's video exactly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tttgraph.generate.video_io import read_mp4

ROOT = Path(__file__).resolve().parents[2]
STEPS = 100


def _tttgraph(argv: list[str]) -> list[str]:
    """A ``tttgraph ...`` command line as this interpreter runs it."""
    assert argv[0] == "tttgraph", argv
    return [sys.executable, "-m", "tttgraph", *argv[1:]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # even where the test runner was started with SIGINT ignored


@pytest.mark.slow
def test_interrupted_generation_says_how_to_continue_and_continues_exactly(tmp_path):
    signum = signal.SIGTERM  # tests/finetune/test_interrupt.py sends SIGINT
    out = tmp_path / "v.mp4"
    flags = ["--tiny", "--seconds", "3", "--steps", str(STEPS), "--ttt", "none", "--out", str(out), "--no-resume"]
    proc = subprocess.Popen(_tttgraph(["tttgraph", "generate", *flags]), cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    ckpt = out.with_suffix(".resume.safetensors")
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "\r" not in err and "Traceback" not in err  # plain progress lines, no traceback
    last = err.splitlines()[-1]
    prefix = f"tttgraph generate: interrupted by {signal.Signals(signum).name}; saved the latents of step "
    assert last.startswith(prefix), err[-3000:]
    step = int(last[len(prefix):].split("/")[0])
    assert 5 <= step < STEPS and step % 5 == 0 and not out.exists()
    assert f"/{STEPS} in {ckpt}; continue with: tttgraph generate " in last
    command = shlex.split(last.split("; continue with: ")[1])
    assert "--no-resume" not in command  # it would start over

    done = subprocess.run(_tttgraph(command), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {ckpt} at step {step}/{STEPS}" in done.stdout
    assert not ckpt.exists()  # removed after success

    fresh = tmp_path / "fresh.mp4"
    again = [*flags[:-3], "--out", str(fresh)]
    done = subprocess.run(_tttgraph(["tttgraph", "generate", *again]), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes() == fresh.read_bytes()  # bit-exact MP4 of the same frames
    assert read_mp4(out)[0].shape == (49, 32, 48, 3)
