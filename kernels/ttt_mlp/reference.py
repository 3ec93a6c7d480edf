"""Reference (PyTorch) backend of ``tttgraph::ttt_mlp``: the ground truth every kernel must match.

Shapes (the op's canonical layout):
    q, k, v: [B, H, T, D]    eta: [B, H, T]    ln_weight, ln_bias: [H, D]
    w1: [H, D, F]   b1: [H, F]   w2: [H, F, D]   b2: [H, D]      out: [B, H, T, D] (dtype of q)

The scan runs in "primal form": one explicit gradient step of the inner MLP per mini-batch, written
out by hand (no autograd inside), then the output of the updated MLP. The backward is hand-derived
too (see README.md beside this file for every step) and walks the mini-batches in reverse,
recomputing the inner state chunk by chunk from checkpoints taken every ``checkpoint_every``
mini-batches, so memory grows with T / checkpoint_every instead of T.

All arithmetic is float32 for float32/bfloat16/float16 inputs (float64 inputs compute in float64,
which the tests use); gradients come back in each input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715

State = tuple[Tensor, Tensor, Tensor, Tensor]  # W1 [B,H,D,F], b1 [B,H,1,F], W2 [B,H,F,D], b2 [B,H,1,D]


def unsupported_reason(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps):
    """The reference runs every valid input on every device."""
    return None


def num_minibatches(seq_len: int, mini_batch_size: int) -> int:
    return -(-seq_len // mini_batch_size)


def num_checkpoints(seq_len: int, mini_batch_size: int, checkpoint_every: int) -> int:
    return -(-num_minibatches(seq_len, mini_batch_size) // checkpoint_every)


# ----------------------------------------------------------------------------------------------
# Elementwise pieces. gelu here is the tanh approximation, with its first and second derivative.
# ----------------------------------------------------------------------------------------------


def _gelu_parts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return gelu_tanh(x), its derivative, and tanh(u) (reused by the second derivative)."""
    x2 = x * x  # x**3 as x * x2: pow is several times the cost of a multiply on CPUs
    t = torch.tanh(x * (GELU_C + (GELU_C * GELU_A) * x2))
    du = GELU_C + (3.0 * GELU_C * GELU_A) * x2
    half = 0.5 * (1.0 + t)
    gelu = x * half
    dgelu = half + 0.5 * x * (1.0 - t * t) * du
    return gelu, dgelu, t


def _gelu_second(x: Tensor, t: Tensor) -> Tensor:
    """d^2 gelu_tanh / dx^2 = (1 - t^2) (u' + x/2 (u'' - 2 t u'^2)) with u = c (x + a x^3)."""
    du = GELU_C * (1.0 + 3.0 * GELU_A * x * x)
    ddu = 6.0 * GELU_C * GELU_A * x
    return (1.0 - t * t) * (du + 0.5 * x * (ddu - 2.0 * t * du * du))


