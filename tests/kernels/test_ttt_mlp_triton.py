"""The Triton backend of ``tttgraph::ttt_mlp`` against the reference: forward, checkpoints, all ten gradients.

On a machine without CUDA the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set
below before the kernel module is imported), which is how CI covers them. Tests marked ``gpu`` run
real sizes on a CUDA device.
"""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from tttgraph.kernels.ttt_mlp import reference  # noqa: E402
from tttgraph.kernels.ttt_mlp import triton as tk  # noqa: E402

# The interpreter evaluates exp() of large arguments inside the logistic-based tanh: harmless.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

GRAD_NAMES = ("dq", "dk", "dv", "deta", "dln_weight", "dln_bias", "dw1", "db1", "dw2", "db2")
EPS = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _interpreted_kernels():
    """If another test imported the kernel module before TRITON_INTERPRET was set, rebuild it."""
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET") == "1" and not isinstance(tk._fwd_kernel, InterpretedFunction):
        importlib.reload(tk)
    yield


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Every output and scratch buffer starts as NaN: an unwritten element or an early read shows."""
    monkeypatch.setattr(tk, "POISON_BUFFERS", True)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(bsz, heads, seq_len, dim, hidden, *, dtype=torch.float32, seed=0, device=None):
    """Random op inputs (never zeros) at scales where every term of the update matters."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    q = F.normalize(randn(bsz, heads, seq_len, dim), dim=-1)
    k = F.normalize(randn(bsz, heads, seq_len, dim), dim=-1)
    v = randn(bsz, heads, seq_len, dim)
    eta = torch.rand(bsz, heads, seq_len, generator=g, dtype=torch.float64) / math.sqrt(dim) + 0.01
    ln_weight = 1.0 + randn(heads, dim, std=0.1)
    ln_bias = randn(heads, dim, std=0.1)
    w1, b1 = randn(heads, dim, hidden, std=0.2), randn(heads, hidden, std=0.1)
    w2, b2 = randn(heads, hidden, dim, std=0.2), randn(heads, dim, std=0.1)
    args = (q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2)
    return tuple(a.to(dtype=dtype, device=device or _device()) for a in args)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run_triton(args, mb, every, grad_out, save_state=True):
    out, states = tk.forward(*args, mb, EPS, every, save_state)
    grads = tk.backward(grad_out, *args, states, mb, EPS, every)
    return out, states, grads


def run_reference(args, mb, every, grad_out):
    """The reference in float64 (on the inputs as given, upcast): the ground truth."""
    a64 = tuple(a.double() for a in args)
    out, states = reference.forward(*a64, mb, EPS, every, True)
    grads = reference.backward(grad_out.double(), *a64, states, mb, EPS, every)
    return out, states, grads


def check_all(args, mb, every, fwd_tol, grad_tol, seed=1):
    grad_out = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(seed)).to(args[0])
    out, states, grads = run_triton(args, mb, every, grad_out)
    ref_out, ref_states, ref_grads = run_reference(args, mb, every, grad_out)
    assert out.dtype == args[0].dtype and out.shape == args[0].shape
    assert not out.isnan().any()
    assert rel_err(out, ref_out) < fwd_tol, rel_err(out, ref_out)
    for s, r in zip(states, ref_states, strict=True):
        assert s.dtype == torch.float32 and s.shape == r.shape
        assert rel_err(s, r) < fwd_tol
    for name, g, r, a in zip(GRAD_NAMES, grads, ref_grads, args, strict=True):
        assert g.dtype == a.dtype and g.shape == a.shape, name
        assert not g.isnan().any(), name
        err = rel_err(g, r)
        assert err < grad_tol, f"{name}: relative error {err:.2e} >= {grad_tol:.0e}"
    return out, grads


