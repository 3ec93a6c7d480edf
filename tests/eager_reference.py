"""Test oracle: eager insertion of TTT layers into CogVideoX blocks, by wrapping each block's attention module.

This is the hand-written form of what the graph passes do for any model: after each attention
(its out-projection included) and before the block's adaLN gate and residual, run a
:class:`GatedBidirectionalTTT` over the joint ``[text | video]`` sequence. It is the independent
reference the graph-rewriting transform is tested against (tests/test_transform.py), and lives with
the tests: the library inserts TTT layers only through the graph transform.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tttgraph.errors import TTTGraphError
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout


class AttentionWithTTT(nn.Module):
    """CogVideoX attention followed by TTT: ``(video, text) = attn(...)`` then TTT over ``[text | video]``.

    Returns ``(video [B, Nv, C], text [B, Nt, C])`` exactly as the wrapped attention does.
    """

    def __init__(self, attn: nn.Module, ttt: GatedBidirectionalTTT):
        super().__init__()
        self.attn, self.ttt = attn, ttt

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        video, text = self.attn(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, **kwargs)
        joint = self.ttt(torch.cat([text, video], dim=1))
        return joint[:, text.shape[1] :], joint[:, : text.shape[1]]


def add_ttt_to_cogvideox(
    model: nn.Module,
    *,
    latent_size: tuple[int, int],
    text_tokens_per_segment: int,
    frames_per_segment: int | None = None,
    overlap_frames: int = 0,
    mini_batch_size: int = 64,
    gate_init: float = 0.1,
    backend: str = "auto",
    rope: bool = True,
) -> list[str]:
    """Wrap ``attn1`` of every block of a diffusers ``CogVideoXTransformer3DModel`` in place.

    Args:
        latent_size: (height, width) of the latent frames the model will see; with the patch size
            this fixes the tokens per frame.
        text_tokens_per_segment: text tokens of one segment (the model's text input holds one chunk
            per segment, in segment order).
        frames_per_segment, overlap_frames: segmentation of the TTT sequence (None: one segment).
    Returns the names of the wrapped attention modules. The new parameters live under ``attn1.ttt``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "transformer_blocks"):
        raise TTTGraphError(
            f"add_ttt_to_cogvideox expects a diffusers CogVideoXTransformer3DModel, got {type(model).__name__}; "
            "for other models use the graph transform"
        )
    if getattr(config, "patch_size_t", None):
        raise TTTGraphError(
            "add_ttt_to_cogvideox supports CogVideoX 1.0 (no temporal patches); use the graph transform"
        )
    patch = config.patch_size
    if latent_size[0] % patch or latent_size[1] % patch:
        raise TTTGraphError(f"latent_size={latent_size} must be a multiple of the patch size {patch}")
    grid = (latent_size[0] // patch, latent_size[1] // patch)
    layout = SequenceLayout(text_tokens_per_segment, grid[0] * grid[1], frames_per_segment, overlap_frames)
    width = config.num_attention_heads * config.attention_head_dim
    wrapped = []
    for i, block in enumerate(model.transformer_blocks):
        if isinstance(block.attn1, AttentionWithTTT):
            raise TTTGraphError(f"transformer_blocks.{i}.attn1 already has a TTT layer")
        ttt = GatedBidirectionalTTT(
            width, config.num_attention_heads, layout,
            mini_batch_size=mini_batch_size, gate_init=gate_init, backend=backend,
            rope_grid=grid if rope else None,
        )  # fmt: skip
        ref = next(block.parameters())
        block.attn1 = AttentionWithTTT(block.attn1, ttt.to(device=ref.device, dtype=ref.dtype))
        wrapped.append(f"transformer_blocks.{i}.attn1")
    return wrapped
