"""diffusers' ``TransformerTemporalModel``: attention over time only, frames folded into the batch.

``hidden_states`` is ``[B * F, C, H, W]`` and the frame count is the Python argument ``num_frames``;
every pixel is a token (no patching) and each of the ``H * W`` positions attends over its F frames.
The model encodes this layout in its code (an argument, not a tensor axis), so it has an adapter.
"""

from __future__ import annotations

from tttgraph.adapters.base import ModelAdapter, TokenLayout, none_spec
from tttgraph.errors import LayoutInferenceError


class TemporalAdapter(ModelAdapter):
    name = "temporal"
    model_classes = ("TransformerTemporalModel",)
    dynamic_frames = False
    frames_reason = "TransformerTemporalModel takes its frame count as the Python argument num_frames"

    def latent_frames(self, model, inputs) -> int:
        return int(inputs.get("num_frames", 1) or 1)

    def frame_dynamic_shapes(self, model, inputs):
        return none_spec(inputs)

    def layout(self, model, inputs) -> TokenLayout:
        video = inputs.get("hidden_states")
        frames = self.latent_frames(model, inputs)
        if getattr(video, "dim", lambda: 0)() != 4 or video.shape[0] % frames:
            raise LayoutInferenceError(
                f"TransformerTemporalModel takes hidden_states [B * num_frames, C, H, W]; got "
                f"{getattr(video, 'shape', type(video).__name__)} with num_frames={frames}"
            )
        text = inputs.get("encoder_hidden_states")
        h, w = int(video.shape[-2]), int(video.shape[-1])
        return TokenLayout(
            family=self.name, batch_size=int(video.shape[0]) // frames,
            text_tokens=0 if text is None else int(text.shape[1]), latent_frames=frames, frames=frames,
            tokens_per_frame=h * w, grid=(h, w), patch_size=(1, 1, 1), order="video_only",
        )