# (B, H, T, D, F, mini_batch, checkpoint_every): T = 1, 63, 65, 200; D = 16, 48 (padded to 64), 64;
# F = 48, 64, 256; a mini-batch that is not a power of two (20); one checkpoint per step and fewer.
# Then head sizes that are not multiples of 16 (Latte's 72, and 8, 24, 40) and hidden sizes that are
# not either: D is padded to a power-of-two tile of at least 16 with masked columns, F zero-padded.
FP32_CASES = [
    pytest.param(2, 3, 1, 16, 64, 64, 2, id="T1-D16-F64-mb64"),
    pytest.param(2, 3, 63, 16, 64, 16, 2, id="T63-D16-F64-mb16-ck2"),
    pytest.param(2, 1, 65, 64, 256, 64, 1, id="T65-D64-F256-mb64-ck1"),
    pytest.param(1, 2, 200, 64, 256, 64, 3, id="T200-D64-F256-mb64-ck3"),
    pytest.param(1, 2, 63, 48, 48, 20, 2, id="T63-D48-F48-mb20-ck2"),
    pytest.param(1, 2, 37, 24, 96, 16, 2, id="T37-D24-F96"),
    pytest.param(1, 1, 45, 72, 288, 16, 2, id="T45-D72-F288"),
    pytest.param(1, 2, 33, 40, 100, 20, 1, id="T33-D40-F100"),
    pytest.param(2, 1, 19, 8, 32, 16, 2, id="T19-D8-F32"),
]


@pytest.mark.parametrize("bsz,heads,seq_len,dim,hidden,mb,every", FP32_CASES)
def test_fp32_matches_reference(bsz, heads, seq_len, dim, hidden, mb, every):
    args = make_inputs(bsz, heads, seq_len, dim, hidden, seed=seq_len + dim)
    check_all(args, mb, every, fwd_tol=2e-5, grad_tol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_matches_reference(dtype):
    args = make_inputs(2, 3, 65, 64, 64, dtype=dtype, seed=7)
    check_all(args, 32, 2, fwd_tol=2e-2, grad_tol=6e-2)


def test_low_precision_extended_recompute(monkeypatch):
    """The backward's chunk recomputation with the forward's split-bf16 products (XREC, off by default)."""
    monkeypatch.setattr(tk, "CONFIG_OVERRIDE", {"bwd": {"XREC": True}})
    args = make_inputs(1, 2, 65, 16, 64, dtype=torch.bfloat16, seed=9)
    check_all(args, 16, 2, fwd_tol=2e-2, grad_tol=6e-2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_hidden_zero_padding(monkeypatch, dtype, tol):
    """F = 48 run as 64 zero-padded columns (what GPUs do, where F tiles below 64 fail): exact."""
    monkeypatch.setitem(tk.F_MULTIPLE, "interpreter", 64)
    monkeypatch.setitem(tk.F_MULTIPLE, "gpu", 64)
    assert tk._padded_hidden(48) == 64
    args = make_inputs(2, 2, 63, 16, 48, dtype=dtype, seed=31)
    out, grads = check_all(args, 16, 2, fwd_tol=tol, grad_tol=3 * tol)
    # The padded run also gives what the unpadded kernels give (up to rounding).
    monkeypatch.setitem(tk.F_MULTIPLE, "interpreter", 16)
    grad_out = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1)).to(args[0])
    plain_out, _, plain_grads = run_triton(args, 16, 2, grad_out)
    assert rel_err(out, plain_out) < tol
    for name, g, p in zip(GRAD_NAMES, grads, plain_grads, strict=True):
        assert rel_err(g, p) < 3 * tol, name


def test_two_runs_bitwise_equal():
    args = make_inputs(2, 2, 70, 16, 64, seed=3)
    grad_out = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(4)).to(args[0])
    first = run_triton(args, 32, 2, grad_out)
    second = run_triton(args, 32, 2, grad_out)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1] + first[2], second[1] + second[2], strict=True):
        assert torch.equal(a, b)


def test_backward_recomputes_missing_checkpoints():
    args = make_inputs(1, 2, 50, 16, 32, seed=5)
    grad_out = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(6)).to(args[0])
    out, states = tk.forward(*args, 16, EPS, 2, False)
    assert all(s.shape[2] == 0 for s in states)
    saved = run_triton(args, 16, 2, grad_out)
    grads = tk.backward(grad_out, *args, states, 16, EPS, 2)
    assert torch.equal(out, saved[0])
    for a, b in zip(grads, saved[2], strict=True):
        assert torch.equal(a, b)


