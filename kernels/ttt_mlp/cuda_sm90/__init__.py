"""``cuda_sm90`` backend of ``tttgraph::ttt_mlp``: the on-chip tensor-parallel Hopper kernel.

Shapes (the op's canonical layout):
    q, k, v: [B, H, T, D] bfloat16    eta: [B, H, T]    ln_weight, ln_bias: [H, D]
    w1: [H, D, F]   b1: [H, F]   w2: [H, F, D]   b2: [H, D]      out: [B, H, T, D] bfloat16

One cluster of 2 CTAs per (batch, head) keeps the inner state on chip for the whole scan
(README.md beside this file). Built for D = 64, F = 256, mini-batch 64 (CogVideoX-5B), bf16 inputs,
on sm_90 GPUs; anything else is declined with a reason and ``auto`` falls back to Triton.

The CUDA sources are compiled on first use with ``torch.utils.cpp_extension`` into a persistent
cache (``build.py``; ``python -m tttgraph.kernels.ttt_mlp.cuda_sm90.build`` builds ahead of time).
Importing this module builds nothing and does not initialise CUDA.

The forward (``ttt_mlp_fwd.cu``) runs its products on wgmma and exchanges one pair of partial row
sums per mini-batch between the two CTAs (st.async into the peer, mbarrier wait); the output is
computed by worker CTAs on the SMs the scan leaves idle (``DECOUPLED_OUTPUT``). The backward
(``ttt_mlp_bwd.cu``) has the forward's scan recompute each checkpoint chunk's states (one launch
per chunk, last first), runs the output's backward for every tile of the chunk at once
(``ttt_mlp_bwd_out.cu``: dQ and the output's share of the state gradient) and walks the chunk in
reverse (products on wgmma) in the same 2-CTA layout, the state gradient on chip.
"""

from __future__ import annotations

import math

import torch

from . import build

D_BUILT, F_BUILT, MINI_BATCH_BUILT = 64, 256, 64

# Which compiled variant runs (bits, see ttt_mlp.h): 1 = bf16 hi/lo operands for Z1, Z2 and G_a, the
# products of the state update that feed the recurrence (kernels/ttt_mlp/README.md, "bf16 accuracy
# of the scan": plain bf16 there lets ill-conditioned heads drift); 2 = one-instruction tanh.approx
# in the output's GELU; 4 = the same in the inner step's GELU. Built: 0, 1, 3, 6, 7.
VARIANT = 7
# The decoupled output (ttt_mlp_fwd.cu; README.md, "Decoupled output"): the scan clusters publish every
# state into a ring in global memory and output workers on the SMs the scan leaves idle compute the
# output from it. Used when the device can keep every worker resident beside the scan (enough idle SMs:
# at B*H = 48 on an H100, 36 of 132); otherwise, or with this off, the scan computes the output itself
# (the fused kernel).
DECOUPLED_OUTPUT = True
# Tests cap the worker clusters (None: as many as fit) to make the scan wait for ring slots.
MAX_OUTPUT_WORKERS: int | None = None
# Tests set this to fill the output and checkpoint buffers with NaN before the kernel runs, so an
# element it never writes shows up.
POISON_BUFFERS = False


def unsupported_reason(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size: int, eps: float):
    """None if the sm_90 kernel can run these inputs here, else a readable reason."""
    if q.device.type != "cuda":
        return f"tensors are on {q.device.type}, not a CUDA device"
    dim, hidden = q.shape[-1], w1.shape[-1]
    if q.dtype != torch.bfloat16:
        return f"q, k, v are {q.dtype}; the kernel is built for bfloat16"
    if (dim, hidden, mini_batch_size) != (D_BUILT, F_BUILT, MINI_BATCH_BUILT):
        return (f"D={dim}, F={hidden}, mini_batch_size={mini_batch_size}: the kernel is built for "
                f"D={D_BUILT}, F={F_BUILT}, mini_batch_size={MINI_BATCH_BUILT}")
    if q.shape[0] * q.shape[1] > 65535:
        return f"B*H = {q.shape[0] * q.shape[1]} exceeds the kernel's grid limit of 65535"
    major, minor = torch.cuda.get_device_capability(q.device)
    if (major, minor) != (9, 0):
        return f"the GPU is sm_{major}{minor}; the kernel needs sm_90 (Hopper: H100, H200)"
    return build.unavailable_reason()


def _run(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, eps, checkpoint_every, save_state, with_out):
    ext = build.extension()
    bsz, heads, seq_len, dim = q.shape
    hidden = w1.shape[-1]
    n_mb = math.ceil(seq_len / MINI_BATCH_BUILT)
    n_ck = math.ceil(n_mb / checkpoint_every) if save_state else 0
    dev = q.device
    f32 = dict(device=dev, dtype=torch.float32)
    q, k, v = (t.to(torch.bfloat16).contiguous() for t in (q, k, v))
    params = [t.to(torch.float32).contiguous() for t in (eta, ln_weight, ln_bias, w1, b1, w2, b2)]
    out = torch.empty_like(q) if with_out else torch.empty(1, device=dev, dtype=torch.bfloat16)
    ck = (
        torch.empty(bsz, heads, n_ck, dim, hidden, **f32),
        torch.empty(bsz, heads, n_ck, hidden, **f32),
        torch.empty(bsz, heads, n_ck, hidden, dim, **f32),
        torch.empty(bsz, heads, n_ck, dim, **f32),
    )
    if POISON_BUFFERS:
        for t in (out, *ck):
            t.fill_(float("nan"))
    # With no checkpoints the kernel never touches those pointers; pass valid ones.
    ck_args = ck if save_state else tuple(torch.empty(1, **f32) for _ in range(4))
    args = (q, k, v, *params, out, *ck_args, checkpoint_every, n_ck, save_state, with_out, float(eps), VARIANT)
    ext.forward(*args, (MAX_OUTPUT_WORKERS or -1) if DECOUPLED_OUTPUT else 0)
    return out, ck


