"""An independent float64 TTT-MLP loop for the tests: one (batch, head) at a time, inner gradient by autograd.

It shares no code with the library: the inner loss is written from its definition and its gradient
comes from ``torch.autograd.grad(create_graph=True)``, so outer gradients are double backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _inner_mlp(x, w1, b1, w2, b2, gamma, beta, eps):
    z = F.gelu(x @ w1 + b1, approximate="tanh") @ w2 + b2
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return gamma * (z - mu) / torch.sqrt(var + eps) + beta


def ttt_loop(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps):
    """Float64 output [B, H, T, D], differentiable w.r.t. every input."""
    bsz, heads, seq_len, _ = q.shape
    rows = []
    for bi in range(bsz):
        per_head = []
        for h in range(heads):
            # The inner gradient needs a graph even when the caller wants no outer gradients.
            state = [t[h] if t.requires_grad else t[h].detach().requires_grad_() for t in (w1, b1, w2, b2)]
            gamma, beta = ln_weight[h], ln_bias[h]
            outs = []
            for start in range(0, seq_len, mini_batch_size):
                sl = slice(start, start + mini_batch_size)
                xq, xk, xv, e = q[bi, h, sl], k[bi, h, sl], v[bi, h, sl], eta[bi, h, sl]
                pred = _inner_mlp(xk, *state, gamma, beta, eps)
                loss = (e * 0.5 * ((pred - (xv - xk)) ** 2).sum(-1)).sum()
                grads = torch.autograd.grad(loss, state, create_graph=True)
                state = [s - g for s, g in zip(state, grads, strict=True)]
                outs.append(xq + _inner_mlp(xq, *state, gamma, beta, eps))
            per_head.append(torch.cat(outs, 0))
        rows.append(torch.stack(per_head, 0))
    return torch.stack(rows, 0)


def random_inputs(bsz, heads, seq_len, dim, hidden, *, dtype=torch.float32, device="cpu", seed=0, eta_scale=None):
    """Random op inputs at the reference's scales (q, k unit-norm per token; eta as the layer makes it).

    The inner weights use std 0.2 rather than the layer's 0.02 so that the inner output is well above
    the LayerNorm eps and every derivative term (LN, GELU'') carries weight in the comparison.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype=dtype, device=device)

    q = F.normalize(randn(bsz, heads, seq_len, dim), dim=-1)
    k = F.normalize(randn(bsz, heads, seq_len, dim), dim=-1)
    v = randn(bsz, heads, seq_len, dim)
    eta_scale = eta_scale if eta_scale is not None else 1.0 / math.sqrt(dim)
    eta = (torch.rand(bsz, heads, seq_len, generator=g, dtype=torch.float64) * eta_scale).to(dtype=dtype, device=device)
    ln_weight = 1.0 + randn(heads, dim, std=0.1)
    ln_bias = randn(heads, dim, std=0.1)
    w1 = randn(heads, dim, hidden, std=0.2)
    b1 = randn(heads, hidden, std=0.1)
    w2 = randn(heads, hidden, dim, std=0.2)
    b2 = randn(heads, dim, std=0.1)
    return q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2
