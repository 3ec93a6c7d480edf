"""HunyuanVideo: joint self-attention over ``[video | text]`` in double- and single-stream blocks.

hidden_states ``[B, C, F, H, W]``. The text token refiner runs text-only self-attention first;
single-stream blocks have no attention out-projection.
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class HunyuanVideoAdapter(VideoAdapter):
    name = "hunyuanvideo"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    dynamic_frames = True
    order = "video_first"
