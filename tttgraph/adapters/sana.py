"""Sana-Video: linear self-attention over the video, text through (softmax) cross-attention. ``[B, C, F, H, W]``.

The self-attention (``transformer_blocks.*.attn1``, ``SanaLinearAttnProcessor3_0``) is ReLU linear
attention, not an SDPA call: its TTT layer reads the module's output (``module_attention``), and the
attention itself stays global under segments (each segment's frames still see every frame there);
the cross-attention to the prompt is SDPA and is segmented (one text chunk per segment).
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class SanaVideoAdapter(VideoAdapter):
    name = "sana-video"
    model_classes = ("SanaVideoTransformer3DModel",)
    dynamic_frames = True
    order = "video_only"
    module_attention = ("transformer_blocks.*.attn1",)

    def patch_size(self, model):
        return tuple(model.config.patch_size)
