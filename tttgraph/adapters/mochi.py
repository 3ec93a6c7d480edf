"""Mochi: joint self-attention over ``[video | valid text]``. ``[B, C, F, H, W]``.

Mochi's attention keeps only the text tokens its mask marks valid (``nonzero``: a data-dependent
length, one SDPA call per sample). tttgraph captures it with every token valid and, in the edited
model, keeps every token and masks the invalid ones out of the keys (``valid_text_mask``), which
gives the valid tokens the same outputs and keeps the sequence layout fixed.
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter


class MochiAdapter(VideoAdapter):
    name = "mochi"
    model_classes = ("MochiTransformer3DModel",)
    dynamic_frames = True
    order = "video_first"
    valid_text_mask = "encoder_attention_mask"
