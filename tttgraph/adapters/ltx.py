"""LTX-Video and LTX-2: video-only self-attention, text through cross-attention.

hidden_states are packed ``[B, F*H*W, C]`` and the grid comes as Python ints
``num_frames``/``height``/``width``, so the frame count is fixed at capture. LTX-2 adds an audio
stream with its own attentions and audio<->video cross-attentions; those are not over the video's
frames and stay as they are (global).
"""

from __future__ import annotations

from tttgraph.adapters.base import ModelAdapter, TokenLayout, none_spec
from tttgraph.errors import LayoutInferenceError


class LTXVideoAdapter(ModelAdapter):
    name = "ltx-video"
    model_classes = ("LTXVideoTransformer3DModel", "LTX2VideoTransformer3DModel")
    dynamic_frames = False
    frames_reason = (
        "LTX-Video takes num_frames/height/width as Python ints that set its RoPE grid, so the "
        "frame count is fixed at capture"
    )

    def latent_frames(self, model, inputs):
        if not isinstance(inputs.get("num_frames"), int):
            raise LayoutInferenceError(
                f"ltx-video needs num_frames as a Python int among the inputs, got "
                f"{inputs.get('num_frames')!r}; pass num_frames/height/width as the LTX pipeline does"
            )
        return inputs["num_frames"] * model.config.patch_size_t

    def frame_dynamic_shapes(self, model, inputs):
        return none_spec(inputs)

    def layout(self, model, inputs):
        cfg = model.config
        frames = self.latent_frames(model, inputs)
        grid = (int(inputs["height"]), int(inputs["width"]))
        text = inputs.get("encoder_hidden_states")
        return TokenLayout(
            family=self.name, batch_size=int(inputs["hidden_states"].shape[0]),
            text_tokens=0 if text is None else int(text.shape[1]), latent_frames=frames,
            frames=frames // cfg.patch_size_t, tokens_per_frame=grid[0] * grid[1], grid=grid,
            patch_size=(cfg.patch_size_t, cfg.patch_size, cfg.patch_size), order="video_only",
        )
