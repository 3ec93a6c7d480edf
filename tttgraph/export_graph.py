"""Export-time forwards of the modules that tttgraph inserts, with index tensors built in the graph.

In eager use, :class:`~tttgraph.segment_attention.SegmentAttention` and
:class:`~tttgraph.layers.GatedBidirectionalTTT` build their gather indices once per frame count in
Python (cached constants). An exported graph must instead compute them from the symbolic sequence
length, so that one file runs at every frame count. That is possible when every segment is whole:
``F = S * n + O`` token frames for n segments (S frames per segment, O overlap) and ``n`` text
chunks. Then every attention window has ``S + O`` frames (one batched SDPA), the first TTT chunk
holds ``S + O`` frames and every other S; every index below is an affine function of ``arange``
over n, which exports as ``Range``/``Gather``/``ScatterElements``.

:func:`exportable` swaps these forwards in for the duration of an export; the math is the eager
modules' own (``segment_sdpa``, ``TTTMLP``), only the index construction differs, and
``tests/test_export.py`` checks the indices against the eager ones.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout
from tttgraph.rope import video_rope_angles
from tttgraph.segment_attention import SegmentAttention, SegmentIndex, segment_sdpa

__all__ = ["exportable", "frames_and_segments", "interleave_positions", "segment_index"]


def frames_and_segments(layout: SequenceLayout, total_tokens, video_only: bool = False):
    """(F, n): token frames and segments of a joint sequence of ``total_tokens`` (whole segments).

    ``video_only`` reads ``total_tokens`` as the video part alone (F * tokens per frame).
    """
    lt, tpf, s, o = layout.text_tokens_per_segment, layout.video_tokens_per_frame, layout.frames_per_segment, 0
    if s is None:
        frames = total_tokens // tpf if video_only else (total_tokens - lt) // tpf
        return frames, 1
    o = layout.overlap_frames
    if video_only or lt == 0:
        frames = total_tokens // tpf
        return frames, (frames - o) // s
    n = (total_tokens - o * tpf) // (lt + s * tpf)
    return s * n + o, n


def _window_len(layout: SequenceLayout, frames) -> int:
    s = layout.frames_per_segment
    return frames if s is None else s + layout.overlap_frames


def _rows(n, step, width, start=0) -> Tensor:
    """[n, width] with row i = start + i * step + arange(width)."""
    return start + torch.arange(n)[:, None] * step + torch.arange(width)[None, :]


def segment_index(layout: SequenceLayout, kind: str, tokens) -> SegmentIndex:
    """The :class:`SegmentIndex` of one attention kind ("self", "cross", "text") for whole segments.

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
        if lt:
            q = torch.cat([_rows(n, lt, lt, t0), q], dim=1)
        kv = q
    counts = torch.zeros(tokens, dtype=torch.long).index_add(0, q.flatten(), torch.ones(q.numel(), dtype=torch.long))
    return SegmentIndex(((q, kv),), tokens, counts, overlap=True)


