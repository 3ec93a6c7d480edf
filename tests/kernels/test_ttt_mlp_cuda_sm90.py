"""The sm_90a backend of ``tttgraph::ttt_mlp`` against the reference (GPU machine), and its CPU-side checks.

On the GPU machine (``-m gpu``, an H100 or H200): forward output and checkpoints against the float32
reference at odd and real shapes, every gradient through the op, NaN-poisoned buffers, two runs
bitwise equal. In CI: the kernels compile for sm_90a with nvcc, importing builds nothing, and the
backend declines what it can't run with a reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from tests.kernels.ttt_loop import random_inputs
from tttgraph.kernels.ttt_mlp import backends, reference
from tttgraph.kernels.ttt_mlp import cuda_sm90 as sm90

EPS = 1e-6
on_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)), reason="needs an sm_90 GPU"
)


def _relerr(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def _inputs(bsz, heads, seq_len, seed=0, layer_scale=False):
    """bf16 q/k/v on the GPU and fp32 parameters; layer_scale: the TTT layer's own scales (init std 0.02)."""
    args = random_inputs(bsz, heads, seq_len, 64, 256, dtype=torch.float32, seed=seed)
    if layer_scale:
        g = torch.Generator().manual_seed(seed + 7)
        args = list(args)
        args[3] = (0.1 / 64 / 64) * torch.sigmoid(torch.randn(bsz, heads, seq_len, generator=g))
        args[6] = torch.randn(heads, 64, 256, generator=g) * 0.02
        args[8] = torch.randn(heads, 256, 64, generator=g) * 0.02
    return [a.to("cuda", torch.bfloat16 if i < 3 else torch.float32) for i, a in enumerate(args)]


def _reference(args, every=16, save=True):
    up = [a.float() for a in args]
    return reference.forward(*up, 64, EPS, every, save)


# ---------------------------------------------------------------- CPU (CI)