def test_state_dtype_and_count():
    args = make_inputs(1, 1, 100, 16, 32, dtype=torch.bfloat16, seed=8)
    _, states = tk.forward(*args, 16, EPS, 3, True)  # 7 mini-batches -> checkpoints at 0, 3, 6
    shapes = [(1, 1, 3, 16, 32), (1, 1, 3, 32), (1, 1, 3, 32, 16), (1, 1, 3, 16)]
    assert [tuple(s.shape) for s in states] == shapes
    assert all(s.dtype == torch.float32 for s in states)
    assert torch.equal(states[0][0, 0, 0], args[6][0].float())  # the first checkpoint is w1 itself


@pytest.mark.parametrize("dim,hidden,mb,needle", [(16, 64, 8, "mini_batch_size=8"), (160, 64, 64, "D=160")])
def test_unsupported_reason(dim, hidden, mb, needle):
    args = make_inputs(1, 1, 4, dim, hidden)
    reason = tk.unsupported_reason(*args, mb, EPS)
    assert reason is not None and needle in reason
    for dim, hidden in ((16, 64), (24, 64), (16, 40), (72, 288), (128, 512)):
        ok = make_inputs(1, 1, 4, dim, hidden)
        assert tk.unsupported_reason(*ok, 64, EPS) is None, (dim, hidden)


def test_odd_head_size_low_precision_matches_reference():
    args = make_inputs(1, 2, 41, 24, 96, dtype=torch.bfloat16, seed=17)
    check_all(args, 16, 2, fwd_tol=2e-2, grad_tol=6e-2)


def test_cpu_needs_interpreter(monkeypatch):
    args = make_inputs(1, 1, 4, 16, 64, device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in tk.unsupported_reason(*args, 64, EPS)


def test_through_the_op():
    """backend='triton' of the public op agrees with backend='reference', forward and backward."""
    ops = pytest.importorskip("tttgraph.ops")
    args = make_inputs(1, 2, 40, 16, 32, seed=9)
    outs, grads = [], []
    for backend in ("triton", "reference"):
        leaves = [a.clone().requires_grad_(True) for a in args]
        out = ops.ttt_mlp(*leaves, mini_batch_size=16, backend=backend)
        out.backward(torch.ones_like(out) + out.detach())
        outs.append(out.detach())
        grads.append([x.grad for x in leaves])
    assert rel_err(outs[0], outs[1]) < 1e-5
    for name, g, r in zip(GRAD_NAMES, *grads, strict=True):
        assert rel_err(g, r) < 1e-4, name


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "dtype,fwd_tol,grad_tol",
    [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 2e-2, 6e-2)],
    ids=("fp32", "bf16"),
)
def test_gpu_real_size(dtype, fwd_tol, grad_tol):
    """CogVideoX-5B head sizes (D=64, F=256, mini-batch 64), a ragged T, against the float64 reference."""
    args = make_inputs(1, 4, 1000, 64, 256, dtype=dtype, seed=11)
    check_all(args, 64, 4, fwd_tol=fwd_tol, grad_tol=grad_tol)


@pytest.mark.gpu
@gpu
def test_gpu_bitwise_repeatable():
    args = make_inputs(2, 3, 777, 64, 256, dtype=torch.bfloat16, seed=12)
    grad_out = torch.randn_like(args[0])
    first = run_triton(args, 64, 4, grad_out)
    second = run_triton(args, 64, 4, grad_out)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1] + first[2], second[1] + second[2], strict=True):
        assert torch.equal(a, b)


