"""Shared adapter logic for models whose attention sequence packs several grids or streams into one.

HunyuanVideo-Framepack and Helios put history latents (downsampled 2x and 4x, or short/mid/long) before the
frames being denoised; JoyImage Edit Plus packs a target and reference images of their own sizes; MiniMax-H3 places
its video, text and audio rows by index tensors. Such a sequence is no single frame-major grid, so the layout is one
token frame of all N packed tokens (``grid`` ``(1, N)``): the TTT layer reads the sequence in the model's own order,
with no RoPE (``raster=False``, its 3D positions would be wrong), and there is no time axis to segment
(:attr:`~tttgraph.adapters.ModelAdapter.segments_reason` says why when a config asks for segments).
"""

from __future__ import annotations

from tttgraph.adapters.base import ModelAdapter, Order, TokenLayout, none_spec
from tttgraph.errors import LayoutInferenceError


def packed_length(adapter: str, inputs, name: str, layout: str, dim: int, pipeline: str) -> int:
    """``inputs[name].shape[dim]``, after checking that the input has as many dims as ``layout`` names
    (e.g. ``"[B, N, C]"``); else a LayoutInferenceError naming the shape found and the pipeline to take inputs from."""
    value = inputs.get(name)
    ndim = len(layout.strip("[]").split(","))
    if getattr(value, "ndim", None) != ndim:
        raise LayoutInferenceError(
            f"{adapter} expects {name} as {layout}, got {getattr(value, 'shape', type(value).__name__)}; pass the "
            f"{pipeline} pipeline's inputs"
        )
    return int(value.shape[dim])


def stream_length(inputs, name: str = "encoder_hidden_states") -> int:
    """Tokens of the optional ``[B, L, D]`` stream ``name`` (0 when it is not given)."""
    value = inputs.get(name)
    return 0 if value is None else int(value.shape[1])


class PackedAdapter(ModelAdapter):
    """Subclasses implement :meth:`packed_tokens` (N per sample) and may override :meth:`text_tokens`."""

    dynamic_frames = False
    frames_reason = "its sequence packs several grids into one: there is no single frame axis to make dynamic"
    order: Order = "video_only"
    patch: tuple[int, int, int] = (1, 1, 1)

    def packed_tokens(self, model, inputs) -> int:
        """N: the packed (non-text) tokens per sample of ``inputs``."""
        raise NotImplementedError

    def text_tokens(self, model, inputs) -> int:
        """Tokens of the text stream that joins the packed tokens in a joint attention (0: cross-attention)."""
        return 0

    def batch_size(self, model, inputs) -> int:
        return int(inputs["hidden_states"].shape[0])

    def latent_frames(self, model, inputs) -> int:
        return 1

    def frame_dynamic_shapes(self, model, inputs):
        return none_spec(inputs)

    def layout(self, model, inputs) -> TokenLayout:
        n = self.packed_tokens(model, inputs)
        return TokenLayout(
            family=self.name, batch_size=self.batch_size(model, inputs), text_tokens=self.text_tokens(model, inputs),
            latent_frames=1, frames=1, tokens_per_frame=n, grid=(1, n), patch_size=self.patch, order=self.order,
            raster=False,
        )