def _ln_normalize(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-row normalisation over the last dim: (z - mean) * rstd, rstd = 1/sqrt(biased var + eps)."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    rstd = torch.rsqrt((zc * zc).mean(-1, keepdim=True) + eps)
    return zc * rstd, rstd


def _ln_backward(dxh: Tensor, xh: Tensor, rstd: Tensor) -> Tensor:
    """Gradient through x -> xh = (x - mean) * rstd, given the gradient at xh."""
    return rstd * (dxh - dxh.mean(-1, keepdim=True) - xh * (dxh * xh).mean(-1, keepdim=True))


# ----------------------------------------------------------------------------------------------
# One mini-batch, forward.
# ----------------------------------------------------------------------------------------------


def _inner_step(state: State, xk: Tensor, xv: Tensor, e: Tensor, gamma: Tensor, beta: Tensor, eps: float):
    """One inner gradient step. xk, xv: [B,H,m,D], e: [B,H,m,1]. Returns (new_state, saved)."""
    w1, b1, w2, b2 = state
    z1 = xk @ w1 + b1
    a, da, t1 = _gelu_parts(z1)
    z2 = a @ w2 + b2
    xh, rstd = _ln_normalize(z2, eps)
    resid = gamma * xh + beta - (xv - xk)
    g_y = e * resid
    g_xh = gamma * g_y
    g_z2 = _ln_backward(g_xh, xh, rstd)
    g_a = g_z2 @ w2.transpose(-1, -2)
    g_z1 = g_a * da
    new_state = (
        w1 - xk.transpose(-1, -2) @ g_z1,
        b1 - g_z1.sum(-2, keepdim=True),
        w2 - a.transpose(-1, -2) @ g_z2,
        b2 - g_z2.sum(-2, keepdim=True),
    )
    saved = (z1, a, da, t1, xh, rstd, resid, g_y, g_xh, g_z2, g_a)
    return new_state, saved


def _inner_output(state: State, xq: Tensor, gamma: Tensor, beta: Tensor, eps: float):
    """out = q + LN(MLP(q)) with the updated state. Returns (out, saved)."""
    w1, b1, w2, b2 = state
    z1 = xq @ w1 + b1
    a, da, _ = _gelu_parts(z1)
    z2 = a @ w2 + b2
    xh, rstd = _ln_normalize(z2, eps)
    return xq + gamma * xh + beta, (a, da, xh, rstd)


def _output_only(state: State, xq: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """:func:`_inner_output`'s value alone, for the forward pass: torch's fused tanh-GELU in place of
    the hand-written one (which also builds the derivative the backward needs); the same function,
    about a quarter fewer elementwise passes per mini-batch, which bound the scan on CPUs."""
    w1, b1, w2, b2 = state
    z2 = torch.nn.functional.gelu(torch.baddbmm(b1.expand(*xq.shape[:-1], -1).flatten(0, 1), xq.flatten(0, 1),
                                                w1.flatten(0, 1)).unflatten(0, xq.shape[:2]), approximate="tanh")
    z2 = z2 @ w2 + b2
    return xq + gamma * torch.nn.functional.layer_norm(z2, z2.shape[-1:], eps=eps) + beta


def compute_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _initial_state(w1, b1, w2, b2, batch: int, dtype: torch.dtype) -> State:
    """Broadcast the learned initial weights to every batch element, as copies in ``dtype``."""

    def expand(x: Tensor) -> Tensor:
        return x.to(dtype).unsqueeze(0).expand(batch, *x.shape).contiguous()

    return expand(w1), expand(b1).unsqueeze(-2), expand(w2), expand(b2).unsqueeze(-2)


def _slices(seq_len: int, mini_batch_size: int):
    for start in range(0, seq_len, mini_batch_size):
        yield slice(start, min(start + mini_batch_size, seq_len))


def forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, checkpoint_every, save_state):
    """Run the scan. Returns ``(out, states)``; see the module docstring for shapes.

    ``states`` holds the inner state at the start of every ``checkpoint_every``-th mini-batch,
    float32: W1 [B,H,C,D,F], b1 [B,H,C,F], W2 [B,H,C,F,D], b2 [B,H,C,D]; C = 0 unless ``save_state``.
    """
    bsz, heads, seq_len, dim = q.shape
    cdt = compute_dtype(q)
    gamma, beta = ln_weight.to(cdt).unsqueeze(-2), ln_bias.to(cdt).unsqueeze(-2)  # [H,1,D]
    state = _initial_state(w1, b1, w2, b2, bsz, cdt)
    out = q.new_empty(q.shape)
    checkpoints: list[State] = []
    for i, sl in enumerate(_slices(seq_len, mini_batch_size)):
        if save_state and i % checkpoint_every == 0:
            checkpoints.append(state)
        xq, xk, xv = q[:, :, sl].to(cdt), k[:, :, sl].to(cdt), v[:, :, sl].to(cdt)
        e = eta[:, :, sl].to(cdt).unsqueeze(-1)
        state, _ = _inner_step(state, xk, xv, e, gamma, beta, eps)
        out[:, :, sl] = _output_only(state, xq, gamma, beta, eps).to(q.dtype)
    return out, _stack_states(checkpoints, bsz, heads, dim, w1.shape[-1], cdt, q.device)


def functional_forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, backend=None,
                       checkpoint_every=None, save_state=False):
    """:func:`forward` for inference without in-place writes, with the op's signature and outputs
    ``(out, *states)`` (states empty): what an exported graph's ``tttgraph::ttt_mlp`` node decomposes
    into, which a functionalising pass can trace (the forward above fills a preallocated output)."""
    if save_state:
        raise ValueError("functional_forward runs the op for inference only (save_state=False)")
    bsz, heads, seq_len, dim = q.shape
    cdt = compute_dtype(q)
    gamma, beta = ln_weight.to(cdt).unsqueeze(-2), ln_bias.to(cdt).unsqueeze(-2)
    state = _initial_state(w1, b1, w2, b2, bsz, cdt)
    outs = []
    for sl in _slices(seq_len, mini_batch_size):
        xq, xk, xv = (t[:, :, sl].to(cdt) for t in (q, k, v))
        state, _ = _inner_step(state, xk, xv, eta[:, :, sl].to(cdt).unsqueeze(-1), gamma, beta, eps)
        outs.append(_output_only(state, xq, gamma, beta, eps).to(q.dtype))
    return (torch.cat(outs, dim=2), *_stack_states([], bsz, heads, dim, w1.shape[-1], cdt, q.device))


