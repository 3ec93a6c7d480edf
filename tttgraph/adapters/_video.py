"""Shared adapter logic for models whose latents arrive as one 5-D video tensor.

Subclasses set where the frame axis is and how text reaches the video tokens; sizes come from
the model's config (patch sizes) and the example inputs (frames, height, width, text length).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tttgraph.adapters.base import ModelAdapter, Order, TokenLayout, mark, none_spec
from tttgraph.errors import LayoutInferenceError


class VideoAdapter(ModelAdapter):
    """``hidden_states`` is ``[B, C, F, H, W]`` (``frame_axis=2``) or ``[B, F, C, H, W]`` (1)."""

    frame_axis: int = 2
    order: Order = "video_only"
    text_input: str = "encoder_hidden_states"
    # Inputs (besides hidden_states) whose listed dims scale with the frame count.
    frame_inputs: Mapping[str, tuple[int, ...]] = {}

    def patch_size(self, model: torch.nn.Module) -> tuple[int, int, int]:
        """(temporal, height, width) patch of the model's patch embedding."""
        cfg = model.config
        return (getattr(cfg, "patch_size_t", None) or 1, cfg.patch_size, cfg.patch_size)

    def _video(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        video = inputs.get("hidden_states")
        if not isinstance(video, torch.Tensor) or video.dim() != 5:
            raise LayoutInferenceError(
                f"{self.name} adapter expects hidden_states as a 5-D latent video tensor, got "
                f"{getattr(video, 'shape', type(video).__name__)}; pass the model's own forward inputs "
                f"(tttgraph.models.example_inputs builds them for the tiny models)"
            )
        return video

    def latent_frames(self, model, inputs) -> int:
        return int(self._video(inputs).shape[self.frame_axis])

    def text_tokens(self, model, inputs) -> int:
        text = inputs.get(self.text_input)
        return 0 if text is None else int(text.shape[1])

    def frame_dynamic_shapes(self, model, inputs) -> dict[str, Any]:
        spec = none_spec(inputs)
        mark(spec, "hidden_states", self.frame_axis)
        for name, dims in self.frame_inputs.items():
            if inputs.get(name) is not None:
                mark(spec, name, *dims)
        return spec

    def layout(self, model, inputs) -> TokenLayout:
        video = self._video(inputs)
        p_t, p_h, p_w = self.patch_size(model)
        h, w = video.shape[-2] // p_h, video.shape[-1] // p_w
        frames = self.latent_frames(model, inputs)
        return TokenLayout(
            family=self.name, batch_size=int(video.shape[0]), text_tokens=self.text_tokens(model, inputs),
            latent_frames=frames, frames=frames // p_t, tokens_per_frame=h * w, grid=(h, w),
            patch_size=(p_t, p_h, p_w), order=self.order,
        )
