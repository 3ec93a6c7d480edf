"""Cosmos (1.0 and 2.x): video-only self-attention, text through cross-attention. ``[B, C, F, H, W]``.

Patches ``config.patch_size`` = (t, h, w); its learnable positional table holds ``max_size[0]`` latent
frames, the most a call may have. That table is normalised with ``np.sqrt`` of a ratio of sizes, which
a dynamic frame count makes symbolic: the capture computes the same number from the channel count.
``attention_mask`` ``[B, L]`` masks the padded prompt tokens in the cross-attention; ``condition_mask``
``[B, 1, F, H, W]`` (video-to-world) scales with the frames. With ``concat_padding_mask=True`` the
model's own forward needs torchvision (``transforms.functional.resize``).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from tttgraph.adapters._video import VideoAdapter


class CosmosAdapter(VideoAdapter):
    name = "cosmos"
    model_classes = ("CosmosTransformer3DModel",)
    dynamic_frames = True
    order = "video_only"
    frame_inputs = {"condition_mask": (2,)}
    text_inputs = {"encoder_hidden_states": (1,), "attention_mask": (1,)}

    def patch_size(self, model):
        return tuple(model.config.patch_size)

    @contextlib.contextmanager
    def capture_patches(self, model):
        embeds = [m for m in model.modules() if type(m).__name__ == "CosmosLearnablePositionalEmbed"]
        for embed in embeds:
            embed.forward = functools.partial(_learnable_positions, embed)
        try:
            yield
        finally:
            for embed in embeds:
                del embed.forward


def _learnable_positions(embed, hidden_states: torch.Tensor) -> torch.Tensor:
    """``CosmosLearnablePositionalEmbed.forward`` with its norm scale ``sqrt(norm.numel() / emb.numel())`` written
    as ``sqrt(1 / C)``, the same float (both ratios are exactly 1/C), from ints torch.export keeps static."""
    batch_size, _, num_frames, height, width = hidden_states.shape
    t, h, w = (size // patch for size, patch in zip((num_frames, height, width), embed.patch_size, strict=True))
    emb_t = embed.pos_emb_t[:t][None, :, None, None, :].repeat(batch_size, 1, h, w, 1)
    emb_h = embed.pos_emb_h[:h][None, None, :, None, :].repeat(batch_size, t, 1, w, 1)
    emb_w = embed.pos_emb_w[:w][None, None, None, :, :].repeat(batch_size, t, h, 1, 1)
    emb = (emb_t + emb_h + emb_w).flatten(1, 3)
    norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True, dtype=torch.float32)
    norm = torch.add(embed.eps, norm, alpha=math.sqrt(1 / emb.shape[-1]))
    return (emb / norm).type_as(hidden_states)
