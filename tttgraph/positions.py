"""Absolute temporal position tables made segment-relative (around the capture, and per call in place).

Some families add a learned or sincos table with one row per frame (Latte: ``temp_pos_embed``,
``[1, video_length, C]``), so the graph only runs at the table's frame count. With segments, each
frame gets the row of its position inside its own segment (frame ``f`` of a segment whose
attention window starts at frame ``s`` reads row ``f - s``), which is what the pretrained model saw
in a clip of one segment's length, and any number of segments fits the table.

The swap happens on the model for the duration of the capture only (``segment_relative_positions``
is a context manager); the captured graph keeps the new table, the user's model gets its own back.
Families declare their tables on their adapter (``ModelAdapter.temporal_position_tables``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout

__all__ = ["relative_frame_positions", "segment_relative_positions"]


def relative_frame_positions(layout: SequenceLayout, num_frames: int) -> list[int]:
    """For each frame, its index inside the attention window of the segment that owns it."""
    windows = layout.attention_windows(num_frames)
    positions = []
    for i, (start, stop) in enumerate(layout.owned_frames(num_frames)):
        positions.extend(f - windows[i][0] for f in range(start, stop))
    return positions


@contextlib.contextmanager
def segment_relative_positions(model: nn.Module, tables: tuple[str, ...], layout: SequenceLayout | None,
                               num_frames: int):
    """Within the block, each named ``[1, L, C]`` frame table of ``model`` has ``num_frames`` rows.

    Yields the number of tables rewritten. Raises TTTGraphError when the frames don't fit a table.
    """
    swapped = []
    try:
        for path in tables:
            owner_path, _, name = path.rpartition(".")
            owner = model.get_submodule(owner_path) if owner_path else model
            table = getattr(owner, name)
            rows = table.shape[1]
            if layout is None or layout.frames_per_segment is None or layout.global_video:
                if num_frames > rows:  # fewer frames: the model reads its table as it always does
                    fix = ('attention_scope="segment" (with attention_scope="video" every frame keeps its absolute '
                           "position)" if layout is not None and layout.global_video else "segment the video")
                    raise TTTGraphError(
                        f"{type(model).__name__}.{path} holds positions for {rows} frames, the inputs have "
                        f"{num_frames}; use {fix} (segment_latent_frames + segment_overlap_frames <= {rows}) "
                        f"to reuse the table per segment"
                    )
                continue
            positions = relative_frame_positions(layout, num_frames)
            if max(positions) >= rows:
                raise TTTGraphError(
                    f"segments of {layout.frames_per_segment} + {layout.overlap_frames} frames need "
                    f"{max(positions) + 1} rows of {type(model).__name__}.{path}, which has {rows}; "
                    "use shorter segments"
                )
            persistent = name not in owner._non_persistent_buffers_set
            owner.register_buffer(name, table[:, torch.tensor(positions, device=table.device)], persistent=persistent)
            swapped.append((owner, name, table, persistent))
        yield len(swapped)
    finally:
        for owner, name, table, persistent in swapped:
            owner.register_buffer(name, table, persistent=persistent)
