"""Context parallelism over segments for a transformed CogVideoX (issue #25).

The joint token sequence of one call is split across the P ranks of a context group by whole
segments: with n segments of S latent frames (+ O overlap frames), rank r holds segments
``[r*k, (r+1)*k)`` (k = n / P), that is their k text chunks and the latent frames
``[r*k*S, (r+1)*k*S)`` (the last rank: to the end of the video, the trailing overlap frame
included). Every token-wise op (projections, norms, feed-forward, adaLN) then runs on the rank's
tokens only. The two parts that see other tokens:

- **segment-local attention** (:class:`ContextParallelAttend`): rank r's last segment also attends
  over the O overlap frames of rank r+1. Their q, k, v come over as a halo (:func:`collectives.shift`);
  the attention output of those frames goes back to rank r+1, which averages it with its own (a token
  in two windows gets the mean of its two outputs, as in one process).
- **the TTT-MLP scans** (:class:`ContextParallelTTT`, installed as the ``forward`` of each
  ``GatedBidirectionalTTT``): q, k, v and the inner learning rates are computed on the rank's
  tokens, an all-to-all turns "my tokens, all heads" into "all tokens, my H/P heads" (Ulysses),
  the rank scans its heads over the whole sequence in TTT order (forward, then the reversed
  direction), and the inverse all-to-all brings the outputs back to their tokens.

The model is cut and joined by hooks (:func:`shard_context`): the first block's pre-hook slices
its inputs (video tokens, text chunks) to the rank's share, every block's pre-hook slices the RoPE
tables, and a hook on ``proj_out`` gathers the output tokens, so ``norm_final``, ``norm_out`` and
``proj_out`` run on the rank's tokens too and the model returns the whole output on every rank.

Gradients: every parameter is replicated across the context group and each rank's gradient is its
tokens' (and, for the inner TTT weights, its heads') share; the full gradient is their sum
(:func:`~tttgraph.parallel.collectives.all_reduce_gradients`, or FSDP2 with a gradient divide factor
of the data-parallel size, :mod:`tttgraph.parallel.mesh`).

Layouts: hidden states ``[B, N, C]``; q, k, v ``[B, H, N, D]``; RoPE tables ``[F*h*w, D]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tttgraph.errors import TTTGraphError
from tttgraph.inplace import ModelForward, edited_modules
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout
from tttgraph.ops import ttt_mlp
from tttgraph.parallel.collectives import gather_tokens, heads_to_tokens, join, shift, tokens_to_heads
from tttgraph.segment_attention import segment_attend

__all__ = ["ContextError", "ContextGroup", "Shard", "plan_shard", "shard_context", "unshard_context"]


class ContextError(TTTGraphError):
    """A model, a call or a setting that context parallelism can't split."""


@dataclass(frozen=True)
class ContextGroup:
    """This process's place in its context-parallel group: ``rank`` of ``size``; ``group`` the process group."""

    group: object
    rank: int
    size: int

    @classmethod
    def of(cls, group=None) -> ContextGroup:
        """The group ``group`` (default: all processes) of an initialised ``torch.distributed``."""
        return cls(group, dist.get_rank(group), dist.get_world_size(group))


@dataclass(frozen=True)
class Shard:
    """How one call's sequence is split over the context group (see the module docstring).

    Attributes:
        layout: the joint sequence's layout at this call's sizes (text first).
        frames: F, latent (token) frames of the whole video; ``segments``: n.
        segment_ranges[r]: the segments rank r holds, ``[start, stop)``; ranks differ by at most
            one segment (the first ``n % P`` ranks hold one more).
        frame_ranges[r]: the frames rank r holds, ``[start, stop)`` (the last rank: to the end).
    """

    layout: SequenceLayout
    frames: int
    segments: int
    segment_ranges: tuple[tuple[int, int], ...]
    frame_ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return len(self.segment_ranges)

    @property
    def halo(self) -> int:
        """Tokens of the overlap frames a rank receives from the next one."""
        return self.layout.overlap_frames * self.layout.video_tokens_per_frame

    def text_tokens(self, rank: int) -> int:
        start, stop = self.segment_ranges[rank]
        return (stop - start) * self.layout.text_tokens_per_segment

    @property
    def video_counts(self) -> tuple[int, ...]:
        tpf = self.layout.video_tokens_per_frame
        return tuple((stop - start) * tpf for start, stop in self.frame_ranges)

    @property
    def counts(self) -> tuple[int, ...]:
        """Tokens of every rank: its text chunks plus its frames."""
        return tuple(self.text_tokens(r) + v for r, v in enumerate(self.video_counts))

    def video_slice(self, rank: int) -> slice:
        """The rank's tokens in the video stream ``[B, F*h*w, C]`` (and rows of the RoPE tables)."""
        tpf = self.layout.video_tokens_per_frame
        start, stop = self.frame_ranges[rank]
        return slice(start * tpf, stop * tpf)

    def text_slice(self, rank: int) -> slice:
        """The rank's text chunks in the text stream ``[B, n*L, C]``."""
        lt = self.layout.text_tokens_per_segment
        start, stop = self.segment_ranges[rank]
        return slice(start * lt, stop * lt)

    def joint_index(self, rank: int) -> Tensor:
        """[n_r] positions in the whole joint sequence (text first) of the rank's tokens, in its order."""
        return _joint_index(self, rank)


