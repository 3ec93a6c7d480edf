"""Per-site token layout: which :class:`SequenceLayout` an attention site's sequence has.

The analysis gives one :class:`TokenLayout` for the model; each site's sequence is one of its
views: the joint text+video sequence, the video alone (text enters by cross-attention), one patch
over time (Latte's temporal attention), or the video queries of a cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from tttgraph.adapters import TokenLayout
from tttgraph.analysis import AttentionSite
from tttgraph.config import TTTConfig
from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout


@dataclass(frozen=True)
class Segmentation:
    """Segments in token frames (latent frames / temporal patch) and text tokens per segment."""

    frames_per_segment: int | None
    overlap_frames: int
    text_tokens_per_segment: int
    global_video: bool = False  # TTTConfig.attention_scope == "video"


def segmentation(cfg: TTTConfig, layout: TokenLayout) -> Segmentation:
    """Convert the config's latent-frame segments to the model's token frames; split its text.

    Raises TTTGraphError when the segments don't fit the temporal patch or the example's text
    does not divide into one chunk per segment.
    """
    patch_t = layout.patch_size[0]
    s, o = cfg.segment_latent_frames, cfg.segment_overlap_frames
    if s is not None and (s % patch_t or o % patch_t):
        raise TTTGraphError(
            f"segment_latent_frames={s} and segment_overlap_frames={o} must be multiples of the model's temporal "
            f"patch size {patch_t} ({layout.family} patches {patch_t} latent frames into one token frame)"
        )
    frames = None if s is None else s // patch_t
    overlap = o // patch_t
    probe = SequenceLayout(0, 1, frames, overlap)
    segments = probe.num_segments(layout.frames)
    if cfg.text_tokens_per_segment is not None:
        per_segment = cfg.text_tokens_per_segment
        if layout.order != "video_only" and per_segment * segments != layout.text_tokens:
            raise TTTGraphError(
                f"text_tokens_per_segment={per_segment} x {segments} segments = {per_segment * segments} text "
                f"tokens, but the example inputs have {layout.text_tokens}; give the model one text chunk per "
                f"segment (repeat a single prompt {segments} times) or change text_tokens_per_segment"
            )
    elif layout.text_tokens % segments:
        raise TTTGraphError(
            f"the example's {layout.text_tokens} text tokens don't split into {segments} segments "
            f"({layout.frames} token frames, segments of {frames}); pass text_tokens_per_segment"
        )
    else:
        per_segment = layout.text_tokens // segments
    return Segmentation(frames, overlap, per_segment, cfg.attention_scope == "video")


def site_layout(site: AttentionSite, layout: TokenLayout, seg: Segmentation) -> SequenceLayout | None:
    """The query sequence of ``site`` as a SequenceLayout, or None if it has no video-frame structure."""
    if site.kind == "joint":
        return SequenceLayout(
            seg.text_tokens_per_segment, layout.tokens_per_frame, seg.frames_per_segment, seg.overlap_frames,
            text_first=layout.order == "text_first", global_video=seg.global_video,
        )  # fmt: skip
    if site.kind == "video" and site.axes == "thw":
        return SequenceLayout(0, layout.tokens_per_frame, seg.frames_per_segment, seg.overlap_frames,
                              global_video=seg.global_video)
    if site.kind == "video" and site.axes == "t":
        return SequenceLayout(0, 1, seg.frames_per_segment, seg.overlap_frames, global_video=seg.global_video)
    if site.kind in ("cross", "text"):
        return SequenceLayout(
            seg.text_tokens_per_segment, layout.tokens_per_frame, seg.frames_per_segment, seg.overlap_frames
        )
    return None