def test_kernels_compile_for_sm90a_with_nvcc(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed on this machine")
    from tttgraph.kernels.ttt_mlp.cuda_sm90 import build

    objects = build.compile_check(out_dir=tmp_path)
    assert objects and all(o.stat().st_size > 10_000 for o in objects)
    # ptxas reports the wgmma pipeline fixes it had to make as C75xx: C7520 serialises every wgmma of a
    # kernel when one sits on a path it thinks divergent (7% of the forward when it happened), C7519
    # injects warpgroup arrives. The forward's code triggers neither.
    fwd_log = objects[0].with_suffix(".ptxas.log").read_text()
    assert "ttt_mlp_fwd_kernel" in fwd_log and "(C75" not in fwd_log
    for obj in objects[1:]:  # the backward's kernels neither
        assert "(C75" not in obj.with_suffix(".ptxas.log").read_text()
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # the tensor-core and cluster instructions the design relies on are there
        fwd, bwd, bwd_out = (subprocess.run([cuobjdump, "--dump-sass", str(o)], capture_output=True,
                                            text=True).stdout for o in objects)
        # forward: wgmma, st.async pushes into the peer and mbarrier waits; backward: wgmma and cluster
        # barriers; the output's backward: wgmma
        assert "HGMMA" in fwd and "STAS" in fwd and "SYNCS.PHASECHK" in fwd
        assert "HGMMA" in bwd and "UCGABAR" in bwd
        assert "HGMMA" in bwd_out


def test_build_digest_covers_each_source_tree(tmp_path):
    """extension(source_dir) builds an older copy of the sources under its own cache key: the digest
    changes with any source, and a copy that lacks a newer header or kernel still gets one."""
    from tttgraph.kernels.ttt_mlp.cuda_sm90 import build

    for name in (*build.SOURCES, *build.HEADERS):
        shutil.copy(build.HERE / name, tmp_path / name)
    assert build._digest(tmp_path) == build._digest()
    (tmp_path / "ttt_mlp_fwd.cu").write_text((tmp_path / "ttt_mlp_fwd.cu").read_text() + "\n// edited\n")
    edited = build._digest(tmp_path)
    assert edited != build._digest()
    (tmp_path / "wgmma.cuh").unlink()
    no_header = build._digest(tmp_path)
    assert no_header not in (edited, build._digest())
    # a copy from before b4 lacks the output's backward kernel: still its own key, not an error
    (tmp_path / "ttt_mlp_bwd_out.cu").unlink()
    assert build._digest(tmp_path) not in (no_header, edited, build._digest())
    (tmp_path / "binding.cpp").unlink()
    with pytest.raises(FileNotFoundError, match="binding.cpp"):
        build.extension(str(tmp_path))


def test_import_builds_nothing_and_initialises_no_cuda():
    code = ("import torch, tttgraph.kernels.ttt_mlp.cuda_sm90 as m; import sys; "
            "assert not torch.cuda.is_initialized(); "
            "assert not any(k.startswith('tttgraph_cuda_sm90') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_declines_cpu_tensors_with_a_reason():
    args = [a.to(torch.bfloat16) if i < 3 else a for i, a in enumerate(random_inputs(1, 2, 70, 64, 256))]
    assert "not a CUDA device" in sm90.unsupported_reason(*args, 64, EPS)
    assert "not a CUDA device" in backends.explain(tuple(args))["cuda_sm90"]


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("shape", [(2, 3, 63), (1, 4, 200), (2, 3, 1), (1, 2, 1000), (3, 5, 130)],
                         ids=lambda s: "B{}-H{}-T{}".format(*s))
@pytest.mark.parametrize("output", ["decoupled", "fused", "one-worker"])
def test_forward_and_checkpoints_match_the_reference(shape, output, monkeypatch):
    """The output computed by worker CTAs from the ring (decoupled; one-worker: a single worker
    cluster, so the scan waits for ring slots) or by the scan itself (fused, v8)."""
    monkeypatch.setattr(sm90, "POISON_BUFFERS", True)
    monkeypatch.setattr(sm90, "DECOUPLED_OUTPUT", output != "fused")
    monkeypatch.setattr(sm90, "MAX_OUTPUT_WORKERS", 1 if output == "one-worker" else None)
    assert (sm90.output_workers(shape[0] * shape[1]) > 0) == (output != "fused")
    args = _inputs(*shape, seed=sum(shape))
    from tttgraph.kernels.ttt_mlp import triton as triton_backend

    out, states = sm90.forward(*args, 64, EPS, 3, True)
    ref_out, ref_states = _reference(args, every=3)
    # The tolerance is the error of the same computation in Triton (bf16 operands, same split products).
    tri_out, tri_states = triton_backend.forward(*args, 64, EPS, 3, True)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert _relerr(out, ref_out) < max(1e-2, 2 * _relerr(tri_out, ref_out))
    for s, t, r in zip(states, tri_states, ref_states, strict=True):
        assert s.shape == r.shape and torch.isfinite(s).all()
        assert _relerr(s, r) < 2 * _relerr(t, r) + 1e-5


@pytest.mark.gpu
@on_hopper
def test_decoupled_output_with_more_workers_than_ring_slots(monkeypatch):
    """One head, 400 mini-batches, ~130 worker CTAs: many more tiles in flight than the ring's slots,
    so workers wait for states while the scan waits for slots (a worker that waited while holding a
    slot would deadlock here). Same output as the fused kernel up to summation order."""
    assert sm90.output_workers(1) > 4  # worker clusters; the ring has 4 slots per head
    args = _inputs(1, 1, 64 * 400 - 5, seed=11)
    out, _ = sm90.forward(*args, 64, EPS, 16, False)
    monkeypatch.setattr(sm90, "DECOUPLED_OUTPUT", False)
    fused, _ = sm90.forward(*args, 64, EPS, 16, False)
    assert torch.isfinite(out).all()
    assert _relerr(out, fused) < 2e-3


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("output", ["decoupled", "fused"])
def test_checkpoint_only_pass_writes_the_same_states(output, monkeypatch):
    """The backward's recomputation (no output: the scan alone) gives bitwise the forward's states,
    with the output decoupled or fused."""
    monkeypatch.setattr(sm90, "DECOUPLED_OUTPUT", output == "decoupled")
    args = _inputs(2, 3, 777, seed=5)
    _, states = sm90.forward(*args, 64, EPS, 4, True)
    _, again = sm90._run(*args, EPS, 4, True, False)
    for s, t in zip(states, again, strict=True):
        assert torch.equal(s, t)


@pytest.mark.gpu
@on_hopper
def test_real_shape_forward_error_and_determinism():
    """B*H = 48 (CogVideoX-5B): the decoupled output, with 36 of an H100's 132 SMs as workers."""
    assert sm90.output_workers(48) > 0
    args = _inputs(1, 48, 18048, layer_scale=True)
    out1, _ = sm90.forward(*args, 64, EPS, 16, False)
    out2, _ = sm90.forward(*args, 64, EPS, 16, False)
    assert torch.equal(out1, out2)
    ref_out, _ = _reference(args, save=False)
    assert _relerr(out1, ref_out) < 1e-2


GRAD_NAMES = ("dq", "dk", "dv", "deta", "dln_weight", "dln_bias", "dw1", "db1", "dw2", "db2")


def _grads(args, grad_out, backend, every):
    from tttgraph.ops import ttt_mlp

    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    out = ttt_mlp(*leaves, backend=backend, checkpoint_every=every)
    return out, torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("shape, every", [((2, 3, 333), 16), ((1, 2, 1000), 3), ((3, 5, 130), 1), ((2, 3, 1), 16),
                                          ((1, 4, 64), 2)],
                         ids=lambda x: "B{}-H{}-T{}".format(*x) if isinstance(x, tuple) else f"G{x}")
def test_backward_matches_the_reference(shape, every, monkeypatch):
    """Every gradient of the native backward against the float32 reference, within twice the error of
    the Triton backward (same bf16 operands) on the same inputs; NaN-poisoned outputs; deterministic."""
    monkeypatch.setattr(sm90, "POISON_BUFFERS", True)
    args = _inputs(*shape, seed=sum(shape) + every)
    grad_out = torch.randn(*shape, 64, generator=torch.Generator().manual_seed(9)).to("cuda", torch.bfloat16)
    out, grads = _grads(args, grad_out, "cuda_sm90", every)
    _, again = _grads(args, grad_out, "cuda_sm90", every)
    _, tri = _grads(args, grad_out, "triton", every)
    ref_out, ref = _grads([a.float() for a in args], grad_out.float(), "reference", every)
    assert _relerr(out, ref_out) < 1e-2
    for name, g, g2, t, r in zip(GRAD_NAMES, grads, again, tri, ref, strict=True):
        assert g.shape == r.shape and torch.isfinite(g).all(), name
        assert torch.equal(g, g2), f"{name} differs between two runs"
        err, tri_err = _relerr(g, r), _relerr(t, r)
        assert err < max(2 * tri_err, 1e-2), (name, err, tri_err)


@pytest.mark.gpu
@on_hopper
def test_real_shape_backward_error():
    args = _inputs(1, 48, 18048, layer_scale=True)
    grad_out = torch.randn(1, 48, 18048, 64, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    _, grads = _grads(args, grad_out, "cuda_sm90", 16)
    _, ref = _grads([a.float() for a in args], grad_out.float(), "reference", 16)
    for name, g, r in zip(GRAD_NAMES, grads, ref, strict=True):
        assert _relerr(g, r) < 1e-2, (name, _relerr(g, r))


@pytest.mark.gpu
@on_hopper
def test_auto_picks_the_sm90_forward_and_backward():
    args = tuple(_inputs(1, 2, 100))
    assert backends.resolve("auto", args, 64, EPS) is sm90
    assert backends.resolve("auto", args, 64, EPS, backward=True) is sm90
    assert "mini_batch_size=32" in sm90.unsupported_reason(*args, 32, EPS)