def plan_shard(layout: SequenceLayout, frames: int, size: int) -> Shard:
    """The :class:`Shard` of a ``frames``-frame sequence over ``size`` ranks; a clear error if it can't split."""
    if not layout.text_first:
        raise ContextError("context parallelism splits a [text | video] joint sequence (CogVideoX); this layout puts "
                           "the video first")
    s, o = layout.frames_per_segment, layout.overlap_frames
    if s is None:
        raise ContextError("context parallelism splits by segments; transform with segment_latent_frames set "
                           "(e.g. presets.cogvideox_5b)")
    if layout.global_video:
        raise ContextError('attention_scope="video" lets every segment read every frame, so no rank can hold its '
                           'segments alone; use attention_scope="segment" for context parallelism')
    n = layout.num_segments(frames)
    if n < size:
        raise ContextError(
            f"{n} segment(s) ({frames} latent frames) can't be split over a context group of {size} processes: "
            f"each process needs at least one segment; use a context size of at most {n} or longer clips"
        )
    if o > s:
        raise ContextError(f"segment_overlap_frames={o} is larger than segment_latent_frames={s}; context "
                           "parallelism exchanges the overlap with one neighbour only (use overlap <= segment)")
    k, extra = divmod(n, size)
    bounds = [r * k + min(r, extra) for r in range(size + 1)]
    segments = tuple(zip(bounds[:-1], bounds[1:], strict=True))
    ranges = tuple((a * s, b * s if r < size - 1 else frames) for r, (a, b) in enumerate(segments))
    return Shard(layout, frames, n, segments, ranges)


@functools.lru_cache(maxsize=64)
def _joint_index(shard: Shard, rank: int) -> Tensor:
    text, video = shard.text_slice(rank), shard.video_slice(rank)
    offset = shard.layout.text_tokens(shard.frames)
    return torch.cat([torch.arange(text.start, text.stop), torch.arange(video.start, video.stop) + offset])


@functools.lru_cache(maxsize=64)
def _ttt_order(shard: Shard, reverse: bool) -> tuple[Tensor, Tensor]:
    """(order, inverse): order[p] is the rank-block position of the token at TTT position p."""
    block_of_joint = torch.empty(shard.layout.total_tokens(shard.frames), dtype=torch.long)
    joint = torch.cat([shard.joint_index(r) for r in range(shard.size)])
    block_of_joint[joint] = torch.arange(joint.numel())
    order = block_of_joint[shard.layout.interleave_index(shard.frames, None, reverse)]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return order, inverse


@functools.lru_cache(maxsize=64)
def _ttt_positions(shard: Shard, rank: int, reverse: bool) -> Tensor:
    """[n_r] TTT-order position of each of the rank's tokens (the RoPE rows it is rotated by)."""
    return shard.layout.deinterleave_index(shard.frames, None, reverse)[shard.joint_index(rank)]


def _on(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device)


class _State:
    """The context of a sharded model: its group and the current call's :class:`Shard` (set by the first block)."""

    def __init__(self, cp: ContextGroup, shape, joint: SequenceLayout):
        self.cp, self.shape, self.joint = cp, shape, joint
        self.shard: Shard | None = None

    def current(self, what: str) -> Shard:
        if self.shard is None:
            raise ContextError(f"{what} ran before the model's first block split the sequence; call the whole "
                               "model (its first block's pre-hook plans the split), not a block on its own")
        return self.shard


