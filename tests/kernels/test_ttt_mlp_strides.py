"""The op's fake (meta) kernels describe the real outputs exactly: shapes, dtypes and strides.

AOTAutograd and Inductor trust the fake kernels' strides; a fake that keeps a transposed input's
strides while the real kernel returns a contiguous tensor fails only under ``torch.compile`` with
Inductor, in the backward (``opcheck`` does not compare strides). So each test feeds non-contiguous
inputs, argument by argument, and compares ``stride()`` of the fake and the real outputs.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.kernels.ttt_loop import random_inputs
from tttgraph.ops import ttt_mlp

NAMES = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")
OPTIONS = (8, 1e-6, "reference", 2)  # mini_batch_size, eps, backend, checkpoint_every


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """The same values with non-contiguous strides: the last two dims (or the only one) swapped in memory."""
    if t.dim() == 1:
        return torch.stack([t, t], 1)[:, 0]  # stride 2
    dims = (1, 2) if t.dim() >= 3 else (0, 1)
    out = t.transpose(*dims).contiguous().transpose(*dims)
    assert torch.equal(out, t) and not out.is_contiguous()
    return out


def _inputs(non_contiguous: tuple[str, ...], dtype=torch.float32) -> list[torch.Tensor]:
    args = random_inputs(2, 3, 21, 8, 16, dtype=dtype, seed=11)
    return [_transposed(a) if name in non_contiguous else a for name, a in zip(NAMES, args, strict=True)]


def _fake_call(op, args):
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return op(*fake)


def _assert_same_layout(real, fake, what):
    for i, (r, f) in enumerate(zip(real, fake, strict=True)):
        assert f.shape == r.shape, (what, i, f.shape, r.shape)
        assert f.dtype == r.dtype, (what, i, f.dtype, r.dtype)
        assert f.stride() == r.stride(), (what, i, f.stride(), r.stride())


CASES = [(name,) for name in NAMES] + [NAMES, ()]


@pytest.mark.parametrize("non_contiguous", CASES, ids=lambda c: "+".join(c) if 0 < len(c) < 10 else f"{len(c)}args")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fake_forward_and_backward_match_real_strides(non_contiguous, dtype):
    args = _inputs(non_contiguous, dtype)
    forward = torch.ops.tttgraph.ttt_mlp.default
    real = forward(*args, *OPTIONS, True)
    _assert_same_layout(real, _fake_call(forward, [*args, *OPTIONS, True]), "forward")

    grad_out = _transposed(torch.randn_like(real[0])) if "q" in non_contiguous else torch.randn_like(real[0])
    backward = torch.ops.tttgraph.ttt_mlp_backward.default
    bargs = [grad_out, *args, *real[1:], *OPTIONS]
    grads = backward(*bargs)
    _assert_same_layout(grads, _fake_call(backward, bargs), "backward")
    for name, g, a in zip(NAMES, grads, args, strict=True):
        assert g.shape == a.shape and g.dtype == a.dtype, name


def _transposed_eta_loss(lr, q, k, v, ln_w, ln_b, w1, b1, w2, b2):
    # eta as the layer makes it: a sigmoid of a [B, T, H] projection, transposed to [B, H, T].
    eta = 0.01 * torch.sigmoid(lr).transpose(1, 2)
    return ttt_mlp(q, k, v, eta, ln_w, ln_b, w1, b1, w2, b2, mini_batch_size=16).square().sum()


def test_inductor_compiled_training_with_transposed_eta_matches_eager():
    q, k, v, _, *params = random_inputs(1, 2, 37, 16, 64, seed=5)
    lr = torch.randn(1, 37, 2, requires_grad=True)
    leaves = [lr, *(p.requires_grad_(True) for p in (q, k, v, *params))]
    eager = _transposed_eta_loss(lr, q, k, v, *params)
    eager_grads = torch.autograd.grad(eager, leaves)
    torch._dynamo.reset()
    compiled = torch.compile(_transposed_eta_loss, fullgraph=True)(lr, q, k, v, *params)
    grads = torch.autograd.grad(compiled, leaves)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda_sm90"])
@pytest.mark.parametrize("non_contiguous", [(), NAMES], ids=["contiguous", "all-transposed"])
def test_fake_matches_real_strides_of_the_gpu_backends(backend, non_contiguous):
    args = random_inputs(1, 2, 150, 64, 256, dtype=torch.bfloat16, device="cuda", seed=3)
    args = [_transposed(a) if name in non_contiguous else a for name, a in zip(NAMES, args, strict=True)]
    options = (64, 1e-6, backend, 2)
    forward = torch.ops.tttgraph.ttt_mlp.default
    real = forward(*args, *options, True)
    _assert_same_layout(real, _fake_call(forward, [*args, *options, True]), "forward")
    backward = torch.ops.tttgraph.ttt_mlp_backward.default
    bargs = [torch.randn_like(real[0]), *args, *real[1:], *options]
    _assert_same_layout(backward(*bargs), _fake_call(backward, bargs), "backward")
