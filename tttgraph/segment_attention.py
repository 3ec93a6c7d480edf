"""Segment-local attention: each segment attends only to its own frames and its own text chunk.

Measured fastest form on H100 (docs/DESIGN.md §4): gather every segment's tokens into the batch dim and
run one dense SDPA; a token seen by two segments (the overlap frame) gets the mean of its two
outputs. All segments but the last have the same length, so there are at most two SDPA calls (the
full segments batched, then a shorter last one). The gathers are constant index tensors built once
per frame count, which keeps the graph exportable (gather + SDPA + index_add).

Layouts: q, k, v are ``[B, H, N, D]`` over a sequence described by a :class:`SequenceLayout`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout, _offsets, frames_and_segments, in_graph


@dataclass(frozen=True, eq=False)
class SegmentIndex:
    """Which query and key/value tokens each segment holds.

    groups: ``(q_index [n, Lq], kv_index [n, Lkv])`` per group of equal-length segments.
    q_tokens: length of the query sequence; counts: [q_tokens] segments that hold each query
    token (>= 1 for every token, so every output row is written).
    """

    groups: tuple[tuple[Tensor, Tensor], ...]
    q_tokens: int
    counts: Tensor
    overlap: bool  # some query token is in two segments (its outputs are averaged)

    def to(self, device) -> SegmentIndex:
        groups = tuple((qi.to(device), ki.to(device)) for qi, ki in self.groups)
        return SegmentIndex(groups, self.q_tokens, self.counts.to(device), self.overlap)


def _segment_tokens(layout: SequenceLayout, num_frames: int, text: bool, video: bool) -> list[Tensor]:
    """Per segment, the joint-sequence indices of its text chunk and/or its attention-window frames."""
    t0, v0 = _offsets(layout, num_frames)
    lt, tpf = layout.text_tokens_per_segment, layout.video_tokens_per_frame
    out = []
    for i, (start, stop) in enumerate(layout.attention_windows(num_frames)):
        parts = []
        if text:
            parts.append(torch.arange(t0 + i * lt, t0 + (i + 1) * lt))
        if video:
            parts.append(torch.arange(v0 + start * tpf, v0 + stop * tpf))
        out.append(torch.cat(parts))
    return out


def _group(q_lists: list[Tensor], kv_lists: list[Tensor], q_tokens: int) -> SegmentIndex:
    groups: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = {}
    for qi, ki in zip(q_lists, kv_lists, strict=True):
        groups.setdefault((len(qi), len(ki)), []).append((qi, ki))
    packed = tuple((torch.stack([q for q, _ in g]), torch.stack([k for _, k in g])) for g in groups.values())
    counts = torch.zeros(q_tokens, dtype=torch.long)
    for qi in q_lists:
        counts[qi] += 1
    # Segments cover every query token (the windows tile the video), so a token is in two segments
    # exactly when the segments hold more tokens than the sequence. Decided on Python ints, not on
    # ``counts``: torch.compile traces this function and can't branch on tensor values.
    return SegmentIndex(packed, q_tokens, counts, sum(len(qi) for qi in q_lists) > q_tokens)


@functools.lru_cache(maxsize=64)
def self_attention_index(layout: SequenceLayout, num_frames: int) -> SegmentIndex:
    """Joint self-attention: segment i = text chunk i + frames of window i, as queries and keys.

    With ``layout.global_video`` the keys of segment i are text chunk i and every frame."""
    tokens = _segment_tokens(layout, num_frames, text=layout.text_tokens_per_segment > 0, video=True)
    keys = tokens
    if layout.global_video:
        t0, v0 = _offsets(layout, num_frames)
        lt, video = layout.text_tokens_per_segment, torch.arange(v0, v0 + layout.video_tokens(num_frames))
        keys = [torch.cat([torch.arange(t0 + i * lt, t0 + (i + 1) * lt), video]) for i in range(len(tokens))]
    return _group(tokens, keys, layout.total_tokens(num_frames))


@functools.lru_cache(maxsize=64)
def cross_attention_index(layout: SequenceLayout, num_frames: int) -> SegmentIndex:
    """Video queries to text keys: the frames of window i attend to text chunk i only.

    The query sequence is the video alone ([F * tokens per frame]); the key sequence the text alone.
    """
    video_only = SequenceLayout(0, layout.video_tokens_per_frame, layout.frames_per_segment, layout.overlap_frames)
    q_lists = _segment_tokens(video_only, num_frames, text=False, video=True)
    lt = layout.text_tokens_per_segment
    kv_lists = [torch.arange(i * lt, (i + 1) * lt) for i in range(len(q_lists))]
    return _group(q_lists, kv_lists, layout.video_tokens(num_frames))


@functools.lru_cache(maxsize=64)
def text_attention_index(text_tokens_per_segment: int, segments: int) -> SegmentIndex:
    """Self-attention over text only (e.g. HunyuanVideo's prompt refiner): each chunk attends to itself."""
    lt = text_tokens_per_segment
    chunks = [torch.arange(i * lt, (i + 1) * lt) for i in range(segments)]
    return _group(chunks, chunks, lt * segments)


def segment_sdpa(
    q: Tensor, k: Tensor, v: Tensor, index: SegmentIndex, attn_mask: Tensor | None = None, **sdpa_kwargs
) -> Tensor:
    """SDPA within segments. q: [B, H, Nq, D], k/v: [B, H, Nkv, Dk/Dv] -> [B, H, Nq, Dv].

    ``attn_mask`` (bool or additive, broadcastable to [B, H, Nq, Nkv], e.g. a key-padding mask
    [B, 1, 1, Nkv]) is cut into the same segments. ``sdpa_kwargs`` go to
    ``F.scaled_dot_product_attention`` (``scale``, ``enable_gqa``).
    """
    bsz, heads, _, _ = q.shape
    out = None
    for q_idx, kv_idx in index.groups:
        n, lq = q_idx.shape
        qs = _gather(q, q_idx)
        ks, vs = _gather(k, kv_idx), _gather(v, kv_idx)
        mask = None if attn_mask is None else _gather_mask(attn_mask, q_idx, kv_idx, bsz)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, **sdpa_kwargs)  # [n*B, H, Lq, Dv]
        o = o.unflatten(0, (n, bsz)).permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, H, n*Lq, Dv]
        if out is None:  # in SDPA's output dtype, which autocast may lower below q's
            out = o.new_zeros(bsz, heads, index.q_tokens, v.shape[-1])
        out = out.index_add(2, q_idx.flatten(), o)
    if index.overlap:
        out = out / index.counts.to(out.dtype)[:, None]
    return out


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """[B, H, N, D] and [n, L] indices -> [n*B, H, L, D] (segments in the batch dim, segment-major)."""
    n, length = idx.shape
    g = x.index_select(2, idx.flatten())  # [B, H, n*L, D]
    return g.unflatten(2, (n, length)).permute(2, 0, 1, 3, 4).flatten(0, 1)


