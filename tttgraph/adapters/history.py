"""HunyuanVideo-Framepack and Helios: the frames being denoised follow their history latents in one sequence.

Each call denoises one section of frames ``[B, C, F, H, W]`` given history latents of the frames before it,
patchified coarser the older they are and packed *before* the section's tokens:

- Framepack: ``[4x history | 2x history | clean latents | frames]`` (kernels (4, 8, 8), (2, 4, 4), (1, 2, 2),
  and ``(patch_size_t, patch_size, patch_size)``), then ``[image | text]`` in the joint attention
  (``"video_first"``);
- Helios: ``[long | mid | short history | frames]`` (kernels 4x, 2x and 1x ``patch_size``); the text enters
  through cross-attention.

A history enters only with its frame indices (``indices_latents_clean``, ...), as in the models' forward. The
packed sequence is several grids (``tttgraph/adapters/_packed.py``): the TTT reads it in this order, without
RoPE. Segments do not apply: one call is one section, generated autoregressively after the sections in its history,
and its attention to the history is how a section sees the video before it.
"""

from __future__ import annotations

import math

from tttgraph.adapters._packed import PackedAdapter, stream_length
from tttgraph.errors import LayoutInferenceError

_SECTION = "each call denoises one section of frames after its history latents, which its attention reads"


def patch_tokens(latents, kernel: tuple[int, int, int], padded: bool) -> int:
    """Tokens of a ``[B, C, T, H, W]`` latent patchified by a Conv3d of stride ``kernel`` (after the models'
    replicate padding to a multiple of ``kernel`` when ``padded``)."""
    sizes = latents.shape[2:]
    if padded:
        return math.prod(-(-int(s) // k) for s, k in zip(sizes, kernel, strict=True))
    return math.prod(int(s) // k for s, k in zip(sizes, kernel, strict=True))


def _video(name: str, inputs):
    video = inputs.get("hidden_states")
    if getattr(video, "ndim", None) != 5:
        raise LayoutInferenceError(
            f"{name} expects hidden_states as a 5-D latent video [B, C, F, H, W], got "
            f"{getattr(video, 'shape', type(video).__name__)}; pass the model's own forward inputs"
        )
    return video


class FramepackAdapter(PackedAdapter):
    name = "hunyuanvideo-framepack"
    model_classes = ("HunyuanVideoFramepackTransformer3DModel",)
    order = "video_first"
    segments_reason = _SECTION
    text_inputs = {}  # the text is the prompt of the section, whatever its frame count

    def packed_tokens(self, model, inputs) -> int:
        cfg = model.config
        patch = (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
        tokens = patch_tokens(_video(self.name, inputs), patch, padded=False)
        history = (("latents_clean", (1, 2, 2), False), ("latents_history_2x", (2, 4, 4), True),
                   ("latents_history_4x", (4, 8, 8), True))
        for name, kernel, padded in history:
            if inputs.get(name) is not None and inputs.get(f"indices_{name}") is not None:
                tokens += patch_tokens(inputs[name], kernel, padded)
        return tokens

    def text_tokens(self, model, inputs) -> int:
        # The image tokens come first, then the prompt (the models' forward pads neither).
        return stream_length(inputs, "image_embeds") + stream_length(inputs)


class HeliosAdapter(PackedAdapter):
    name = "helios"
    model_classes = ("HeliosTransformer3DModel",)
    order = "video_only"
    segments_reason = _SECTION
    text_inputs = {}

    def packed_tokens(self, model, inputs) -> int:
        patch = tuple(model.config.patch_size)
        tokens = patch_tokens(_video(self.name, inputs), patch, padded=False)
        history = (("short", 1, False), ("mid", 2, True), ("long", 4, True))
        for name, scale, padded in history:
            latents = inputs.get(f"latents_history_{name}")
            if latents is not None and inputs.get(f"indices_latents_history_{name}") is not None:
                tokens += patch_tokens(latents, tuple(scale * p for p in patch), padded)
        return tokens

    def text_tokens(self, model, inputs) -> int:
        return stream_length(inputs)
