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


@pytest.mark.parametrize("dim,hidden,mb,needle", [(128, 256, 64, "D=128"), (64, 128, 64, "F=128"),
                                                  (64, 256, 32, "mini_batch_size=32")])
def test_auto_picks_triton_where_the_hopper_kernel_does_not_apply(dim, hidden, mb, needle):
    """backend='auto' on a CUDA device takes the Triton kernels for shapes cuda_sm90 declines, and explain()
    gives cuda_sm90's reason."""
    from tttgraph.kernels.ttt_mlp import backends
    from tttgraph.kernels.ttt_mlp import triton as tk

    args = tuple(a.to("cuda", torch.bfloat16 if i < 3 else torch.float32)
                 for i, a in enumerate(random_inputs(1, 2, 100, dim, hidden, dtype=torch.float32)))
    assert backends.resolve("auto", args, mb, 1e-6) is tk
    assert backends.resolve("auto", args, mb, 1e-6, backward=True) is tk
    why = backends.explain(args, mb, 1e-6)
    assert why["triton"] == "ok"
    assert needle in why["cuda_sm90"]
