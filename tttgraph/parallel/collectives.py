"""The collectives of context parallelism, each an autograd function (forward and backward communicate).

All run on plain ``torch.distributed`` calls over a process group (NCCL on GPUs, gloo on the CPU):

- :func:`shift` (``batch_isend_irecv``): every rank sends a tensor to its neighbour ``rank + step`` and
  receives its other neighbour's. The halo of segment-local attention (one overlap frame) travels this way.
- :func:`tokens_to_heads` / :func:`heads_to_tokens` (``all_to_all_single`` with uneven splits): the
  Ulysses re-layout between "my tokens, all heads" and "all tokens, my heads". gloo implements
  ``all_to_all_single`` with uneven splits (checked on torch 2.13), so no all-gather fallback is needed.
- :func:`gather_tokens` (``all_gather`` of padded shards): the model's output, whole on every rank; its
  backward keeps this rank's slice, because every rank computes the same loss from the gathered output.
- :func:`all_reduce_gradients`: sum of the parameter gradients over the context group (without FSDP).

Token counts may differ between ranks (the last rank holds the trailing overlap frame); every rank
knows all counts from the shard geometry, so no sizes are exchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_gradients", "gather_tokens", "heads_to_tokens", "join", "shift", "tokens_to_heads"]


def _peer(group, rank: int) -> int:
    """The global rank of ``rank`` in ``group`` (P2P ops address global ranks)."""
    return dist.get_global_rank(group, rank) if group is not None else rank


def _exchange(x: Tensor, group, step: int) -> Tensor:
    """Send ``x`` to group rank ``r + step``, receive from ``r - step``; zeros where there is no sender."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    x = x.contiguous()
    out = torch.zeros_like(x)
    ops = []
    if 0 <= rank + step < size:
        ops.append(dist.P2POp(dist.isend, x, _peer(group, rank + step), group))
    if 0 <= rank - step < size:
        ops.append(dist.P2POp(dist.irecv, out, _peer(group, rank - step), group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return out


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group, step: int) -> Tensor:
        ctx.group, ctx.step = group, step
        return _exchange(x, group, step)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # What rank r received came from r - step: its gradient goes back there.
        return _exchange(grad, ctx.group, -ctx.step), None, None


def shift(x: Tensor, group, step: int) -> Tensor:
    """Rank r sends ``x`` to rank ``r + step`` and returns what rank ``r - step`` sent (zeros if none).

    ``x`` has the same shape on every rank. The first ranks (``r - step`` out of range) receive
    zeros; the gradient flows back to the sender.
    """
    return _Shift.apply(x, group, step)


class _Join(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, unused: Tensor) -> Tensor:
        ctx.shape, ctx.dtype, ctx.device = unused.shape, unused.dtype, unused.device
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.device)


def join(x: Tensor, unused: Tensor) -> Tensor:
    """``x``, with ``unused`` (a collective's output this rank ignores) tied into the autograd graph.

    Autograd runs a node's backward only if a gradient reaches it; a boundary rank that ignores what
    :func:`shift` gave it would skip that shift's backward while its neighbour waits in the matching
    send. Tied in, the ignored tensor gets a zero gradient and every rank runs every backward collective.
    """
    return _Join.apply(x, unused) if torch.is_grad_enabled() and unused.requires_grad else x


def _all_to_all(x: Tensor, out_rows: int, out_splits: Sequence[int], in_splits: Sequence[int], group) -> Tensor:
    """``all_to_all_single`` along dim 0 of ``x`` (contiguous), ``out_rows`` rows out."""
    out = x.new_empty((out_rows, *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), list(out_splits), list(in_splits), group=group)
    return out


