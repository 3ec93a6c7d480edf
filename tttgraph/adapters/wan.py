"""Wan 2.1: video-only self-attention, text through cross-attention. ``[B, C, F, H, W]``."""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class WanAdapter(VideoAdapter):
    name = "wan2.1"
    model_classes = ("WanTransformer3DModel",)
    dynamic_frames = True
    order = "video_only"

    def patch_size(self, model):
        return tuple(model.config.patch_size)
