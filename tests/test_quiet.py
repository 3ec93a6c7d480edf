"""Third-party messages a user can't act on stay out of ``tttgraph export`` (capture + ONNX export)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tttgraph.quiet import muted_log

NOISE = ("torchvision is not installed", "LeafSpec", "Attribute type is ambiguous", "[torch.onnx]")


@pytest.mark.slow
def test_capture_and_onnx_export_print_nothing_but_the_result(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("onnxscript")
    out = tmp_path / "m.onnx"
    # Python warnings shown every time (not once per location) so that none hides behind an earlier one.
    done = subprocess.run([sys.executable, "-W", "always", "-m", "tttgraph", "export", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and f"exported onnx to {out}" in done.stdout
    for noise in NOISE:
        assert noise not in done.stderr and noise not in done.stdout, noise
    assert done.stderr == ""  # the capture bar too: on a pipe a quick capture prints no progress line


def test_muted_log_drops_only_the_matching_message(caplog):
    log = logging.getLogger("tttgraph.tests.some_library")
    with caplog.at_level(logging.WARNING, logger=log.name), muted_log(log.name, r"torchvision is not installed"):
        log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        log.warning("something the user should see")
    assert [r.getMessage() for r in caplog.records] == ["something the user should see"]
    log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")  # outside the block: shown
    assert len(caplog.records) == 2
