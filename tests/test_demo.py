"""The README's first command: `tttgraph demo` runs offline, trains every new parameter, restores."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("diffusers")


def test_demo_reports_added_layers_gradients_and_restore():
    from tttgraph.demo import run_demo

    lines: list[str] = []
    result = run_demo(frames=5, frames_per_segment=2, overlap=1, mini_batch_size=8, out=lines.append)
    assert result["ttt_modules"] == ["transformer_blocks.0.attn1.gated_ttt", "transformer_blocks.1.attn1.gated_ttt"]
    # Per layer at width 32, 2 heads of 16, F = 64: q/k/v/o projections, lr projection, ttt_norm,
    # W1 + W2, b1, b2, post_norm, four gates.
    per_layer = 4 * (32 * 32 + 32) + (32 * 2 + 2) + 2 * 2 * 16 + 2 * (2 * 16 * 64) + 2 * 64 + 2 * 16 + 2 * 32 + 4 * 32
    assert result["added_params"] == 2 * per_layer
    assert result["restored_identical"]
    assert any("44/44 new tensors got finite gradients" in line for line in lines)


def test_cli_entry_point_runs_the_demo():
    out = subprocess.run(
        [sys.executable, "-m", "tttgraph", "demo", "--frames", "3"], capture_output=True, text=True, check=True
    )
    assert "gated_ttt" in out.stdout and "got finite gradients" in out.stdout and "identical" in out.stdout