def output_workers(batch_heads: int) -> int:
    """Output-worker clusters the forward launches beside ``batch_heads`` scan clusters on the current
    device (0: the scan computes the output itself)."""
    if not DECOUPLED_OUTPUT:
        return 0
    workers = int(build.extension().forward_workers(batch_heads, VARIANT))
    return min(workers, MAX_OUTPUT_WORKERS) if MAX_OUTPUT_WORKERS else workers


def forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size: int, eps: float,
            checkpoint_every: int, save_state: bool):
    """Returns out [B,H,T,D] (bf16) and the fp32 checkpoints W1 [B,H,C,D,F], b1 [B,H,C,F],
    W2 [B,H,C,F,D], b2 [B,H,C,D] (C = ceil(n_minibatches / checkpoint_every), 0 without save_state)."""
    return _run(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, eps, checkpoint_every, save_state, True)


# The sm_90 backward (ttt_mlp_bwd.cu) runs when this is set; otherwise `backward` and `auto` take
# the Triton backward from this kernel's checkpoints. Bit 2 of BACKWARD_VARIANT: tanh.approx in the
# GELU derivatives (built: 0, 4).
NATIVE_BACKWARD = True
BACKWARD_VARIANT = 4


def auto_backward_reason(q, *args) -> str | None:
    """Why backend="auto" should not run this backward (None: run it)."""
    if not NATIVE_BACKWARD:
        return "the cuda_sm90 backward is switched off (NATIVE_BACKWARD); the Triton backward runs"
    return None


def backward(grad_out, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, states, mini_batch_size: int,
             eps: float, checkpoint_every: int):
    """The ten gradients, each in its input's dtype: recomputation from the checkpoints, chunk by chunk,
    in the forward's tensor-parallel layout (ttt_mlp_bwd.cu)."""
    if states[0].shape[2] == 0:
        _, states = _run(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, eps, checkpoint_every, True, False)
    if not NATIVE_BACKWARD:
        from tttgraph.kernels.ttt_mlp import triton as triton_backend

        return triton_backend.backward(grad_out, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, states,
                                       mini_batch_size, eps, checkpoint_every)
    ext = build.extension()
    bsz, heads, seq_len, dim = q.shape
    hidden = w1.shape[-1]
    n_mb = math.ceil(seq_len / MINI_BATCH_BUILT)
    slots = min(checkpoint_every, n_mb) + 1
    dev = q.device
    f32 = dict(device=dev, dtype=torch.float32)
    bf = torch.bfloat16
    q, k, v, dout = (t.to(bf).contiguous() for t in (q, k, v, grad_out))
    eta32, lnw, lnb = (t.to(torch.float32).contiguous() for t in (eta, ln_weight, ln_bias))
    states = tuple(s.to(torch.float32).contiguous() for s in states)
    dq, dk, dv = (torch.empty_like(q) for _ in range(3))
    deta = torch.empty(bsz, heads, seq_len, **f32)
    # The chunks (launched last first) accumulate into these: zeros.
    dgamma, dbeta = torch.zeros(bsz, heads, dim, **f32), torch.zeros(bsz, heads, dim, **f32)
    dw1, db1 = torch.zeros(bsz, heads, dim, hidden, **f32), torch.zeros(bsz, heads, hidden, **f32)
    dw2, db2 = torch.zeros(bsz, heads, hidden, dim, **f32), torch.zeros(bsz, heads, dim, **f32)
    # A chunk's states, written by the forward's scan: per CTA its W1 and W2 hi tiles and its biases.
    fl = hidden // 2
    # The output's backward of a chunk (ttt_mlp_bwd_out.cu), per (b, h) and mini-batch of the chunk: the
    # bf16 operands Aq, dZq1 (4 hidden chunks each) and dZq2 as [64][64] tiles, and the sums db1, db2,
    # dgamma, dbeta.
    scratch = (
        torch.empty(bsz * heads, slots, 2, 2, fl * dim, device=dev, dtype=bf),
        torch.empty(bsz * heads, slots, 2, fl + dim, **f32),
        torch.empty(bsz * heads, 9, MINI_BATCH_BUILT, dim, **f32),
        torch.empty(bsz * heads, slots - 1, 2 * hidden // 64 + 1, MINI_BATCH_BUILT, 64, device=dev, dtype=bf),
        torch.empty(bsz * heads, slots - 1, hidden + 3 * dim, **f32),
    )
    if POISON_BUFFERS:
        for t in (dq, dk, dv, deta, *scratch):
            t.fill_(float("nan"))
    ext.backward(q, k, v, dout, eta32, lnw, lnb, *states, dq, dk, dv, deta, dgamma, dbeta, dw1, db1, dw2, db2,
                 *scratch, checkpoint_every, float(eps), BACKWARD_VARIANT, VARIANT)
    # The initial state and the LayerNorm parameters are shared by the batch: sum their gradients.
    return (
        dq,
        dk,
        dv,
        deta.to(eta.dtype),
        dgamma.sum(0).to(ln_weight.dtype),
        dbeta.sum(0).to(ln_bias.dtype),
        dw1.sum(0).to(w1.dtype),
        db1.sum(0).to(b1.dtype),
        dw2.sum(0).to(w2.dtype),
        db2.sum(0).to(b2.dtype),
    )
