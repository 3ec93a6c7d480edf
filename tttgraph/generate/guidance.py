"""Dynamic classifier-free guidance (docs/DESIGN.md §7).

The guidance scale rises from 1 at the first (noisiest) step towards ``1 + s`` at the last, with
the reference's schedule ``g(step) = 1 + s * (1 - cos(pi * (step / N) ** 5)) / 2`` for step
``0 .. N-1`` of ``N``: it stays near 1 for most of the trajectory (so the layout of the whole minute
forms unguided) and guides the last steps, where detail is decided. ``s`` is 4-6 in the reference.
"""

from __future__ import annotations

import math

from torch import Tensor

DEFAULT_GUIDANCE_SCALE = 6.0


def dynamic_cfg_scale(step: int, num_steps: int, max_scale: float = DEFAULT_GUIDANCE_SCALE) -> float:
    """Guidance scale at ``step`` (0-based) of ``num_steps``: 1 at step 0, rising to ~1 + max_scale."""
    if num_steps < 1 or not 0 <= step < num_steps:
        raise ValueError(f"step must be in [0, num_steps) with num_steps >= 1, got step={step}, num_steps={num_steps}")
    return 1.0 + max_scale * (1.0 - math.cos(math.pi * (step / num_steps) ** 5)) / 2.0


def guide(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """``uncond + scale * (cond - uncond)`` (scale 1 returns the conditional prediction)."""
    return uncond + scale * (cond - uncond)
