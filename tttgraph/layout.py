"""Token layout of a video DiT's joint sequence, and the reorderings the TTT layer needs.

A model's joint sequence is ``[text | video]`` (or ``[video | text]``): the text holds one chunk of
``text_tokens_per_segment`` tokens per segment, in segment order; the video holds ``num_frames``
latent frames of ``video_tokens_per_frame`` tokens each, frame-major.

Segments (docs/DESIGN.md §4): segment i's *attention window* covers latent frames
``[i*S, i*S + S + O)`` (S = ``frames_per_segment``, O = ``overlap_frames``), clipped to the video;
there are ``max(1, ceil((F - O) / S))`` segments, the last one possibly shorter. A frame's position
table row (``owned_frames``) belongs to one segment: segment i owns ``[i*S, (i+1)*S)``, the last one
everything from ``i*S`` to the end.

The TTT layer reads ``[txt_0 | vid_0 | txt_1 | vid_1 | ...]`` (``interleave``), each frame exactly
once. As in the paper's code, the video chunks (``ttt_chunk_frames``) are S frames each and the
frames beyond n*S (the trailing overlap frames: 253 = 21*12 + 1) go to the *first* chunk; when the
video is shorter than n*S the last chunk is short. The backward direction is the same computation
on ``rev`` of the sequence (video tokens flipped as a whole, text chunks in reverse order, tokens
inside a chunk keeping their order): ``interleave(rev(x))``, with the same chunk sizes counted on the
flipped video, so there the extra frames fall to the chunk of the original *last* segment
(``interleave(..., reverse=True)``). The TTT's RoPE is applied by position in the sequence it
reads, so the rotation rows in TTT order are the same for both directions (``rope_order``): a token
at latent (t, h, w) is rotated as (T-1-t, H-1-h, W-1-w) in the backward direction. All of these
are permutations, built once per frame count as index tensors, so applying one is a gather.

Exported graphs (``tttgraph.export``) must compute these indices from the symbolic sequence length
instead, so that one file runs at every frame count: within :func:`indices_in_graph`, a symbolic
frame count selects the graph-built versions below (affine functions of ``arange``, exported as
``Range``/``Gather``/``ScatterElements``). They assume whole segments, ``F = S * n + O`` token frames
and n text chunks, which is the frame rule export imposes; plain ints keep the cached constants.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from tttgraph.errors import TTTGraphError


class _IndexMode:
    """Whether index tensors over symbolic sizes are built in the graph (a plain class attribute:
    torch.compile reads it as a guarded constant, where it could not trace a ContextVar)."""

    in_graph = False


@contextlib.contextmanager
def indices_in_graph() -> Iterator[None]:
    """Within the block, index tensors over a symbolic frame count are built in the graph (export)."""
    before, _IndexMode.in_graph = _IndexMode.in_graph, True
    try:
        yield
    finally:
        _IndexMode.in_graph = before


def in_graph(size) -> bool:
    """True when ``size`` is symbolic inside :func:`indices_in_graph`: build indices in the graph."""
    return _IndexMode.in_graph and not isinstance(size, int)


@dataclass(frozen=True)
class SequenceLayout:
    """Where the text and video tokens of one joint sequence are.

    Attributes:
        text_tokens_per_segment: text tokens per segment (0 for video-only sequences).
        video_tokens_per_frame: tokens of one latent frame (patch grid height x width).
        frames_per_segment: S, latent frames per segment; None means the whole video is one segment.
        overlap_frames: O, frames shared by neighbouring attention windows (the reference uses 1).
        text_first: True if the joint sequence is ``[text | video]``, False for ``[video | text]``.
        global_video: a segment's self-attention reads its own text chunk and *every* frame
            (``TTTConfig.attention_scope="video"``); its queries are still its text chunk and window.
    """

    text_tokens_per_segment: int
    video_tokens_per_frame: int
    frames_per_segment: int | None = None
    overlap_frames: int = 0
    text_first: bool = True
    global_video: bool = False

    def __post_init__(self):
        if self.text_tokens_per_segment < 0:
            raise TTTGraphError(f"text_tokens_per_segment must be >= 0, got {self.text_tokens_per_segment}")
        if self.video_tokens_per_frame < 1:
            raise TTTGraphError(f"video_tokens_per_frame must be >= 1, got {self.video_tokens_per_frame}")
        if self.frames_per_segment is not None and self.frames_per_segment < 1:
            raise TTTGraphError(
                f"frames_per_segment must be >= 1 or None (no segmentation), got {self.frames_per_segment}"
            )
        if self.overlap_frames < 0:
            raise TTTGraphError(f"overlap_frames must be >= 0, got {self.overlap_frames}")

    # ------------------------------------------------------------------ counts

    def num_segments(self, num_frames: int) -> int:
        if in_graph(num_frames):  # whole segments (the export's frame rule)
            s = self.frames_per_segment
            return 1 if s is None else (num_frames - self.overlap_frames) // s
        self._check_frames(num_frames)
        if self.frames_per_segment is None:
            return 1
        s, o = self.frames_per_segment, self.overlap_frames
        return max(1, -(-(num_frames - o) // s))

    def text_tokens(self, num_frames: int) -> int:
        return self.num_segments(num_frames) * self.text_tokens_per_segment

    def video_tokens(self, num_frames: int) -> int:
        return num_frames * self.video_tokens_per_frame

    def total_tokens(self, num_frames: int) -> int:
        return self.text_tokens(num_frames) + self.video_tokens(num_frames)

    def infer_num_frames(self, total_tokens: int) -> int:
        """The frame count whose joint sequence has ``total_tokens`` tokens (it is unique)."""
        if in_graph(total_tokens):
            return frames_and_segments(self, total_tokens)[0]
        for frames in range(1, total_tokens // self.video_tokens_per_frame + 1):
            if self.total_tokens(frames) == total_tokens:
                return frames
        raise TTTGraphError(
            f"a sequence of {total_tokens} tokens fits no frame count of {self}: it must hold "
            f"num_segments(F) * {self.text_tokens_per_segment} text tokens plus F * "
            f"{self.video_tokens_per_frame} video tokens; check the layout or pass num_frames"
        )

    def attention_windows(self, num_frames: int) -> list[tuple[int, int]]:
        """Frame range ``[start, stop)`` each segment attends over (neighbours share O frames)."""
        n = self.num_segments(num_frames)
        if self.frames_per_segment is None:
            return [(0, num_frames)]
        s, o = self.frames_per_segment, self.overlap_frames
        return [(i * s, min(i * s + s + o, num_frames)) for i in range(n)]

    def owned_frames(self, num_frames: int) -> list[tuple[int, int]]:
        """Disjoint frame range ``[start, stop)`` of each segment for its position table rows."""
        n = self.num_segments(num_frames)
        if self.frames_per_segment is None:
            return [(0, num_frames)]
        s = self.frames_per_segment
        return [(i * s, (i + 1) * s if i < n - 1 else num_frames) for i in range(n)]

    def ttt_chunk_frames(self, num_frames: int) -> list[tuple[int, int]]:
        """Frame range ``[start, stop)`` of each segment's video chunk in the forward TTT sequence.

        S frames each; the frames beyond ``n * S`` go to the first chunk (the paper's
        ``get_interleave_offsets``), a video shorter than ``n * S`` has a short last chunk.
        """
        n = self.num_segments(num_frames)
        if self.frames_per_segment is None or n == 1:
            return [(0, num_frames)]
        s = self.frames_per_segment
        extra = max(0, num_frames - n * s)
        bounds = [0] + [min(extra + i * s, num_frames) for i in range(1, n)] + [num_frames]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    # ------------------------------------------------------------------ split / join

    def split(self, x: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
        """[B, N, C] joint sequence -> (text [B, Nt, C], video [B, Nv, C])."""
        self._check_tokens(x, num_frames)
        nt = self.text_tokens(num_frames)
        if self.text_first:
            return x[:, :nt], x[:, nt:]
        return x[:, -nt:] if nt else x[:, :0], x[:, : x.shape[1] - nt]

    def join(self, text: Tensor, video: Tensor) -> Tensor:
        return torch.cat([text, video] if self.text_first else [video, text], dim=1)

    # ------------------------------------------------------------------ permutations

    def interleave(self, x: Tensor, num_frames: int, reverse: bool = False) -> Tensor:
        """Joint sequence [B, N, C] -> TTT order ``[txt_0 | vid_0 | txt_1 | vid_1 | ...]``.

        With ``reverse=True``, the TTT order of ``rev(x)``:
        ``[txt_{n-1} | flip(last frames) | txt_{n-2} | ...]``, its video cut into ``ttt_chunk_frames``
        sizes counted from the end of the video.
        """
        self._check_tokens(x, num_frames)
        return x.index_select(1, self.interleave_index(num_frames, x.device, reverse))

    def deinterleave(self, seq: Tensor, num_frames: int, reverse: bool = False) -> Tensor:
        """Inverse of :meth:`interleave` (with the same ``reverse``)."""
        self._check_tokens(seq, num_frames)
        return seq.index_select(1, self.deinterleave_index(num_frames, seq.device, reverse))

    def reverse(self, x: Tensor, num_frames: int) -> Tensor:
        """``rev`` in joint-sequence order: video tokens flipped, text chunks flipped (its own inverse)."""
        self._check_tokens(x, num_frames)
        return x.index_select(1, self.reverse_index(num_frames, x.device))

    def interleave_index(self, num_frames: int, device=None, reverse: bool = False) -> Tensor:
        """[N] indices into the joint sequence, in TTT order (of ``rev`` if ``reverse``)."""
        if in_graph(num_frames):
            return _inverse_positions(self.deinterleave_index(num_frames, device, reverse))
        return _placed_index(self, num_frames, reverse, False, _device(device))

    def rope_order(self, num_frames: int, device=None) -> Tensor:
        """[N] rows of the joint-order RoPE table for the tokens in TTT order, in both directions.

        The TTT rotates the video part of the sequence it reads by position in that sequence; the
        backward direction reads ``rev(x)``, whose video tokens sit where the forward direction's do.
        """
        return self.interleave_index(num_frames, device)

    def deinterleave_index(self, num_frames: int, device=None, reverse: bool = False) -> Tensor:
        """[N] indices into the TTT-order sequence that restore joint-sequence order."""
        if in_graph(num_frames):
            n = self.num_segments(num_frames)
            return interleave_positions(self, num_frames, n, reverse).to(_device(device))
        return _placed_index(self, num_frames, reverse, True, _device(device))

    def reverse_index(self, num_frames: int, device=None) -> Tensor:
        """[N] indices into the joint sequence of ``rev`` (joint-sequence order)."""
        return _reverse_index(self, num_frames).to(device)

    def video_mask(self, num_frames: int) -> Tensor:
        """[N] bool, True at video tokens of the joint sequence."""
        nt, nv = self.text_tokens(num_frames), self.video_tokens(num_frames)
        parts = [torch.zeros(nt, dtype=torch.bool), torch.ones(nv, dtype=torch.bool)]
        return torch.cat(parts if self.text_first else parts[::-1])

    # ------------------------------------------------------------------ checks

    def _check_frames(self, num_frames: int) -> None:
        if not isinstance(num_frames, int) or num_frames < 1:
            raise TTTGraphError(f"num_frames must be an int >= 1, got {num_frames!r}")

    def _check_tokens(self, x: Tensor, num_frames: int) -> None:
        if in_graph(num_frames):  # the export's frame rule holds the sizes together
            return
        expected = self.total_tokens(num_frames)
        if x.dim() != 3 or x.shape[1] != expected:
            raise TTTGraphError(
                f"expected a joint sequence [B, {expected}, C] for {num_frames} frames "
                f"({self.text_tokens(num_frames)} text + {self.video_tokens(num_frames)} video tokens), "
                f"got shape {tuple(x.shape)}"
            )


def _offsets(layout: SequenceLayout, num_frames: int) -> tuple[int, int]:
    """Start of the text part and of the video part inside the joint sequence."""
    nt, nv = layout.text_tokens(num_frames), layout.video_tokens(num_frames)
    return (0, nt) if layout.text_first else (nv, 0)


@functools.lru_cache(maxsize=128)
def _interleave_index(layout: SequenceLayout, num_frames: int, reverse: bool) -> Tensor:
    if reverse:  # the forward interleave of rev(x): rev(x)[i] = x[rev[i]]
        return _reverse_index(layout, num_frames)[_interleave_index(layout, num_frames, False)]
    t0, v0 = _offsets(layout, num_frames)
    lt, tpf = layout.text_tokens_per_segment, layout.video_tokens_per_frame
    parts = []
    for i, (start, stop) in enumerate(layout.ttt_chunk_frames(num_frames)):
        parts.append(torch.arange(t0 + i * lt, t0 + (i + 1) * lt))
        parts.append(torch.arange(v0 + start * tpf, v0 + stop * tpf))
    return torch.cat(parts)


@functools.lru_cache(maxsize=64)
def _reverse_index(layout: SequenceLayout, num_frames: int) -> Tensor:
    t0, v0 = _offsets(layout, num_frames)
    lt, n = layout.text_tokens_per_segment, layout.num_segments(num_frames)
    text = torch.cat([torch.arange(t0 + i * lt, t0 + (i + 1) * lt) for i in reversed(range(n))])
    video = torch.arange(v0 + layout.video_tokens(num_frames) - 1, v0 - 1, -1)
    return torch.cat([text, video] if layout.text_first else [video, text])


def _inverse(index: Tensor) -> Tensor:
    inv = torch.empty_like(index)
    inv[index] = torch.arange(index.numel(), device=index.device)
    return inv


def _device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


@functools.lru_cache(maxsize=128)
def _placed_index(layout: SequenceLayout, num_frames: int, reverse: bool, inverse: bool,
                  device: torch.device) -> Tensor:
    """The (inverse) TTT-order index, built and moved to ``device`` once: every TTT call reads it twice."""
    index = _interleave_index(layout, num_frames, reverse)
    return (_inverse(index) if inverse else index).to(device)


# ------------------------------------------------------------------ built in the graph (export)


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


def _inverse_positions(positions: Tensor) -> Tensor:
    return torch.zeros_like(positions).scatter(0, positions, torch.arange(positions.numel()))