class ContextParallelAttend:
    """How an edited attention computes its SDPA call under context parallelism (see the module docstring).

    Takes the rank's q, k, v ``[B, H, n_r, D]`` (after RoPE), returns ``[B, H, n_r, D]``.
    """

    def __init__(self, state: _State):
        self.state = state

    def __call__(self, layout, kind: str, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                 **kwargs) -> Tensor:
        state = self.state
        shard, cp = state.current("an attention"), state.cp
        if kind != "self" or attn_mask is not None:
            raise ContextError(f"context parallelism runs joint self-attention without a mask (CogVideoX); this "
                               f"attention is {kind!r}{' with a mask' if attn_mask is not None else ''}")
        n = q.shape[2]
        if n != shard.counts[cp.rank]:
            raise ContextError(f"the attention got {n} tokens, rank {cp.rank}'s share is {shard.counts[cp.rank]}")
        last = cp.rank == cp.size - 1
        halo, nt = shard.halo, shard.text_tokens(cp.rank)
        if halo:
            # My first overlap frames go to the previous rank (its last window); the next rank's come here.
            mine = torch.cat([t[:, :, nt:nt + halo] for t in (q, k, v)], dim=-1)
            got = shift(mine, cp.group, -1)
            if not last:
                dq, dk = q.shape[-1], k.shape[-1]
                q = torch.cat([q, got[..., :dq]], dim=2)
                k = torch.cat([k, got[..., dq:dq + dk]], dim=2)
                v = torch.cat([v, got[..., dq + dk:]], dim=2)
            else:
                q = join(q, got)  # nothing came (no next rank); its backward must still run
        out = segment_attend(layout, "self", q, k, v, **kwargs)  # [B, H, n (+ halo), D]
        if halo:
            # The last rank sends nothing real, but its send must be in the graph like everyone's.
            sent = out[:, :, n:] if not last else join(out.new_zeros(*out.shape[:2], halo, out.shape[3]), out)
            back = shift(sent, cp.group, 1)  # the previous rank's output of my first overlap frames
            out = out[:, :, :n]
            if cp.rank > 0:
                both = (out[:, :, nt:nt + halo] + back) / 2
                out = torch.cat([out[:, :, :nt], both, out[:, :, nt + halo:]], dim=2)
            else:
                out = join(out, back)
        return out.transpose(1, 2).contiguous().transpose(1, 2)  # SDPA's own memory layout


