"""SANA-WM's LTX-2 refiner: video-only self-attention over packed tokens, text through cross-attention.

``hidden_states`` is ``[B, N, C]``: the tokens of the active autoregressive block of frames, frame-major, with the
grid in no input (the pipeline turns it into ``video_rotary_emb`` itself); with a ``kv_cache`` the self-attention
also reads the cached K/V of an attention sink and the blocks before it. Without the grid, the layout is one packed
token frame of N tokens (``tttgraph/adapters/_packed.py``): TTT layers without RoPE, no segments. Who knows the grid
registers ``SanaWMRefinerAdapter(grid=(h, w))`` (``tttgraph.register_adapter``): the layout is then F = N / (h * w)
frames of h x w tokens, and segments apply (with ``kv_cache_mode=None``, where the attention reads the block alone).
"""

from __future__ import annotations

from tttgraph.adapters._packed import PackedAdapter, packed_length, stream_length
from tttgraph.adapters.base import TokenLayout
from tttgraph.errors import LayoutInferenceError


class SanaWMRefinerAdapter(PackedAdapter):
    name = "sana-wm-refiner"
    model_classes = ("SanaWMLTX2RefinerTransformer3DModel",)
    text_inputs = {}

    def __init__(self, grid: tuple[int, int] | None = None):
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.segments_reason = "" if grid is not None else (
            "its packed tokens [B, N, C] carry no frame grid (no input gives it); register "
            "tttgraph.adapters.sana_wm_refiner.SanaWMRefinerAdapter(grid=(latent_height, latent_width)) to segment it"
        )

    def packed_tokens(self, model, inputs) -> int:
        return packed_length(self.name, inputs, "hidden_states", "[B, N, C]", 1, "SANA-WM refiner")

    def text_tokens(self, model, inputs) -> int:
        return stream_length(inputs)

    def layout(self, model, inputs) -> TokenLayout:
        if self.grid is None:
            return super().layout(model, inputs)
        n, (h, w) = self.packed_tokens(model, inputs), self.grid
        if n % (h * w):
            raise LayoutInferenceError(
                f"{self.name}: {n} tokens are no whole number of {h}x{w} frames; register the adapter with the "
                "latent grid of these inputs (SanaWMRefinerAdapter(grid=(latent_height, latent_width)))"
            )
        return TokenLayout(
            family=self.name, batch_size=self.batch_size(model, inputs), text_tokens=self.text_tokens(model, inputs),
            latent_frames=n // (h * w), frames=n // (h * w), tokens_per_frame=h * w, grid=(h, w), patch_size=(1, 1, 1),
            order="video_only",
        )
