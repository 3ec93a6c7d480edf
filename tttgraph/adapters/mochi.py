"""Mochi: joint self-attention over ``[video | valid text]``. ``[B, C, F, H, W]``.

Mochi keeps only the text tokens its mask marks valid (``nonzero``, a data-dependent length),
so the text count is the number of ones in ``encoder_attention_mask`` (the first sample's;
samples of a batch with different prompt lengths give different sequence lengths).
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class MochiAdapter(VideoAdapter):
    name = "mochi"
    model_classes = ("MochiTransformer3DModel",)
    dynamic_frames = True
    order = "video_first"

    def text_tokens(self, model, inputs):
        mask = inputs.get("encoder_attention_mask")
        if mask is None:
            return super().text_tokens(model, inputs)
        return int(mask[0].bool().sum())
