"""Allegro: video-only self-attention with 3-D RoPE, text through cross-attention.

hidden_states ``[B, C, F, H, W]``; the pipeline's ``image_rotary_emb`` is
``((freqs_t, freqs_h, freqs_w), (grid_t, grid_h, grid_w))`` with each ``freqs_t`` part
``[F, d/3]`` and each grid ``[1, F*h*w]``.
"""

from __future__ import annotations

from torch.export import Dim

from tttgraph.adapters._video import VideoAdapter


class AllegroAdapter(VideoAdapter):
    name = "allegro"
    model_classes = ("AllegroTransformer3DModel",)
    dynamic_frames = True
    order = "video_only"

    def frame_dynamic_shapes(self, model, inputs):
        spec = super().frame_dynamic_shapes(model, inputs)
        rope = inputs.get("image_rotary_emb")
        if rope is not None:
            (freqs_t, freqs_h, freqs_w), grids = rope
            auto0 = tuple({0: Dim.AUTO} for _ in freqs_t)
            static = tuple(tuple(None for _ in f) for f in (freqs_h, freqs_w))
            spec["image_rotary_emb"] = ((auto0, *static), tuple({1: Dim.AUTO} for _ in grids))
        return spec
