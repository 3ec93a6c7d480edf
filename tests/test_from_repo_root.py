"""Commands a newcomer runs from the repository root (where the root is first on ``sys.path``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_at_root(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_python_m_tttgraph_help():
    out = _run_at_root("-m", "tttgraph", "--help")
    assert "generate" in out and "finetune" in out


@pytest.mark.slow
def test_python_m_examples_one_minute_video_dry_run():
    pytest.importorskip("diffusers")
    out = _run_at_root("-m", "examples.one_minute_video", "--dry-run")
    assert "segments" in out