# Odd shapes for the forward's F split (P programs per head, GPU only: under the interpreter programs
# run one after another, so a program would wait for its partner forever). F / P must be a multiple of 64.
GPU_SPLIT_CASES = [
    pytest.param(2, 3, 1, 64, 128, 64, 2, id="T1-D64-F128-mb64"),
    pytest.param(2, 3, 63, 16, 128, 16, 2, id="T63-D16-F128-mb16-ck2"),
    pytest.param(1, 3, 65, 48, 256, 20, 1, id="T65-D48-F256-mb20-ck1"),
    pytest.param(2, 3, 200, 64, 256, 64, 3, id="T200-D64-F256-mb64-ck3"),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("split", [1, 2], ids=["P1", "P2"])
@pytest.mark.parametrize("dtype,fwd_tol,grad_tol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 2e-2, 6e-2)],
                         ids=("fp32", "bf16"))
@pytest.mark.parametrize("bsz,heads,seq_len,dim,hidden,mb,every", GPU_SPLIT_CASES)
def test_gpu_forward_split(monkeypatch, split, dtype, fwd_tol, grad_tol, bsz, heads, seq_len, dim, hidden, mb,
                           every):
    """Forward with P = 1 and 2 programs per head, checkpoints and every gradient against float64."""
    monkeypatch.setattr(tk, "CONFIG_OVERRIDE", {"fwd": {"P": split}})
    args = make_inputs(bsz, heads, seq_len, dim, hidden, dtype=dtype, seed=seq_len + dim + split)
    check_all(args, mb, every, fwd_tol=fwd_tol, grad_tol=grad_tol)
    # Two runs of the split forward are bitwise equal (the partial sums are added in rank order).
    first = tk.forward(*args, mb, EPS, every, True)
    second = tk.forward(*args, mb, EPS, every, True)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "dtype,bsz,heads,seq_len,dim,hidden,mb",
    [(torch.bfloat16, 2, 3, 65, 16, 48, 16), (torch.bfloat16, 1, 3, 130, 64, 80, 64),
     (torch.float16, 2, 3, 200, 64, 256, 64), (torch.bfloat16, 1, 3, 333, 72, 288, 64),
     (torch.bfloat16, 1, 2, 257, 96, 384, 64), (torch.float32, 1, 2, 131, 24, 100, 16),
     (torch.bfloat16, 1, 2, 300, 128, 512, 64)],
    ids=["bf16-F48", "bf16-F80", "fp16-F256", "bf16-D72-F288-latte", "bf16-D96-F384-allegro", "fp32-D24-F100",
         "bf16-D128-F512-wan"],
)
def test_gpu_padded_hidden_and_fp16(dtype, bsz, heads, seq_len, dim, hidden, mb):
    """F not a multiple of 64 (zero-padded on GPUs), D not a multiple of 16 or above 64 (masked tiles), and
    fp16 inputs (K split in extended precision)."""
    args = make_inputs(bsz, heads, seq_len, dim, hidden, dtype=dtype, seed=seq_len + hidden)
    check_all(args, mb, 2, fwd_tol=2e-2, grad_tol=6e-2)


@pytest.mark.gpu
@gpu
def test_gpu_split_choice():
    """P = 2 when twice the programs fit the GPU one per SM, else 1."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert tk._fwd_split(sms // 2, 256, 64) == 2
    assert tk._fwd_split(sms // 2 + 1, 256, 64) == 1
    assert tk._fwd_split(4, 64, 64) == 1  # F / 2 = 32 columns: no whole 64-column tile


def test_split_is_one_under_the_interpreter(monkeypatch):
    """The interpreter runs programs one after another: a split forward would wait forever."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tk._fwd_split(1, 256, 64) == 1


def test_reference_backward_reads_triton_checkpoints():
    """backend='auto' pairs the Triton forward with the reference backward: the checkpoints must agree."""
    args = make_inputs(2, 3, 70, 16, 64, seed=21)
    grad_out = torch.randn_like(args[0])
    _, tri_states = tk.forward(*args, 16, EPS, 2, True)
    _, ref_states = reference.forward(*args, 16, EPS, 2, True)
    for t, r in zip(tri_states, ref_states, strict=True):
        assert t.shape == r.shape and rel_err(t, r) < 1e-5
    mixed = reference.backward(grad_out, *args, tri_states, 16, EPS, 2)
    pure = reference.backward(grad_out, *args, ref_states, 16, EPS, 2)
    for name, m, p in zip(GRAD_NAMES, mixed, pure, strict=True):
        assert rel_err(m, p) < 1e-5, name
