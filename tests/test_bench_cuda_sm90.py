"""The A/B logic of benchmarks/bench_cuda_sm90.py (issue #5's tool of record), on the CPU with stub kernels.

The kernels themselves need an H100; here the backend, the builds and the timer are replaced by stubs
so that what the benchmark decides (which builds run in which order, which rows say "bitwise =
current", what --no-triton leaves out) is checked in CI.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_cuda_sm90 as bench  # noqa: E402

from tttgraph.kernels.ttt_mlp import cuda_sm90, reference  # noqa: E402
from tttgraph.kernels.ttt_mlp import triton as triton_backend  # noqa: E402
from tttgraph.kernels.ttt_mlp.cuda_sm90 import build  # noqa: E402


def test_rotated_moves_the_first_k_to_the_end():
    assert bench.rotated([1, 2, 3], 0) == [1, 2, 3]
    assert bench.rotated([1, 2, 3], 1) == [2, 3, 1]
    assert bench.rotated([1, 2, 3], 4) == [2, 3, 1]


@pytest.fixture
def stub_kernels(monkeypatch):
    """cuda_sm90 builds as stubs: the baseline named "differs" returns other numbers. Records the
    (pass, build) of every call in order."""
    calls, active = [], {"src": None}

    @contextlib.contextmanager
    def using_extension(_build, src):
        active["src"] = src
        try:
            yield
        finally:
            active["src"] = None

    def forward(q, *args):
        calls.append(("fwd", active["src"]))
        shift = 1 if active["src"] == "differs" else 0
        return q.float() + shift, [torch.zeros(1)] * 4

    def backward(grad_out, *args):
        calls.append(("bwd", active["src"]))
        return [torch.full((3,), 2.0 if active["src"] == "differs" else 1.0)] * 10

    monkeypatch.setattr(bench, "using_extension", using_extension)
    monkeypatch.setattr(bench, "time_ms", lambda fn, reps=3: (fn(), 1.0)[1])
    monkeypatch.setattr(bench, "layer_inputs", lambda heads, seq_len, seed=0, device="cpu": bench.make_inputs(
        1, heads, seq_len, 64, 256, torch.bfloat16, torch.device("cpu"), seed=seed))
    monkeypatch.setattr(build, "unavailable_reason", lambda: None)
    monkeypatch.setattr(build, "extension", lambda src=None: object())
    monkeypatch.setattr(cuda_sm90, "forward", forward)
    monkeypatch.setattr(cuda_sm90, "backward", backward)
    monkeypatch.setattr(cuda_sm90, "_run", lambda q, *args: calls.append(("scan", active["src"], args[-2:])))
    monkeypatch.setattr(cuda_sm90, "output_workers", lambda batch_heads: 18)
    monkeypatch.setattr(triton_backend, "forward", lambda q, *a: (q.float(), None))
    monkeypatch.setattr(triton_backend, "backward", lambda *a: [torch.ones(3)] * 10)
    monkeypatch.setattr(reference, "forward", lambda q, *a: (q.float(), [torch.zeros(1)] * 4))
    monkeypatch.setattr(reference, "backward", lambda *a: [torch.ones(3)] * 10)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub card")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a: None)
    return calls


def _rows(out):
    return [line for line in out.splitlines() if line.startswith("| cuda_sm90") or line.startswith("| triton")]


def test_rounds_rotate_the_builds_and_baselines_are_compared_bitwise(stub_kernels, capsys):
    bench.main(["--seq-lens", "130", "--heads", "2", "--backward", "--rounds", "2", "--ref-grads-up-to", "200",
                "--baseline-dir", "same", "differs"])
    rows = _rows(capsys.readouterr().out)
    fwd = [r.split("|")[1].strip() for r in rows if "backward" not in r]
    assert fwd == ["cuda_sm90 v7 (split, fast tanh) [round 1]", "cuda_sm90 v7 from same [round 1]",
                   "cuda_sm90 v7 from differs [round 1]", "cuda_sm90 v7 from same [round 2]",
                   "cuda_sm90 v7 from differs [round 2]", "cuda_sm90 v7 (split, fast tanh) [round 2]", "triton"]
    for r in rows:
        if "from same" in r:
            assert "(bitwise = current)" in r
        elif "from differs" in r:
            assert "(differs from current)" in r
        else:
            assert "current)" not in r
    bwd = [r.split("|")[1].strip() for r in rows if "backward" in r]
    assert bwd[0] == "cuda_sm90 backward [round 1]" and bwd[3] == "cuda_sm90 backward from same [round 2]"
    assert bwd[-1] == "triton backward"
    # the first backward call is the untimed run of the current build the baselines are compared with;
    # the timed ones follow the rotated order (per build: the stub timer's call, the result, the repeat)
    calls = [src for kind, src in stub_kernels if kind == "bwd"]
    assert calls[0] is None and len(calls) == 1 + 2 * 3 * 3
    assert calls[1::3] == [None, "same", "differs", "same", "differs", None]


def test_no_triton_leaves_out_both_triton_passes(stub_kernels, capsys):
    bench.main(["--seq-lens", "70", "--heads", "2", "--backward", "--no-triton", "--ref-up-to", "0",
                "--ref-grads-up-to", "0"])
    assert not any("triton" in r for r in _rows(capsys.readouterr().out))


def test_rounds_below_one_are_refused_with_the_value(stub_kernels, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_fused_times_the_current_build_with_the_output_in_the_scan(stub_kernels, capsys):
    bench.main(["--seq-lens", "70", "--heads", "2", "--no-triton", "--ref-up-to", "0", "--fused"])
    out = capsys.readouterr().out
    assert "output-worker clusters beside 2 heads: 18" in out
    assert [r.split("|")[1].strip() for r in _rows(out)] == ["cuda_sm90 v7 (split, fast tanh)",
                                                             "cuda_sm90 v7 fused output"]
    # an untimed run of the current build first (the fused row is compared with it), then the rows
    assert [src for kind, src in stub_kernels if kind == "fwd"] == [None, None, None, None, bench.FUSED,
                                                                   bench.FUSED, bench.FUSED]


def test_fused_switches_the_backend_to_the_scan_output_and_back():
    assert cuda_sm90.DECOUPLED_OUTPUT
    with bench.using_extension(build, bench.FUSED):
        assert not cuda_sm90.DECOUPLED_OUTPUT
    assert cuda_sm90.DECOUPLED_OUTPUT


def test_output_workers_cap_the_worker_clusters_of_the_current_build(stub_kernels, capsys):
    bench.main(["--seq-lens", "70", "--heads", "2", "--no-triton", "--ref-up-to", "0", "--output-workers", "9", "3"])
    assert [r.split("|")[1].strip() for r in _rows(capsys.readouterr().out)] == [
        "cuda_sm90 v7 (split, fast tanh)", "cuda_sm90 v7 <= 9 output workers", "cuda_sm90 v7 <= 3 output workers"]
    srcs = [src for kind, src in stub_kernels if kind == "fwd"]
    assert bench.WORKERS.format(9) in srcs and bench.WORKERS.format(3) in srcs


def test_output_workers_set_and_restore_the_backend_cap():
    assert cuda_sm90.MAX_OUTPUT_WORKERS is None
    with bench.using_extension(build, bench.WORKERS.format(5)):
        assert cuda_sm90.MAX_OUTPUT_WORKERS == 5 and cuda_sm90.DECOUPLED_OUTPUT
    assert cuda_sm90.MAX_OUTPUT_WORKERS is None


def test_output_workers_below_one_are_refused_with_the_value(stub_kernels, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--output-workers", "0"])
    assert "--output-workers needs counts of at least 1, got [0]" in capsys.readouterr().err


def test_scan_alone_times_the_scan_of_the_current_build_without_and_with_checkpoints(stub_kernels, capsys):
    bench.main(["--seq-lens", "70", "--heads", "2", "--no-triton", "--ref-up-to", "0", "--scan-alone",
                "--rounds", "2"])
    rows = [r.split("|")[1].strip() for r in _rows(capsys.readouterr().out)]
    assert rows[-4:] == ["cuda_sm90 v7 scan alone [round 1]", "cuda_sm90 v7 scan alone + checkpoints [round 1]",
                         "cuda_sm90 v7 scan alone [round 2]", "cuda_sm90 v7 scan alone + checkpoints [round 2]"]
    # (save_state, with_out) of each timed call: no output, on the current build
    assert [c for c in stub_kernels if c[0] == "scan"] == [("scan", None, (False, False)),
                                                          ("scan", None, (True, False))] * 2
