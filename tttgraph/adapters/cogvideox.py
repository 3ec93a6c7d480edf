"""CogVideoX 1.0 and 1.5: joint self-attention over ``[text | video]``.

hidden_states ``[B, F, C, H, W]``; the pipeline's RoPE tables ``(cos, sin)`` are
``[F / p_t * H/p * W/p, head_dim]`` and scale with the frame count. 1.5 patches 2 frames.
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class CogVideoXAdapter(VideoAdapter):
    name = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    dynamic_frames = True
    frame_axis = 1
    order = "text_first"
    frame_inputs = {"image_rotary_emb": (0,)}
