"""The op on CUDA tensors (GPU machine): every backend that `auto` may pick matches the float64 loop."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.ttt_loop import random_inputs, ttt_loop
from tttgraph.ops import ttt_mlp

pytestmark = pytest.mark.gpu


def _relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", [(2, 3, 63, 16, 64, 16), (1, 4, 200, 64, 256, 64), (2, 3, 1, 64, 256, 64)],
                         ids=lambda s: "B{}-H{}-T{}-D{}-F{}-mb{}".format(*s))
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_cuda_matches_float64_loop(shape, dtype, tol, backend):
    bsz, heads, seq_len, dim, hidden, mb = shape
    args64 = [a.requires_grad_(True) for a in random_inputs(bsz, heads, seq_len, dim, hidden, dtype=torch.float64)]
    expected = ttt_loop(*args64, mb, 1e-6)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, args64, grad_out)
    args = [a.detach().to("cuda", dtype if i < 3 else torch.float32).requires_grad_(True) for i, a in enumerate(args64)]
    out = ttt_mlp(*args, mini_batch_size=mb, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _relerr(out.cpu(), expected) < tol
    grads = torch.autograd.grad(out, args, grad_out.to("cuda", dtype))
    for i, (g, e) in enumerate(zip(grads, expected_grads, strict=True)):
        assert torch.isfinite(g).all(), i
        assert _relerr(g.cpu(), e) < tol * 5, (i, _relerr(g.cpu(), e))
