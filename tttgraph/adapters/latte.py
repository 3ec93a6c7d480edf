"""Latte: alternating spatial (per frame) and temporal (per patch) self-attention, text through
cross-attention in the spatial blocks. ``[B, C, F, H, W]``.

The frame count is baked in: a temporal position table of ``video_length`` entries is added
(with segments, ``tttgraph/positions.py`` makes it segment-relative so longer videos capture).
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class LatteAdapter(VideoAdapter):
    name = "latte"
    model_classes = ("LatteTransformer3DModel",)
    dynamic_frames = False
    frames_reason = (
        "Latte adds a temporal position table of exactly config.video_length frames, so the "
        "frame count is fixed at capture"
    )
    order = "video_only"
    temporal_position_tables = ("temp_pos_embed",)

    def patch_size(self, model):
        return (1, model.config.patch_size, model.config.patch_size)