def _stack_states(checkpoints: list[State], bsz, heads, dim, hidden, dtype, device) -> State:
    if not checkpoints:
        f32 = dict(dtype=dtype, device=device)
        return (
            torch.empty(bsz, heads, 0, dim, hidden, **f32),
            torch.empty(bsz, heads, 0, hidden, **f32),
            torch.empty(bsz, heads, 0, hidden, dim, **f32),
            torch.empty(bsz, heads, 0, dim, **f32),
        )
    w1s, b1s, w2s, b2s = zip(*checkpoints, strict=True)
    return (
        torch.stack(w1s, 2),
        torch.stack([b.squeeze(-2) for b in b1s], 2),
        torch.stack(w2s, 2),
        torch.stack([b.squeeze(-2) for b in b2s], 2),
    )


# ----------------------------------------------------------------------------------------------
# One mini-batch, backward. Gradients named d<x>; "ds" is the gradient of the state after the step.
# ----------------------------------------------------------------------------------------------


def _output_backward(dout, state: State, xq, gamma, saved_out):
    """Backward of out = q + gamma * LN(MLP_state(q)) + beta.

    Returns dq, dgamma, dbeta (summed over rows) and the state gradient contributions.
    """
    w1, _, w2, _ = state
    a, da, xh, rstd = saved_out
    dgamma = (dout * xh).sum(-2)  # [B,H,D]
    dbeta = dout.sum(-2)
    dz2 = _ln_backward(gamma * dout, xh, rstd)
    dz1 = (dz2 @ w2.transpose(-1, -2)) * da
    dq = dout + dz1 @ w1.transpose(-1, -2)
    dstate = (
        xq.transpose(-1, -2) @ dz1,
        dz1.sum(-2, keepdim=True),
        a.transpose(-1, -2) @ dz2,
        dz2.sum(-2, keepdim=True),
    )
    return dq, dgamma, dbeta, dstate


def _step_backward(ds: State, state: State, xk, e, gamma, saved_step, eps):
    """Backward of one inner step new_state = state - grad(state; k, v, eta).

    ``ds`` is the gradient w.r.t. the new state. Returns dk, dv, de, dgamma, dbeta and the gradient
    w.r.t. the old state. Every line mirrors one forward line of ``_inner_step`` (README.md).
    """
    w1, _, w2, _ = state
    dw1n, db1n, dw2n, db2n = ds
    z1, a, da, t1, xh, rstd, resid, g_y, g_xh, g_z2, g_a = saved_step
    w2t = w2.transpose(-1, -2)

    # new W1 = W1 - K^T G_z1, new b1 = b1 - sum G_z1 ; new W2 = W2 - A^T G_z2, new b2 = b2 - sum G_z2.
    g_z1 = g_a * da
    dk = -(g_z1 @ dw1n.transpose(-1, -2))
    dg_z1 = -(xk @ dw1n) - db1n
    da_ = -(g_z2 @ dw2n.transpose(-1, -2))
    dg_z2 = -(a @ dw2n) - db2n

    # G_z1 = G_a * gelu'(Z1) ; G_a = G_z2 W2^T.
    dg_a = dg_z1 * da
    dz1 = dg_z1 * g_a * _gelu_second(z1, t1)
    dg_z2 = dg_z2 + dg_a @ w2
    dw2 = dg_a.transpose(-1, -2) @ g_z2

    # G_z2 = rstd * (G_xh - mean(G_xh) - Xh * mean(G_xh * Xh)).
    c2 = (g_xh * xh).mean(-1, keepdim=True)
    u = g_z2 / rstd
    drstd = (dg_z2 * u).sum(-1, keepdim=True)
    du = rstd * dg_z2
    du_xh = (du * xh).mean(-1, keepdim=True)
    dg_xh = du - du.mean(-1, keepdim=True) - xh * du_xh
    dxh = -c2 * du - g_xh * du_xh

    # G_xh = gamma * G_y ; G_y = e * resid ; resid = gamma * Xh + beta - (V - K).
    dg_y = gamma * dg_xh
    dgamma = (dg_xh * g_y).sum(-2)
    de = (dg_y * resid).sum(-1)
    dresid = e * dg_y
    dgamma = dgamma + (dresid * xh).sum(-2)
    dbeta = dresid.sum(-2)
    dxh = dxh + gamma * dresid
    dv = -dresid
    dk = dk + dresid

    # Xh = (Z2 - mean) * rstd, rstd = (var + eps)^-1/2: the rstd path adds -drstd * rstd^2 * Xh / D.
    dz2 = _ln_backward(dxh, xh, rstd) - drstd * rstd * rstd * xh / xh.shape[-1]
    da_ = da_ + dz2 @ w2t
    dz1 = dz1 + da_ * da
    dk = dk + dz1 @ w1.transpose(-1, -2)
    dstate = (
        dw1n + xk.transpose(-1, -2) @ dz1,
        db1n + dz1.sum(-2, keepdim=True),
        dw2n + dw2 + a.transpose(-1, -2) @ dz2,
        db2n + dz2.sum(-2, keepdim=True),
    )
    return dk, dv, de, dgamma, dbeta, dstate