class ContextParallelTTT:
    """The ``forward`` of a ``GatedBidirectionalTTT`` under context parallelism (same arguments, same result).

    ``x`` is the rank's share of the joint sequence ``[B, n_r, C]`` (its text chunks, then its frames);
    the gates and every token-wise stage run here, the scans over all tokens for this rank's heads.
    A plain object stored as the layer's instance attribute ``forward``: parameter names are unchanged.
    """

    def __init__(self, layer: GatedBidirectionalTTT, state: _State):
        self.layer, self.state = layer, state
        heads = layer.ttt.num_heads
        if heads % state.cp.size:
            raise ContextError(f"the TTT layer's {heads} heads can't be split over a context group of "
                               f"{state.cp.size}; use a context size dividing {heads}")

    def __call__(self, x: Tensor, num_frames: int | None = None, *, layout: SequenceLayout | None = None,
                 grid: tuple[int, int] | None = None) -> Tensor:
        layer = self.layer
        shard = self.state.current("a TTT layer")
        if layer.fold is not None:
            raise ContextError("context parallelism runs TTT layers over the joint sequence, not folded ones (Latte)")
        layout = layer.layout if layout is None else layout
        if layout != shard.layout:
            raise ContextError(f"the TTT layer reads {layout}, the attention {shard.layout}; context parallelism "
                               "splits one joint layout for both")
        grid = None if layer.rope_grid is None else (layer.rope_grid if grid is None else grid)
        rope = layer._rope(layout, shard.frames, grid, x.device)
        z = x + self._gate("forward", layout, x) * self._direction(x, shard, rope, reverse=False)
        if not layer.bidirectional:
            return z
        return z + self._gate("backward", layout, x) * self._direction(z, shard, rope, reverse=True)

    def _gate(self, direction: str, layout: SequenceLayout, x: Tensor) -> Tensor:
        """[n_r, C] tanh-gates of the rank's tokens (text chunks first, then frames)."""
        shard, layer = self.state.shard, self.layer
        video = torch.tanh(getattr(layer, f"{direction}_gate_video"))
        rank = self.state.cp.rank
        nv = shard.video_counts[rank]
        if not layout.text_tokens_per_segment:
            return video.expand(nv, -1).to(x.dtype)
        text = torch.tanh(getattr(layer, f"{direction}_gate_text"))
        return torch.cat([text.expand(shard.text_tokens(rank), -1), video.expand(nv, -1)]).to(x.dtype)

    def _direction(self, x: Tensor, shard: Shard, rope, reverse: bool) -> Tensor:
        """TTT over the (reversed) interleaved order of the whole sequence; [B, n_r, C] -> [B, n_r, C]."""
        ttt, cp = self.layer.ttt, self.state.cp
        if rope is not None:
            rows = _on(_ttt_positions(shard, cp.rank, reverse), x.device)
            rope = (rope[0].index_select(0, rows), rope[1].index_select(0, rows))
        q, k, v, eta = ttt.scan_inputs(x, rope)  # token-wise: [B, H, n_r, D], eta [B, H, n_r]
        d, counts = q.shape[-1], shard.counts
        order, inverse = (_on(t, x.device) for t in _ttt_order(shard, reverse))
        if eta.dtype == q.dtype:
            packed = tokens_to_heads(torch.cat([q, k, v, eta[..., None]], dim=-1), counts, cp.group)
            packed = packed.index_select(2, order)
            q, k, v, eta = packed[..., :d], packed[..., d:2 * d], packed[..., 2 * d:3 * d], packed[..., 3 * d]
        else:  # under autocast eta stays float32 while q, k, v are bf16: two exchanges keep each dtype
            qkv = tokens_to_heads(torch.cat([q, k, v], dim=-1), counts, cp.group).index_select(2, order)
            eta = tokens_to_heads(eta[..., None], counts, cp.group).index_select(2, order)[..., 0]
            q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        per = ttt.num_heads // cp.size
        heads = slice(cp.rank * per, (cp.rank + 1) * per)
        params = tuple(p[heads] for p in (ttt.ttt_norm_weight, ttt.ttt_norm_bias, ttt.w1, ttt.b1, ttt.w2, ttt.b2))
        out = ttt_mlp(q.contiguous(), k.contiguous(), v.contiguous(), eta.contiguous(), *params,
                      mini_batch_size=ttt.mini_batch_size, eps=ttt.eps, backend=ttt.backend)  # [B, h, N, D]
        out = heads_to_tokens(out.index_select(2, inverse), counts, cp.group)  # [B, H, n_r, D]
        return ttt.finish(out)


# ------------------------------------------------------------------------------------------ hooks

_BLOCK_ARGS = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb")
_ATTR = "_tttgraph_context"


def _bind(args: tuple, kwargs: dict) -> dict:
    return {**dict(zip(_BLOCK_ARGS, args, strict=False)), **kwargs}


def _unbind(args: tuple, kwargs: dict, bound: dict) -> tuple[tuple, dict]:
    n = len(args)
    new_args = tuple(bound[name] for name in _BLOCK_ARGS[:n]) + args[len(_BLOCK_ARGS):]
    return new_args, {k: bound[k] for k in kwargs}


