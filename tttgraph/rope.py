"""3D rotary position embedding for the TTT layer's q and k (video tokens, global positions).

The head dim D is split into a temporal, a height and a width part (CogVideoX-5B: 16/24/24 of 64,
theta 1e4); each part rotates consecutive pairs ``(x[2i], x[2i+1])`` by ``pos * theta^(-2i/part)``.
Text tokens get no rotation (cos 1, sin 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tttgraph.errors import TTTGraphError


def split_head_dim(head_dim: int) -> tuple[int, int, int]:
    """(temporal, height, width) sizes, each even: about D/4 for time (64 -> 16/24/24)."""
    if head_dim < 6 or head_dim % 2:
        raise TTTGraphError(
            f"3D RoPE needs an even head dim >= 6, got head_dim={head_dim}; "
            "use another head dim or disable rope (rope_grid=None)"
        )
    hw = 2 * ((head_dim - 2 * (head_dim // 8)) // 4)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: Tensor, dim: int, theta: float) -> Tensor:
    """[N] positions -> [N, dim/2] rotation angles."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return positions.double()[:, None] * freqs[None, :]


def video_rope_angles(num_frames: int, grid: tuple[int, int], head_dim: int, theta: float = 1e4) -> Tensor:
    """[num_frames * gh * gw, head_dim / 2] angles of the video tokens, frame-major then row-major."""
    gh, gw = grid
    dt, dh, dw = split_head_dim(head_dim)
    f = torch.arange(num_frames).repeat_interleave(gh * gw)
    y = torch.arange(gh).repeat_interleave(gw).repeat(num_frames)
    x = torch.arange(gw).repeat(num_frames * gh)
    return torch.cat([_axis_angles(f, dt, theta), _axis_angles(y, dh, theta), _axis_angles(x, dw, theta)], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of the last dim. x: [B, H, N, D]; cos, sin: [N, D/2]."""
    x2 = x.unflatten(-1, (-1, 2))
    a, b = x2[..., 0], x2[..., 1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
