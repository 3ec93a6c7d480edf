"""Scale-out: split attention and TTT heads across processes (``torchrun``; NCCL on GPUs, gloo on CPU).

Every process holds the whole transformed model and runs the same denoising loop on the same
latents. Inside each layer, the two costly head-wise parts are split: rank r of W computes heads
``[r*H/W, (r+1)*H/W)`` of

- every SDPA call of an edited attention (segment-local: gather segments, SDPA,
  average the overlap), and
- every TTT-MLP scan (the ``tttgraph::ttt_mlp`` op of both directions),

and an all-gather along the head dim gives every rank all heads again. The linear layers
(q/k/v/out projections, feed-forward, TTT projections) stay replicated, so activations are
identical on every rank, and each head is computed by exactly the kernels of a single process:
the latents equal a one-process run's (bit for bit on the CPU with the same thread count; the
gloo test checks it). This is tensor parallelism of the attention and scan only: it divides the
quadratic/sequential work and the activations of the scan, not the weights or the GEMMs.

H must be divisible by the world size (CogVideoX-5B's 48 heads: 1, 2, 3, 4, 6, 8, ...).

The other mode, context parallelism (``Parallel.context``, ``tttgraph generate --context-parallel``;
:mod:`tttgraph.parallel.context`), splits the sequence instead: each rank holds its segments'
tokens, so the activations (and their memory) are divided too, not only the attention and scans.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tttgraph.errors import TTTGraphError
from tttgraph.inplace import edited_modules, segment_attend
from tttgraph.layers import TTTMLP


@dataclass(frozen=True)
class Parallel:
    """This process's place in the job: ``rank`` of ``world`` (world 1: no distribution)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    context: bool = False  # split the sequence by segments (tttgraph.parallel), not the heads

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str | None = None, context: bool = False) -> Parallel:
    """Join the ``torchrun`` job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Without those variables (a plain run) returns a one-process :class:`Parallel`. The backend is
    NCCL when running on CUDA, else gloo; each rank uses ``cuda:LOCAL_RANK``. ``context`` picks context
    parallelism over segments instead of head parallelism.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Parallel()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Parallel(rank, world, local, context)


def _head_range(heads: int, par: Parallel) -> slice:
    if heads % par.world:
        raise TTTGraphError(
            f"{heads} heads can't be split evenly over {par.world} processes; run with a world size dividing "
            f"{heads} (torchrun --nproc-per-node N)"
        )
    per = heads // par.world
    return slice(par.rank * per, (par.rank + 1) * per)


def _all_gather_heads(x: Tensor, par: Parallel) -> Tensor:
    """[B, h, N, D] local heads -> [B, H, N, D] all heads (rank order = head order)."""
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(par.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=1)


class HeadParallelAttend:
    """How an edited attention computes its SDPA calls: this rank's heads only, then all heads gathered."""

    def __init__(self, par: Parallel):
        self.par = par

    def __call__(self, layout, kind: str, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                 **kwargs) -> Tensor:
        heads = _head_range(q.shape[1], self.par)
        if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[1] == q.shape[1]:
            attn_mask = attn_mask[:, heads]
        out = segment_attend(layout, kind, q[:, heads], k[:, heads], v[:, heads], attn_mask, **kwargs)
        out = _all_gather_heads(out, self.par)
        return out.transpose(1, 2).contiguous().transpose(1, 2)  # SDPA's own memory layout


class HeadParallelTTTMLP(nn.Module):
    """A :class:`~tttgraph.layers.TTTMLP` whose scan runs on this rank's heads only.

    ``TTTMLP``'s own stages: its ``scan_inputs`` and ``finish`` (projections, RoPE, target
    normalisation, output norm) run on all heads, replicated; only ``scan`` is restricted to this
    rank's head slice, and its output gathered. ``num_heads``/``head_dim`` are exposed because the
    gated wrapper reads them.
    """

    def __init__(self, inner: TTTMLP, par: Parallel):
        super().__init__()
        self.inner, self.par = inner, par
        self.heads = _head_range(inner.num_heads, par)
        self.num_heads, self.head_dim = inner.num_heads, inner.head_dim

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        out = self.inner.scan(*self.inner.scan_inputs(x, rope), heads=self.heads)
        return self.inner.finish(_all_gather_heads(out, self.par))


def shard_heads(model: nn.Module, par: Parallel) -> dict[str, int]:
    """Make every edited attention and TTT-MLP of a transformed ``model`` head-parallel, in place
    (context-parallel when ``par.context``: :func:`tttgraph.parallel.shard_context` over all processes).

    Returns counts ``{"attention": n, "ttt": m}``; a no-op when ``par.world == 1``.
    """
    counts = {"attention": 0, "ttt": 0}
    if not par.enabled:
        return counts
    if par.context:
        from tttgraph.parallel import ContextGroup, shard_context

        sharding = shard_context(model, ContextGroup.of())
        return {"attention": sharding.attentions, "ttt": sharding.ttt_layers}
    for _, module, _ in edited_modules(model):
        module.forward.attend = HeadParallelAttend(par)
        counts["attention"] += 1
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, TTTMLP)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, HeadParallelTTTMLP(mod, par))
        counts["ttt"] += 1
    if not counts["attention"] and not counts["ttt"]:
        raise TTTGraphError("the model has no segment-local attention or TTT layer to split; transform it first")
    return counts