def _to_heads(x: Tensor, counts: Sequence[int], group) -> Tensor:
    size, rank = len(counts), dist.get_rank(group)
    b, heads, n, e = x.shape
    h = heads // size
    send = x.reshape(b, size, h, n, e).permute(1, 3, 0, 2, 4).reshape(size * n, b, h, e)  # [P*n, B, h, E]
    got = _all_to_all(send, sum(counts), counts, [counts[rank]] * size, group)  # [N, B, h, E] rank blocks
    return got.permute(1, 2, 0, 3)


def _to_tokens(y: Tensor, counts: Sequence[int], group) -> Tensor:
    size, rank = len(counts), dist.get_rank(group)
    b, h, _, e = y.shape
    n = counts[rank]
    send = y.permute(2, 0, 1, 3)  # [N, B, h, E], rank r's tokens in block r
    got = _all_to_all(send, size * n, [n] * size, counts, group)  # [P*n, B, h, E], head block p from rank p
    return got.reshape(size, n, b, h, e).permute(2, 0, 3, 1, 4).reshape(b, size * h, n, e)


class _TokensToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: tuple[int, ...], group) -> Tensor:
        ctx.counts, ctx.group = counts, group
        return _to_heads(x, counts, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _to_tokens(grad, ctx.counts, ctx.group), None, None


class _HeadsToTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, counts: tuple[int, ...], group) -> Tensor:
        ctx.counts, ctx.group = counts, group
        return _to_tokens(y, counts, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _to_heads(grad, ctx.counts, ctx.group), None, None


def tokens_to_heads(x: Tensor, counts: Sequence[int], group) -> Tensor:
    """[B, H, n_r, E] (this rank's tokens, all heads) -> [B, H/P, N, E] (all tokens, heads of this rank).

    ``counts``: tokens of every rank (``n_r = counts[r]``, ``N = sum(counts)``); the result's tokens are
    in rank-block order (rank 0's, then rank 1's, ...). Rank r gets heads ``[r*H/P, (r+1)*H/P)``.
    """
    return _TokensToHeads.apply(x, tuple(counts), group)


def heads_to_tokens(y: Tensor, counts: Sequence[int], group) -> Tensor:
    """Inverse of :func:`tokens_to_heads`: [B, H/P, N, E] -> [B, H, n_r, E]."""
    return _HeadsToTokens.apply(y, tuple(counts), group)


def _gather(x: Tensor, counts: Sequence[int], group) -> Tensor:
    """[B, n_r, E] of every rank -> [B, N, E] (rank order); shards padded to the largest for all_gather."""
    most = max(counts)
    pad = x.new_zeros((x.shape[0], most, *x.shape[2:]))
    pad[:, : x.shape[1]] = x
    parts = [torch.empty_like(pad) for _ in counts]
    dist.all_gather(parts, pad.contiguous(), group=group)
    return torch.cat([p[:, :n] for p, n in zip(parts, counts, strict=True)], dim=1)


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: tuple[int, ...], group) -> Tensor:
        rank = dist.get_rank(group)
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return _gather(x, counts, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Every rank computes the same loss from the same gathered output, so its gradient is the same
        # on every rank: this rank's share is its own slice (a reduce-scatter would count it P times).
        return grad[:, ctx.start:ctx.stop], None, None


def gather_tokens(x: Tensor, counts: Sequence[int], group) -> Tensor:
    """[B, n_r, E] of this rank -> [B, N, E], the ranks' tokens in rank order, on every rank.

    The backward returns this rank's slice of the incoming gradient: the computation after the
    gather must be the same on every rank (replicated), as the model's output and its loss are.
    """
    return _GatherTokens.apply(x, tuple(counts), group)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], group) -> int:
    """Sum the ``.grad`` of ``params`` over ``group`` in place (one flat all-reduce per dtype and device).

    Each rank's gradient holds its tokens' share (and, for the TTT inner weights, its heads'), so the
    full gradient is the sum. Returns the number of gradients reduced.
    """
    grads = [p.grad for p in params if p.grad is not None]
    buckets: dict[tuple, list[Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.dtype, g.device), []).append(g)
    for bucket in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    return len(grads)
