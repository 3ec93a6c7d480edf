"""Registration of the ``tttgraph::ttt_mlp`` custom op: one graph node, any backend behind it.

Two ops are registered with ``torch.library.custom_op``:

``tttgraph::ttt_mlp(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, backend,
checkpoint_every, save_state) -> (out, W1_states, b1_states, W2_states, b2_states)``
    The scan. ``out`` is [B, H, T, D] in q's dtype. The four state tensors are the inner state
    (float32; float64 for float64 inputs) at the start of every ``checkpoint_every``-th mini-batch
    ([B, H, C, D, F], [B, H, C, F], [B, H, C, F, D], [B, H, C, D]); they are only filled when
    ``save_state`` (the public wrapper sets it when a backward will follow), otherwise C = 0 and
    inference stores nothing.

``tttgraph::ttt_mlp_backward(...)``
    The ten input gradients, recomputing from those checkpoints. Being an opaque op keeps
    torch.compile and AOTAutograd from tracing into the scan.

Autograd ties them together, and fake (meta) implementations give torch.export and
torch.compile the output shapes without running anything. Every output is contiguous and in the
dtype stated above whatever the inputs' strides and whichever backend ran: the op normalises what a
backend returns, so the fake implementations (which AOTAutograd and Inductor trust for strides)
describe the real outputs exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends
from .reference import compute_dtype, num_checkpoints

_ARG_NAMES = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")


@torch.library.custom_op("tttgraph::ttt_mlp", mutates_args=())
def ttt_mlp_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    mini_batch_size: int,
    eps: float,
    backend: str,
    checkpoint_every: int,
    save_state: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2)
    impl = backends.resolve(backend, args, mini_batch_size, eps)
    out, states = impl.forward(*args, mini_batch_size, eps, checkpoint_every, save_state)
    return (_dense(out, q.dtype), *(_dense(s, compute_dtype(q)) for s in states))


@ttt_mlp_op.register_fake
def _(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, backend, checkpoint_every, save_state):
    bsz, heads, seq_len, dim = q.shape
    hidden = w1.shape[-1]
    c = num_checkpoints(seq_len, mini_batch_size, checkpoint_every) if save_state else 0
    f32 = dict(dtype=compute_dtype(q), device=q.device)
    return (
        q.new_empty(q.shape),
        q.new_empty(bsz, heads, c, dim, hidden, **f32),
        q.new_empty(bsz, heads, c, hidden, **f32),
        q.new_empty(bsz, heads, c, hidden, dim, **f32),
        q.new_empty(bsz, heads, c, dim, **f32),
    )


@torch.library.custom_op("tttgraph::ttt_mlp_backward", mutates_args=())
def ttt_mlp_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    w1_states: Tensor,
    b1_states: Tensor,
    w2_states: Tensor,
    b2_states: Tensor,
    mini_batch_size: int,
    eps: float,
    backend: str,
    checkpoint_every: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2)
    impl = backends.resolve(backend, args, mini_batch_size, eps, backward=True)
    states = (w1_states, b1_states, w2_states, b2_states)
    grads = impl.backward(grad_out, *args, states, mini_batch_size, eps, checkpoint_every)
    return tuple(_dense(g, t.dtype) for g, t in zip(grads, args, strict=True))


@ttt_mlp_backward_op.register_fake
def _(grad_out, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, *rest):
    # new_empty, not empty_like: empty_like would copy a transposed input's strides, while the real
    # gradients are contiguous (AOTAutograd asserts the real strides against these).
    return tuple(t.new_empty(t.shape) for t in (q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2))


def _dense(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` contiguous and in ``dtype``: the op's output contract (a no-op for conforming backends)."""
    return t.to(dtype).contiguous()


def _setup_context(ctx, inputs, output):
    tensors = inputs[:10]
    mini_batch_size, eps, backend, checkpoint_every, _ = inputs[10:]
    ctx.save_for_backward(*tensors, *output[1:])
    ctx.options = (mini_batch_size, eps, backend, checkpoint_every)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_out, *_state_grads):
    saved = ctx.saved_tensors
    inputs, states = saved[:10], saved[10:]
    if grad_out is None:
        grad_out = torch.zeros_like(inputs[0])
    grads = ttt_mlp_backward_op(grad_out.contiguous(), *inputs, *states, *ctx.options)
    # Non-tensor arguments (mini_batch_size, eps, backend, checkpoint_every, save_state) get None.
    return (*grads, None, None, None, None, None)


ttt_mlp_op.register_autograd(_backward, setup_context=_setup_context)