def _gather_mask(mask: Tensor, q_idx: Tensor, kv_idx: Tensor, bsz: int) -> Tensor:
    """Mask broadcastable to [B, H, Nq, Nkv] -> [n*B, H|1, Lq|1, Lkv] for the segments' tokens."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    mask = mask.expand(bsz, *mask.shape[1:])
    rows = q_idx[:, :, None] if mask.shape[2] != 1 else torch.zeros_like(q_idx[:, :1, None])
    m = mask[:, :, rows, kv_idx[:, None, :]]  # [B, h, n, Lq|1, Lkv]
    return m.permute(2, 0, 1, 3, 4).flatten(0, 1)


def segment_attend(layout: SequenceLayout | None, kind: str, q: Tensor, k: Tensor, v: Tensor,
                   attn_mask: Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                   **kwargs) -> Tensor:
    """One SDPA call, segment-local over ``layout`` (None: global). q, k, v: [B, H, N, D] -> [B, H, Nq, Dv].

    ``kind``: ``"self"``, ``"cross"`` (video queries, text keys: one chunk per segment, or one chunk
    that every segment reads) or ``"text"`` (each chunk to itself). The frame count is read off the
    query length. The result is laid out in memory as SDPA's own kernels lay theirs ([B, N, H, D]),
    so a processor's ``view`` after it behaves the same. Both forms of a transformed model call this:
    the eager edits (``tttgraph/inplace.py``) and the graph's :class:`SegmentAttention`.
    """
    global_attention = layout is None or layout.frames_per_segment is None or (
        layout.global_video and kind == "self" and not layout.text_tokens_per_segment)  # video alone: all of it
    if global_attention or is_causal:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                              **kwargs)
    if in_graph(q.shape[2]):
        index = whole_segment_index(layout, kind, q.shape[2])
        return segment_sdpa(q, k, v, index.to(q.device), attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
    if kind == "self":
        index = self_attention_index(layout, layout.infer_num_frames(q.shape[2]))
    elif kind == "cross":
        frames = q.shape[2] // layout.video_tokens_per_frame
        if k.shape[2] == layout.text_tokens_per_segment:  # one chunk: every window reads the same keys
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
        if k.shape[2] != layout.text_tokens(frames):
            raise TTTGraphError(
                f"segment cross-attention over {frames} frames needs {layout.num_segments(frames)} text chunks of "
                f"{layout.text_tokens_per_segment} tokens ({layout.text_tokens(frames)} tokens) or one chunk; got "
                f"{k.shape[2]} text tokens"
            )
        index = cross_attention_index(layout, frames)
    else:
        lt = layout.text_tokens_per_segment
        if q.shape[2] % lt:
            raise TTTGraphError(f"{q.shape[2]} text tokens are not whole chunks of {lt}; pass one chunk per segment")
        index = text_attention_index(lt, q.shape[2] // lt)
    out = segment_sdpa(q, k, v, _on_device(index, q.device), attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


def _window_len(layout: SequenceLayout, frames) -> int:
    s = layout.frames_per_segment
    return frames if s is None else s + layout.overlap_frames


def _rows(n, step, width, start=0) -> Tensor:
    """[n, width] with row i = start + i * step + arange(width)."""
    return start + torch.arange(n)[:, None] * step + torch.arange(width)[None, :]


def whole_segment_index(layout: SequenceLayout, kind: str, tokens) -> SegmentIndex:
    """The :class:`SegmentIndex` of one attention kind ("self", "cross", "text") for whole segments,
    built in the graph from a symbolic length (``layout.py``, "built in the graph").

    ``tokens``: the query length (self: joint sequence; cross: video tokens; text: text tokens).
    """
    lt, tpf = layout.text_tokens_per_segment, layout.video_tokens_per_frame
    step = (layout.frames_per_segment or 0) * tpf
    if kind == "text":
        n = tokens // lt
        q = kv = _rows(n, lt, lt)
    elif kind == "cross":
        frames, n = frames_and_segments(layout, tokens, video_only=True)
        q = _rows(n, step, _window_len(layout, frames) * tpf)
        kv = _rows(n, lt, lt)
    else:
        frames, n = frames_and_segments(layout, tokens)
        t0, v0 = (0, n * lt) if layout.text_first else (frames * tpf, 0)
        q = _rows(n, step, _window_len(layout, frames) * tpf, v0)
        kv = _rows(n, 0, frames * tpf, v0) if layout.global_video else q
        if lt:
            q = torch.cat([_rows(n, lt, lt, t0), q], dim=1)
            kv = torch.cat([_rows(n, lt, lt, t0), kv], dim=1)
    counts = torch.zeros(tokens, dtype=torch.long).index_add(0, q.flatten(), torch.ones(q.numel(), dtype=torch.long))
    return SegmentIndex(((q, kv),), tokens, counts, overlap=True)


class SegmentAttention(torch.nn.Module):
    """Drop-in for one SDPA call: ``forward(q, k, v, attn_mask=None)``, segment-local.

    ``kind`` is ``"self"`` (queries and keys over the sequence of ``layout``), ``"cross"`` (video
    queries, one text chunk per segment as keys) or ``"text"`` (text-only self-attention, each
    chunk to itself). The frame count is read off the query length at each call, so a graph
    captured at one frame count runs at another.
    """

    def __init__(
        self,
        layout: SequenceLayout,
        kind: str = "self",
        scale: float | None = None,
        memory_order: tuple[int, ...] = (0, 2, 1, 3),
    ):
        super().__init__()
        if kind not in ("self", "cross", "text"):
            raise ValueError(f"kind must be 'self', 'cross' or 'text', got {kind!r}")
        self.layout, self.kind, self.scale = layout, kind, scale
        # Graph code after an SDPA may view() its output assuming SDPA's memory layout ([B, N, H, D]
        # in memory for the CPU and CUDA kernels); the output is laid out the same way.
        self.memory_order = tuple(memory_order)

    def num_frames(self, q_tokens: int) -> int:
        if self.kind == "self":
            return self.layout.infer_num_frames(q_tokens)
        return q_tokens // self.layout.video_tokens_per_frame

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        out = segment_attend(self.layout, self.kind, q, k, v, attn_mask, scale=self.scale)
        inverse = sorted(range(4), key=self.memory_order.__getitem__)
        return out.permute(self.memory_order).contiguous().permute(inverse)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, layout={self.layout}"


@functools.lru_cache(maxsize=64)
def _cached_on_device(index: SegmentIndex, device: torch.device) -> SegmentIndex:
    return index.to(device)


def _on_device(index: SegmentIndex, device: torch.device) -> SegmentIndex:
    return index if device.type == "cpu" else _cached_on_device(index, device)