def backward(
    grad_out, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, states, mini_batch_size, eps, checkpoint_every
):
    """Gradients of all ten inputs, each in its input's dtype and shape.

    Walks checkpoint chunks in reverse; inside a chunk the per-mini-batch states are recomputed
    from the chunk's checkpoint (so at most ``checkpoint_every`` states are alive at once).
    """
    bsz, heads, seq_len, dim = q.shape
    if states[0].shape[2] == 0:
        _, states = forward(
            q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, checkpoint_every, True
        )
    cdt = compute_dtype(q)
    gamma, beta = ln_weight.to(cdt).unsqueeze(-2), ln_bias.to(cdt).unsqueeze(-2)
    slices = list(_slices(seq_len, mini_batch_size))
    f32 = dict(dtype=cdt, device=q.device)
    dq, dk, dv = (torch.empty(bsz, heads, seq_len, dim, **f32) for _ in range(3))
    deta = torch.empty(bsz, heads, seq_len, **f32)
    dgamma = torch.zeros(bsz, heads, dim, **f32)
    dbeta = torch.zeros(bsz, heads, dim, **f32)
    ds = tuple(torch.zeros_like(s) for s in _initial_state(w1, b1, w2, b2, bsz, cdt))

    for c in reversed(range(states[0].shape[2])):
        chunk = slices[c * checkpoint_every : (c + 1) * checkpoint_every]
        state = (states[0][:, :, c], states[1][:, :, c, None], states[2][:, :, c], states[3][:, :, c, None])
        chunk_states = []
        for sl in chunk:
            chunk_states.append(state)
            e = eta[:, :, sl].to(cdt).unsqueeze(-1)
            state, _ = _inner_step(state, k[:, :, sl].to(cdt), v[:, :, sl].to(cdt), e, gamma, beta, eps)
        for sl, state in zip(reversed(chunk), reversed(chunk_states), strict=True):
            xq, xk, xv = q[:, :, sl].to(cdt), k[:, :, sl].to(cdt), v[:, :, sl].to(cdt)
            e = eta[:, :, sl].to(cdt).unsqueeze(-1)
            new_state, saved_step = _inner_step(state, xk, xv, e, gamma, beta, eps)
            _, saved_out = _inner_output(new_state, xq, gamma, beta, eps)
            dq_, dg_o, db_o, ds_out = _output_backward(grad_out[:, :, sl].to(cdt), new_state, xq, gamma, saved_out)
            ds = tuple(a + b for a, b in zip(ds, ds_out, strict=True))
            dk_, dv_, de_, dg_s, db_s, ds = _step_backward(ds, state, xk, e, gamma, saved_step, eps)
            dq[:, :, sl], dk[:, :, sl], dv[:, :, sl], deta[:, :, sl] = dq_, dk_, dv_, de_
            dgamma += dg_o + dg_s
            dbeta += db_o + db_s

    # The initial state is shared by every batch element: its gradient is the sum over the batch.
    dw1, db1, dw2, db2 = (s.sum(0) for s in ds)
    return (
        dq.to(q.dtype),
        dk.to(k.dtype),
        dv.to(v.dtype),
        deta.to(eta.dtype),
        dgamma.sum(0).to(ln_weight.dtype),
        dbeta.sum(0).to(ln_bias.dtype),
        dw1.to(w1.dtype),
        db1.squeeze(-2).to(b1.dtype),
        dw2.to(w2.dtype),
        db2.squeeze(-2).to(b2.dtype),
    )
