"""Public ops of tttgraph.

``ttt_mlp`` is the TTT-MLP scan of "One-Minute Video Generation with Test-Time Training"
(arXiv 2504.05298), as one ``torch.library`` custom op (``tttgraph::ttt_mlp``) with autograd, so
torch.export, torch.compile and ONNX see a single node whatever backend runs it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tttgraph.errors import TTTGraphError
from tttgraph.kernels.ttt_mlp import backends
from tttgraph.kernels.ttt_mlp.op import ttt_mlp_op

__all__ = ["ttt_mlp", "DEFAULT_CHECKPOINT_EVERY"]

# Mini-batches between inner-state checkpoints kept for the backward. 16 keeps 1/16 of the states
# (fp32 W1+W2 = 128 KiB per head at D=64, F=256) and recomputes at most 16 steps per chunk.
DEFAULT_CHECKPOINT_EVERY = 16


def ttt_mlp(
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
    *,
    mini_batch_size: int = 64,
    eps: float = 1e-6,
    backend: str = "auto",
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
) -> Tensor:
    """TTT-MLP scan: a two-layer MLP per head trained by one gradient step per mini-batch.

    Args:
        q, k, v: [B, H, T, D] queries, keys and reconstruction targets (the loss fits
            ``LN(MLP(k))`` to ``v - k``). Same dtype (float32, bfloat16 or float16).
        eta: [B, H, T] per-token inner learning rate (already scaled; see docs/DESIGN.md §3).
        ln_weight, ln_bias: [H, D] per-head LayerNorm of the inner model.
        w1: [H, D, F], b1: [H, F], w2: [H, F, D], b2: [H, D] initial inner MLP, shared over the batch.
        mini_batch_size: tokens per inner step (the last mini-batch may be shorter; default 64).
        eps: LayerNorm epsilon inside the square root (default 1e-6, as the reference's kernel).
        backend: "auto" (default), "reference", "triton" or "cuda_sm90"; see ``TTTBackend``.
        checkpoint_every: mini-batches between inner-state checkpoints saved for the backward
            (memory grows with T / checkpoint_every; default 16).

    Returns:
        out: [B, H, T, D] in q's dtype; ``out_t = q_t + LN(MLP_i(q_t))`` with ``MLP_i`` the inner
        model after the update on the mini-batch that holds token t. Inner state and accumulation
        are float32 on every backend.
    """
    args = (q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2)
    _check_inputs(args, mini_batch_size, eps, checkpoint_every)
    if not torch.compiler.is_compiling():  # dynamo can't trace the lazy imports; the op re-checks
        backends.resolve(backend, args, mini_batch_size, eps)  # fail early, with the reason
    save_state = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    backend = backends.parse_backend(backend).value
    return ttt_mlp_op(*args, mini_batch_size, float(eps), backend, checkpoint_every, save_state)[0]


def _check_inputs(args: tuple, mini_batch_size: int, eps: float, checkpoint_every: int) -> None:
    """Raise TTTGraphError naming the argument, the shape it got and the shape it needs."""
    names = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")
    for name, t in zip(names, args, strict=True):
        if not isinstance(t, Tensor):
            raise TypeError(f"ttt_mlp: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TTTGraphError(f"ttt_mlp: {name} must be a floating-point tensor, got dtype {t.dtype}")
    q = args[0]
    if q.dim() != 4:
        raise TTTGraphError(f"ttt_mlp: q must be [B, H, T, D] (4 dims), got shape {tuple(q.shape)}")
    bsz, heads, seq_len, dim = q.shape
    if min(bsz, heads, seq_len, dim) < 1:
        raise TTTGraphError(f"ttt_mlp: q must have every dim >= 1, got shape {tuple(q.shape)}")
    w1 = args[6]
    hidden = w1.shape[-1] if w1.dim() == 3 else None
    expected = {
        "k": ((bsz, heads, seq_len, dim), "[B, H, T, D]"),
        "v": ((bsz, heads, seq_len, dim), "[B, H, T, D]"),
        "eta": ((bsz, heads, seq_len), "[B, H, T]"),
        "ln_weight": ((heads, dim), "[H, D]"),
        "ln_bias": ((heads, dim), "[H, D]"),
        "w1": ((heads, dim, hidden), "[H, D, F]"),
        "b1": ((heads, hidden), "[H, F]"),
        "w2": ((heads, hidden, dim), "[H, F, D]"),
        "b2": ((heads, dim), "[H, D]"),
    }
    for name, t in zip(names[1:], args[1:], strict=True):
        shape, spelled = expected[name]
        if tuple(t.shape) != shape:
            want = "x".join("F" if s is None else str(s) for s in shape)
            raise TTTGraphError(
                f"ttt_mlp: {name} must be {spelled} = [{want}] for q of shape {tuple(q.shape)}, "
                f"got shape {tuple(t.shape)}"
            )
    for name, t in zip(names[1:3], args[1:3], strict=True):
        if t.dtype != q.dtype:
            raise TTTGraphError(f"ttt_mlp: q, k and v must share a dtype; q is {q.dtype} but {name} is {t.dtype}")
    for name, t in zip(names[1:], args[1:], strict=True):
        if t.device != q.device:
            raise TTTGraphError(
                f"ttt_mlp: every input must be on q's device {q.device}, but {name} is on {t.device}; "
                f"move it with .to({str(q.device)!r})"
            )
    if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
        raise TTTGraphError(f"ttt_mlp: mini_batch_size must be an int >= 1, got {mini_batch_size!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise TTTGraphError(f"ttt_mlp: checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    if not eps > 0:
        raise TTTGraphError(f"ttt_mlp: eps must be > 0, got {eps!r}")
