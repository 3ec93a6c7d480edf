"""CogVideoX 1.0 and 1.5: joint self-attention over ``[text | video]``.

hidden_states ``[B, F, C, H, W]``; the pipeline's RoPE tables ``(cos, sin)`` are
``[F / p_t * H/p * W/p, head_dim]`` and scale with the frame count. 1.5 patches 2 frames.
"""

from __future__ import annotations

import contextlib

import torch

from tttgraph.adapters._video import VideoAdapter


class CogVideoXAdapter(VideoAdapter):
    name = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    dynamic_frames = True
    frame_axis = 1
    order = "text_first"
    frame_inputs = {"image_rotary_emb": (0,)}

    @contextlib.contextmanager
    def capture_patches(self, model: torch.nn.Module):
        """CogVideoX 1.0's sincos table, rebuilt when the frames differ from ``sample_frames``, is written
        through ``.data``, which torch.export cannot trace; the same table is built without it here."""
        embed = getattr(model, "patch_embed", None)
        if not hasattr(embed, "_get_positional_embeddings"):
            yield
            return
        embed._get_positional_embeddings = lambda *a, **k: _traceable_table(embed, *a, **k)
        try:
            yield
        finally:
            del embed._get_positional_embeddings


def _traceable_table(embed, sample_height: int, sample_width: int, sample_frames: int, device=None):
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    frames = (sample_frames - 1) // embed.temporal_compression_ratio + 1
    grid = (sample_width // embed.patch_size, sample_height // embed.patch_size)
    table = get_3d_sincos_pos_embed(embed.embed_dim, grid, frames, embed.spatial_interpolation_scale,
                                    embed.temporal_interpolation_scale, device=device, output_type="pt")
    table = table.flatten(0, 1)[None]
    text = table.new_zeros(1, embed.max_text_seq_length, embed.embed_dim)
    return torch.cat([text, table], dim=1)
