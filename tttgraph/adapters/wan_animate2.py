"""Wan-Animate 2: Wan blocks over lists of unbatched latents, with a reference K/V cache object among the inputs.

``hidden_states`` and ``condition_latents`` are lists (one per sample) of ``[C, F, H, W]`` latents, joined on C and
patchified by ``config.patch_size``; ``encoder_hidden_states`` a list of ``[L, D]`` prompts, each padded to
``config.text_len`` (the key length of the cross-attention). ``seq_len``, a Python int, is the token count every
sample must have, so the frame count is fixed per capture.

The pipeline calls the model twice per segment of the animation: ``kv_cache_mode="extract"`` runs dense
self-attention (SDPA) over the reference latents and writes each layer's K/V into ``kv_cache`` (a
``WanAnimate2KVCache``); each denoising step (``"cached"``) attends over its own tokens plus the cached reference
tokens of the same frame through a FlexAttention ``BlockMask``. The capture binds the cache object as a constant
(``tttgraph/capture.py``), and the grid sizes the model reads off ``offset_grid_sizes`` and its own grid tensor
(``.item()``, ``.tolist()``) are the example's (``CaptureInfo.branches``). Transform on the extract pass's inputs:
its self-attention is SDPA, which gives each TTT layer its place (after the self-attention's out-projection). The
edited model runs both passes through the model's own forward, the TTT layer after the self-attention in each;
segment-local attention applies to the extract pass's SDPA, while the cached pass's FlexAttention stays global.
"""

from __future__ import annotations

from tttgraph.adapters.base import ModelAdapter, TokenLayout, none_spec
from tttgraph.errors import LayoutInferenceError


class WanAnimate2Adapter(ModelAdapter):
    name = "wan-animate2"
    model_classes = ("WanAnimate2Transformer3DModel",)
    dynamic_frames = False
    frames_reason = "its seq_len input, a Python int, fixes the token count of each call"
    text_inputs = {}  # each prompt is padded to config.text_len

    def _latents(self, inputs):
        latents = inputs.get("hidden_states")
        if not isinstance(latents, (list, tuple)) or not latents or getattr(latents[0], "ndim", None) != 4:
            raise LayoutInferenceError(
                f"{self.name} expects hidden_states as a list of unbatched [C, F, H, W] latents (one per sample), "
                f"got {type(latents).__name__}; pass the WanAnimate2 pipeline's inputs"
            )
        return latents

    def latent_frames(self, model, inputs) -> int:
        return int(self._latents(inputs)[0].shape[1])

    def frame_dynamic_shapes(self, model, inputs):
        return none_spec(inputs)

    def fresh_objects(self, model):
        from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

        return {"kv_cache": WanAnimate2KVCache(len(model.blocks))}

    def layout(self, model, inputs) -> TokenLayout:
        latents = self._latents(inputs)
        p_t, p_h, p_w = model.config.patch_size
        f, h, w = (int(s) for s in latents[0].shape[1:])
        return TokenLayout(
            family=self.name, batch_size=len(latents), text_tokens=int(model.config.text_len), latent_frames=f,
            frames=f // p_t, tokens_per_frame=(h // p_h) * (w // p_w), grid=(h // p_h, w // p_w),
            patch_size=(p_t, p_h, p_w), order="video_only",
        )
