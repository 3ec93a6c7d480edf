"""SANA-WM: camera-controlled Sana video blocks, text through cross-attention. ``[B, C, F, H, W]``.

Each block's attention (``blocks.*.attn``) is two branches summed before one output projection: the main branch and
a camera branch in UCPE ray space (``cam_attn``). In most blocks both are gated-delta-net linear recurrences; every
``softmax_every_n``-th block computes both with SDPA instead, casting q/k/v to bf16 around it even in an fp32 model.
The TTT layer reads the whole attention module's output ``[B, N, C]`` (``module_attention``), after both branches
and the projection, in the model's dtype; the SDPA calls inside get no TTT layer of their own. Under segments those
SDPA calls are segment-local, while the recurrences stay global (every frame still reaches the others there).

``timestep`` is per frame, ``[B, 1, F]``; ``encoder_hidden_states`` ``[B, 1, L, D]`` with its mask ``[B, L]``;
``camera_conditions`` ``[B, F, 20]`` (camera-to-world matrix and intrinsics per frame).
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter
from tttgraph.adapters.base import mark


class SanaWMAdapter(VideoAdapter):
    name = "sana-wm"
    model_classes = ("SanaWMTransformer3DModel",)
    dynamic_frames = True
    order = "video_only"
    module_attention = ("blocks.*.attn",)
    text_inputs = {"encoder_hidden_states": (2,), "encoder_attention_mask": (1,), "mask": (1,)}
    frame_inputs = {"timestep": (2,), "camera_conditions": (1,), "frame_valid_mask": (1,)}

    def patch_size(self, model):
        return tuple(model.config.patch_size)

    def text_tokens(self, model, inputs) -> int:
        text = inputs.get(self.text_input)
        return 0 if text is None else int(text.shape[-2])

    def frame_dynamic_shapes(self, model, inputs):
        spec = super().frame_dynamic_shapes(model, inputs)
        if inputs.get("chunk_plucker") is not None:
            mark(spec, "chunk_plucker", 2)
        return spec
