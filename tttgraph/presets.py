"""Ready-made configs of the reference recipe (docs/DESIGN.md §4, §6).

CogVideoX-5B at 720x480: 49 video frames (3 s at 16 fps) are 13 latent frames; each further 3 s
adds 12 latent frames, so a video of ``s`` seconds (a multiple of 3) has ``4 * s + 1`` latent
frames: 13, 37, 73, 121, 253 for 3, 9, 18, 30, 63 s. Segments are 12 latent frames sharing 1 with
the next, each with its own 226-token text chunk.
"""

from __future__ import annotations

from tttgraph.config import ConfigError, TTTConfig

COGVIDEOX_TEXT_TOKENS = 226
COGVIDEOX_SEGMENT_FRAMES = 12
STAGE_SECONDS = (3, 9, 18, 30, 63)


def latent_frames(seconds: int) -> int:
    """CogVideoX latent frames of a video of ``seconds`` seconds (a multiple of 3)."""
    if seconds < 3 or seconds % 3:
        raise ConfigError(f"seconds must be a positive multiple of 3 (one segment is 3 s), got {seconds}")
    return 4 * seconds + 1


def cogvideox_5b(seconds: int = 63, **overrides) -> TTTConfig:
    """CogVideoX-5B with segment-local attention and bidirectional TTT-MLP, for ``seconds`` of video."""
    latent_frames(seconds)
    base = TTTConfig(
        segment_latent_frames=COGVIDEOX_SEGMENT_FRAMES,
        segment_overlap_frames=1,
        text_tokens_per_segment=COGVIDEOX_TEXT_TOKENS,
        mini_batch_size=64,
        base_lr=0.1,
        mlp_expansion=4,
        gate_init=0.1,
        bidirectional=True,
    )
    return base.replace(**overrides) if overrides else base


def cogvideox_5b_3s(**overrides) -> TTTConfig:
    return cogvideox_5b(3, **overrides)


def cogvideox_5b_9s(**overrides) -> TTTConfig:
    return cogvideox_5b(9, **overrides)


def cogvideox_5b_18s(**overrides) -> TTTConfig:
    return cogvideox_5b(18, **overrides)


def cogvideox_5b_30s(**overrides) -> TTTConfig:
    return cogvideox_5b(30, **overrides)


def cogvideox_5b_63s(**overrides) -> TTTConfig:
    return cogvideox_5b(63, **overrides)