def interleave_positions(layout: SequenceLayout, frames, n, reverse: bool = False) -> Tensor:
    """[N] position in TTT order of each joint-sequence token (``deinterleave_index`` of the layout).

    Forward order ``[txt_0 | vid_0 | ...]`` with the frames beyond ``n * S`` in the first chunk;
    ``reverse`` gives the forward order of ``rev(x)`` (the layout module's docstring).
    """
    lt, tpf = layout.text_tokens_per_segment, layout.video_tokens_per_frame
    s = layout.frames_per_segment or 0
    extra = frames - n * s if s else 0  # frames of the first chunk beyond S
    full = lt + s * tpf  # tokens of a chunk of S frames with its text
    video = torch.arange(frames * tpf)
    owner = torch.zeros_like(video) if not s else ((video // tpf - extra) // s).clamp(min=0)
    later = (owner > 0).long()

    def start(chunk: Tensor) -> Tensor:  # first TTT position of a chunk
        return chunk * full + (chunk > 0).long() * (extra * tpf)

    text_seg = torch.arange(n * lt) // max(lt, 1)
    text_pos = start(text_seg) + torch.arange(n * lt) - text_seg * lt
    video_pos = start(owner) + lt + video - (owner * s + later * extra) * tpf
    if reverse:  # positions of rev(x) in forward order, read back through rev
        text_pos = text_pos.reshape(n, lt).flip(0).reshape(-1)
        video_pos = video_pos.flip(0)
    parts = [text_pos, video_pos] if layout.text_first else [video_pos, text_pos]
    return torch.cat(parts)


def _inverse(positions: Tensor) -> Tensor:
    return torch.zeros_like(positions).scatter(0, positions, torch.arange(positions.numel()))


def _segment_attention_forward(self: SegmentAttention, q: Tensor, k: Tensor, v: Tensor, attn_mask=None) -> Tensor:
    index = segment_index(self.layout, self.kind, q.shape[2])
    index = SegmentIndex(tuple((a.to(q.device), b.to(q.device)) for a, b in index.groups), index.q_tokens,
                         index.counts.to(q.device), True)
    out = segment_sdpa(q, k, v, index, attn_mask=attn_mask, scale=self.scale)
    inverse = sorted(range(4), key=self.memory_order.__getitem__)
    return out.permute(self.memory_order).contiguous().permute(inverse)


def _gated_forward(self: GatedBidirectionalTTT, x: Tensor, num_frames=None) -> Tensor:
    layout = self.layout
    frames, n = frames_and_segments(layout, x.shape[1])
    rope = None
    if self.rope_grid is not None:
        angles = video_rope_angles(frames, self.rope_grid, self.ttt.head_dim, self.rope_theta)
        text = angles.new_zeros(n * layout.text_tokens_per_segment, angles.shape[1])
        angles = torch.cat([text, angles] if layout.text_first else [angles, text])
        rope = (angles.cos().float().to(x.device), angles.sin().float().to(x.device))
    video = torch.ones(frames * layout.video_tokens_per_frame, dtype=torch.bool)
    text = torch.zeros(n * layout.text_tokens_per_segment, dtype=torch.bool)
    mask = torch.cat([text, video] if layout.text_first else [video, text]).to(x.device)[:, None]

    def gate(direction: str) -> Tensor:
        g = getattr(self, f"{direction}_gate_video")
        if layout.text_tokens_per_segment:
            g = torch.where(mask, g, getattr(self, f"{direction}_gate_text"))
        return torch.tanh(g).to(x.dtype)

    if rope is not None:  # both directions rotate by position in the sequence read: forward order
        order = _inverse(interleave_positions(layout, frames, n).to(x.device))
        rope = (rope[0].index_select(0, order), rope[1].index_select(0, order))

    def run(seq: Tensor, reverse: bool) -> Tensor:
        inv = interleave_positions(layout, frames, n, reverse).to(x.device)
        return self.ttt(seq.index_select(1, _inverse(inv)), rope).index_select(1, inv)

    z = x + gate("forward") * run(x, False)
    if not self.bidirectional:
        return z
    return z + gate("backward") * run(z, True)


@contextlib.contextmanager
def exportable(module: nn.Module) -> Iterator[int]:
    """Within the block, tttgraph's modules inside ``module`` build their indices in the graph.

    Yields the number of modules switched. Folded TTT layers (Latte) keep their eager forward:
    their frame count is static.
    """
    switched = []
    for m in module.modules():
        if isinstance(m, SegmentAttention):
            m.forward = types.MethodType(_segment_attention_forward, m)
        elif isinstance(m, GatedBidirectionalTTT) and m.fold is None:
            m.forward = types.MethodType(_gated_forward, m)
        else:
            continue
        switched.append(m)
    try:
        yield len(switched)
    finally:
        for m in switched:
            del m.forward