class _BlockPreHook:
    """Slices a block's inputs to this rank's share; the first block also plans the call's :class:`Shard`."""

    def __init__(self, state: _State, first: bool):
        self.state, self.first = state, first

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        state, rank = self.state, self.state.cp.rank
        bound = _bind(args, kwargs)
        video, text = bound.get("hidden_states"), bound.get("encoder_hidden_states")
        if self.first:
            joint = state.shape.layout(state.joint)
            tpf = joint.video_tokens_per_frame
            if video.shape[1] % tpf:
                raise ContextError(f"the first block got {video.shape[1]} video tokens, not whole frames of {tpf}")
            shard = plan_shard(joint, video.shape[1] // tpf, state.cp.size)
            expected = joint.text_tokens(shard.frames)
            if text.shape[1] != expected:
                raise ContextError(
                    f"context parallelism needs one text chunk per segment: {shard.segments} x "
                    f"{joint.text_tokens_per_segment} = {expected} text tokens, got {text.shape[1]}; pass the "
                    "storyboard's per-segment embeddings (a single prompt: repeat it once per segment)"
                )
            state.shard = shard
            bound["hidden_states"] = video[:, shard.video_slice(rank)]
            bound["encoder_hidden_states"] = text[:, shard.text_slice(rank)]
        shard = state.current("a block")
        rope = bound.get("image_rotary_emb")
        if rope is not None and rope[0].shape[0] == shard.frames * shard.layout.video_tokens_per_frame:
            rows = shard.video_slice(rank)
            bound["image_rotary_emb"] = tuple(t[rows] for t in rope)
        return _unbind(args, kwargs, bound)


class _GatherOutput:
    """Forward hook of ``proj_out``: this rank's output tokens [B, n_r, E] -> all of them [B, N, E]."""

    def __init__(self, state: _State):
        self.state = state

    def __call__(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        shard, cp = self.state.current("proj_out"), self.state.cp
        return gather_tokens(out, shard.video_counts, cp.group)


@dataclass
class ContextSharding:
    """What :func:`shard_context` installed (kept on the model as ``_tttgraph_context``)."""

    cp: ContextGroup
    state: _State
    handles: list
    attentions: int
    ttt_layers: int


def shard_context(model: nn.Module, cp: ContextGroup) -> ContextSharding:
    """Make a transformed CogVideoX context-parallel over ``cp``, in place (module docstring).

    Each edited attention computes its SDPA through :class:`ContextParallelAttend`, each TTT layer's
    ``forward`` becomes a :class:`ContextParallelTTT`, and hooks split the blocks' inputs and gather
    ``proj_out``'s output. Parameters, their names and the model's class are unchanged. Every rank
    must call the model with the same inputs. Undo with :func:`unshard_context`.
    """
    if getattr(model, _ATTR, None) is not None:
        raise ContextError("the model is already context-parallel; call unshard_context(model) first")
    forward = model.__dict__.get("forward")
    if not isinstance(forward, ModelForward):
        raise ContextError(f"{type(model).__name__} is not a transformed model; run tttgraph.transform first")
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not hasattr(model, "proj_out") or not len(blocks):
        raise ContextError(f"context parallelism supports CogVideoX (transformer_blocks, proj_out); got "
                           f"{type(model).__name__}")
    edits = list(edited_modules(model))
    joints = {edit.joint for _, _, edit in edits}
    if not edits or None in joints or len(joints) != 1:
        raise ContextError("context parallelism needs joint text+video attention in every edited module "
                           "(CogVideoX's attn1)")
    for path, _, edit in edits:
        if edit.ttt_at not in (None, "output") or any(c.kind != "self" for c in edit.calls):
            raise ContextError(f"{path}: context parallelism supports joint self-attention with the TTT after it")
    state = _State(cp, forward.shape, joints.pop())
    counts = {"attention": 0, "ttt": 0}
    for _, module, _ in edits:
        module.forward.attend = ContextParallelAttend(state)
        counts["attention"] += 1
    for module in model.modules():
        if isinstance(module, GatedBidirectionalTTT):
            module.forward = ContextParallelTTT(module, state)
            counts["ttt"] += 1
    handles = [block.register_forward_pre_hook(_BlockPreHook(state, i == 0), with_kwargs=True)
               for i, block in enumerate(blocks)]
    handles.append(model.proj_out.register_forward_hook(_GatherOutput(state)))
    sharding = ContextSharding(cp, state, handles, counts["attention"], counts["ttt"])
    object.__setattr__(model, _ATTR, sharding)  # a plain attribute: not a submodule, not in the state dict
    return sharding


def unshard_context(model: nn.Module) -> None:
    """Undo :func:`shard_context`: the model computes in one process again."""
    sharding = getattr(model, _ATTR, None)
    if sharding is None:
        return
    for handle in sharding.handles:
        handle.remove()
    for _, module, _ in edited_modules(model):
        module.forward.attend = segment_attend
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), ContextParallelTTT):
            del module.forward
    object.__setattr__(model, _ATTR, None)


