"""Kandinsky 5 and 6: video-only self-attention, text through cross-attention; channels-last latents.

hidden_states ``[B, F, H, W, C]`` (the pipeline's latents, with the visual condition and its mask
concatenated on C for image-to-video); patches ``config.patch_size`` = (t, h, w). The video RoPE
positions may come as an input: ``visual_rope_pos`` ``[arange(F), arange(H/p), arange(W/p)]`` (its
first entry scales with the frame count; Kandinsky 6 builds it when it is None). Kandinsky 5 takes
``text_rope_pos`` ``[L]``; with ``sparse_params`` (NABLA attention, ``to_fractal``) it orders its video
tokens in spatial blocks, not frame-major: refused. Kandinsky 6 adds an audio stream
(``audio_hidden_states`` ``[B, La, C]``) with its own attentions and audio<->video cross-attentions;
those are not over the video's frames and stay global, as LTX-2's do.

Kandinsky 6 SR (video super-resolution) takes no text: ``hidden_states`` ``[B, F, H, W, 2C+1]`` and ``timestep``.
Its self-attention is NABLA sparse FlexAttention (a ``BlockMask`` built from q and k inside ``forward``), not SDPA:
its TTT layer reads the module's output (``module_attention``) and the attention stays as it is (every frame
still sees the others there). Its tokens are frame-major but grouped in 8x8 blocks within a frame, so its layout
is not ``raster`` and the TTT layers get no RoPE. FlexAttention has no CPU backward: the capture runs with the
parameters' ``requires_grad`` off.
"""

from __future__ import annotations

import contextlib
import dataclasses

from torch.export import Dim

from tttgraph.adapters._video import VideoAdapter
from tttgraph.adapters.base import TokenLayout, parameters_frozen
from tttgraph.errors import LayoutInferenceError


class KandinskyAdapter(VideoAdapter):
    name = "kandinsky"
    model_classes = ("Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel")
    dynamic_frames = True
    frame_axis = 1
    order = "video_only"
    text_inputs = {"encoder_hidden_states": (1,), "encoder_attention_mask": (1,), "text_rope_pos": (0,)}
    frame_inputs = {"visual_token_type_ids": (1,)}

    def patch_size(self, model):
        return tuple(model.config.patch_size)

    def frame_dynamic_shapes(self, model, inputs):
        spec = super().frame_dynamic_shapes(model, inputs)
        pos = inputs.get("visual_rope_pos")
        if isinstance(pos, (list, tuple)) and len(pos) == 3:
            spec["visual_rope_pos"] = type(pos)([{0: Dim.AUTO}, None, None])
        return spec

    def layout(self, model, inputs) -> TokenLayout:
        sparse = inputs.get("sparse_params")
        if isinstance(sparse, dict) and sparse.get("to_fractal"):
            raise LayoutInferenceError(
                "Kandinsky 5 with sparse_params['to_fractal'] (NABLA attention) orders its video tokens in spatial "
                "blocks, not frame by frame, which segment-local attention and the TTT layer need; transform and run "
                "it with attention_type='regular' (sparse_params=None)"
            )
        video = self._video(inputs)
        p_t, p_h, p_w = self.patch_size(model)
        h, w = int(video.shape[2]) // p_h, int(video.shape[3]) // p_w
        frames = int(video.shape[1])
        return TokenLayout(
            family=self.name, batch_size=int(video.shape[0]), text_tokens=self.text_tokens(model, inputs),
            latent_frames=frames, frames=frames // p_t, tokens_per_frame=h * w, grid=(h, w),
            patch_size=(p_t, p_h, p_w), order=self.order,
        )


class Kandinsky6SRAdapter(KandinskyAdapter):
    name = "kandinsky6-sr"
    model_classes = ("Kandinsky6SRTransformer3DModel",)
    text_inputs = {}
    frame_inputs = {}
    module_attention = ("visual_transformer_blocks.*.self_attention",)

    def text_tokens(self, model, inputs) -> int:
        return 0

    def layout(self, model, inputs) -> TokenLayout:
        return dataclasses.replace(super().layout(model, inputs), raster=False)

    @contextlib.contextmanager
    def capture_patches(self, model):
        with parameters_frozen(model), super().capture_patches(model):
            yield
