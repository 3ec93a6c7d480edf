"""The transformer blocks of a transformed model: FSDP2 shards them one by one, checkpointing recomputes them.

``tttgraph.transform`` edits the diffusers model in place, so its blocks are the model's own
(``transformer_blocks`` and, for dual-stream families, ``single_transformer_blocks``) and activation
checkpointing is diffusers' own (``enable_gradient_checkpointing``): each block's activations are
recomputed in backward, segment-local attention and TTT layers included.
"""

from __future__ import annotations

from torch import nn

from tttgraph.errors import TTTGraphError

CONTAINERS = ("transformer_blocks", "single_transformer_blocks")

__all__ = ["CONTAINERS", "block_modules", "enable_checkpointing"]


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` in call order (the children of its block lists)."""
    blocks = [block for name in CONTAINERS if isinstance(getattr(model, name, None), nn.ModuleList)
              for block in getattr(model, name)]
    if not blocks:
        raise TTTGraphError(
            f"{type(model).__name__} has no block list ({' or '.join(CONTAINERS)}); FSDP per block needs one"
        )
    return blocks


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (diffusers' gradient checkpointing)."""
    if not getattr(model, "_supports_gradient_checkpointing", False):
        raise TTTGraphError(
            f"{type(model).__name__} does not support gradient checkpointing; set train.activation_checkpointing "
            "to false"
        )
    model.enable_gradient_checkpointing()
