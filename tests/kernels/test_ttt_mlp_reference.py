"""The ttt_mlp op (reference backend) against an independent float64 loop: forward and all gradients."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.ttt_loop import random_inputs, ttt_loop
from tttgraph.ops import ttt_mlp

NAMES = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")

# (B, H, T, D, F, mini_batch): odd T (1, 63, 65, 130), shorter last mini-batches, D 8/64, F 32/256.
SHAPES = [
    (2, 3, 1, 8, 32, 16),
    (2, 3, 63, 8, 32, 16),
    (2, 3, 65, 8, 32, 16),
    (1, 2, 130, 64, 256, 64),
    (2, 3, 130, 8, 256, 64),
    (1, 1, 65, 64, 32, 7),
]


def _ids(shape):
    return "B{}-H{}-T{}-D{}-F{}-mb{}".format(*shape)


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_forward_and_grads_match_float64_loop(shape):
    bsz, heads, seq_len, dim, hidden, mb = shape
    args64 = [a.requires_grad_(True) for a in random_inputs(bsz, heads, seq_len, dim, hidden, dtype=torch.float64)]
    expected = ttt_loop(*args64, mb, 1e-6)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, args64, grad_out)

    args32 = [a.detach().float().requires_grad_(True) for a in args64]
    out = ttt_mlp(*args32, mini_batch_size=mb, eps=1e-6, backend="reference", checkpoint_every=3)
    assert out.dtype == torch.float32 and out.shape == (bsz, heads, seq_len, dim)
    assert torch.isfinite(out).all()
    assert _relerr(out, expected) < 1e-5
    grads = torch.autograd.grad(out, args32, grad_out.float())
    for name, g, ref in zip(NAMES, grads, expected_grads, strict=True):
        assert g.shape == ref.shape, name
        assert _relerr(g, ref) < 1e-4, f"d{name}: rel err {_relerr(g, ref):.2e}"


def test_float64_inputs_are_exact_to_rounding():
    args = [a.requires_grad_(True) for a in random_inputs(2, 2, 45, 16, 32, dtype=torch.float64, seed=5)]
    expected = ttt_loop(*args, 8, 1e-6)
    out = ttt_mlp(*args, mini_batch_size=8, backend="reference")
    assert _relerr(out, expected) < 1e-12
    go = torch.randn_like(out)
    for name, g, ref in zip(
        NAMES, torch.autograd.grad(out, args, go), torch.autograd.grad(expected, args, go), strict=True
    ):
        assert _relerr(g, ref) < 1e-10, name


@pytest.mark.parametrize("checkpoint_every", [1, 2, 5, 100])
def test_checkpoint_interval_does_not_change_results(checkpoint_every):
    args = [a.requires_grad_(True) for a in random_inputs(1, 2, 70, 8, 16, seed=7)]
    go = torch.randn(1, 2, 70, 8)
    out = ttt_mlp(*args, mini_batch_size=8, checkpoint_every=checkpoint_every)
    grads = torch.autograd.grad(out, args, go)
    base = ttt_mlp(*args, mini_batch_size=8, checkpoint_every=1)
    base_grads = torch.autograd.grad(base, args, go)
    assert torch.equal(out, base)
    for g, b in zip(grads, base_grads, strict=True):
        torch.testing.assert_close(g, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs_within_tolerance_of_float32(dtype):
    args = random_inputs(2, 3, 65, 16, 64, seed=11)
    ref = ttt_mlp(*args, mini_batch_size=16)
    low = [args[0].to(dtype), args[1].to(dtype), args[2].to(dtype), *args[3:]]
    out = ttt_mlp(*low, mini_batch_size=16)
    assert out.dtype == dtype
    # Error of rounding the inputs and the output to this dtype, measured on the float32 result.
    budget = _relerr(ref.to(dtype), ref) * 3 + _relerr(ttt_mlp(*[a.to(dtype).float() for a in low[:3]], *args[3:],
                                                                mini_batch_size=16), ref)
    assert _relerr(out, ref) < max(budget, 1e-3) * 2


def test_gradients_come_back_in_input_dtypes():
    args = random_inputs(1, 2, 20, 8, 16, seed=2)
    args = [args[0].bfloat16(), args[1].bfloat16(), args[2].bfloat16(), *args[3:]]
    args = [a.requires_grad_(True) for a in args]
    out = ttt_mlp(*args, mini_batch_size=8)
    grads = torch.autograd.grad(out.float().sum(), args)
    for a, g in zip(args, grads, strict=True):
        assert g.dtype == a.dtype and g.shape == a.shape and torch.isfinite(g).all()


def test_two_runs_are_bitwise_equal():
    args = [a.requires_grad_(True) for a in random_inputs(2, 2, 50, 8, 16, seed=4)]
    go = torch.randn(2, 2, 50, 8)
    runs = []
    for _ in range(2):
        out = ttt_mlp(*args, mini_batch_size=16)
        runs.append((out, *torch.autograd.grad(out, args, go)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_eps_is_honoured():
    """The LN eps moves outputs at the reference's small inner-output scale (docs/DESIGN.md §3)."""
    args = list(random_inputs(1, 2, 32, 16, 64, seed=8))
    for i in (6, 8):  # w1, w2 at the layer's init std (0.02), zero biases: inner variance ~1e-6
        args[i] = args[i] * 0.1
    for i in (7, 9):
        args[i] = torch.zeros_like(args[i])
    a = ttt_mlp(*args, mini_batch_size=16, eps=1e-6)
    b = ttt_mlp(*args, mini_batch_size=16, eps=1e-8)
    assert _relerr(a, b) > 1e-2
    assert _relerr(ttt_mlp(*args, mini_batch_size=16, eps=1e-8), ttt_loop(*[x.double() for x in args], 16, 1e-8)) < 1e-5
