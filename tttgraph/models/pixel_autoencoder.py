"""A fixed, pixel-space autoencoder with the CogVideoX VAE's shapes and calling conventions.

The world base model (:mod:`tttgraph.models.world_model`) diffuses pixels, not learned latents:
at 32x48 pixels the world's frames are small enough to denoise directly, and a fixed transform
needs no training, cannot blur a character's colour or shape, and decodes exactly what the
transformer drew. It has the CogVideoX VAE's 4x time compression and calling conventions, and
states its spatial factor the way diffusers reads it (``2 ** (len(block_out_channels) - 1)``), so
everything written for the real VAE (``encode_videos``, ``decode_latents``, diffusers'
``CogVideoXPipeline``) runs unchanged:

- space: each ``s x s`` pixel block becomes ``3 s^2`` channels (``pixel_unshuffle``), so an ``H x W``
  frame is an ``H/s x W/s`` latent (the world model: s = 4, 48 channels; s = 8 would give 192
  values per token, more than the transformer's width of 128, and a transformer narrower than its
  tokens cannot carry the noise it must predict, so it never learns to denoise fine detail);
- time: a video of ``T = 4k + 1`` frames becomes ``k + 1`` latent frames, latent frame 0 being
  frame 0 and latent frame ``j >= 1`` frame ``4j`` (the CogVideoX VAE's causal grouping, taking the
  group's last frame instead of compressing it); decoding holds latent frame ``j`` for frames
  ``4j - 3 .. 4j``;
- values: pixels in ``[-1, 1]`` minus ``shift`` (the world's mean colour, a buffer), times
  ``scaling_factor`` (1 / the world's pixel std) to give the diffusion unit-variance latents. The
  latents returned by ``encode`` are *unscaled*, as diffusers' VAEs return them; callers multiply by
  ``config.scaling_factor`` as they do for the real VAE.

Layouts: videos ``[N, 3, T, H, W]`` in ``[-1, 1]``; latents ``[N, 3 s^2, F, H/s, W/s]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from tttgraph.errors import TTTGraphError


@dataclass
class ExactLatents:
    """The "posterior" of a deterministic encoder: ``mode()``, ``sample()`` and ``mean`` are the latents."""

    mean: Tensor

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.mean


class PixelAutoencoder(ModelMixin, ConfigMixin):
    """Pixels <-> "latents" by a fixed reshape (see the module docstring); no learned weights.

    Args:
        spatial_compression: pixels per latent cell along H and W (s).
        temporal_compression_ratio: video frames per latent frame after the first (4).
        scaling_factor: multiplies the latents before diffusion (diffusers' convention).
        shift: per-RGB value in ``[-1, 1]`` subtracted before the reshape (the data's mean colour).
        latent_channels: ``3 * spatial_compression**2`` (stated, as diffusers' VAEs state it).
        block_out_channels: only its length counts: ``2 ** (len - 1)`` must be ``spatial_compression``,
            which is how diffusers' CogVideoXPipeline derives the spatial factor.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, spatial_compression: int = 4, temporal_compression_ratio: int = 4,
                 scaling_factor: float = 1.0, shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 latent_channels: int = 48, block_out_channels: tuple[int, ...] = (3, 3, 3)):
        super().__init__()
        if latent_channels != 3 * spatial_compression ** 2:
            raise TTTGraphError(f"latent_channels={latent_channels}, but {spatial_compression}x{spatial_compression} "
                                f"RGB blocks make {3 * spatial_compression ** 2}")
        if 2 ** (len(block_out_channels) - 1) != spatial_compression:
            raise TTTGraphError(f"block_out_channels {tuple(block_out_channels)} implies a spatial factor of "
                                f"{2 ** (len(block_out_channels) - 1)}, not spatial_compression={spatial_compression}")
        self.register_buffer("mean_colour", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1))

    def _check(self, what: str, x: Tensor, channels: int) -> None:
        if x.dim() != 5 or x.shape[1] != channels:
            raise TTTGraphError(f"{what} must be [N, {channels}, T, H, W], got {tuple(x.shape)}")

    def encode(self, x: Tensor, return_dict: bool = True):
        """Video ``[N, 3, T, H, W]`` (T = 4k + 1, H and W multiples of s) -> latents ``[N, 3s^2, k + 1, H/s, W/s]``."""
        self._check("the video", x, 3)
        s, r = self.config.spatial_compression, self.config.temporal_compression_ratio
        _, _, t, h, w = x.shape
        if (t - 1) % r or h % s or w % s:
            raise TTTGraphError(f"a video of {t} frames of {h}x{w} does not fit: it takes {r}k+1 frames of multiples "
                                f"of {s} pixels")
        out = ExactLatents(self.encode_frames(x[:, :, ::r]))  # frames 0, r, 2r, ...
        return AutoencoderKLOutput(latent_dist=out) if return_dict else (out,)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """The latents of frames already picked (one per latent frame): ``[N, 3, F, H, W]`` -> ``[N, 3s^2, F, h, w]``.

        What :meth:`encode` does after taking every 4th frame; training reads only those frames.
        """
        self._check("the frames", frames, 3)
        s = self.config.spatial_compression
        n = frames.shape[0]
        flat = (frames - self.mean_colour.to(frames.dtype)).transpose(1, 2).flatten(0, 1)  # [N*F, 3, H, W]
        z = torch.nn.functional.pixel_unshuffle(flat, s)  # [N*F, 3*s*s, H/s, W/s]
        return z.unflatten(0, (n, -1)).transpose(1, 2)

    def decode(self, z: Tensor, return_dict: bool = True):
        """Latents ``[N, 3s^2, F, h, w]`` -> video ``[N, 3, 4(F - 1) + 1, s h, s w]`` (each latent frame held)."""
        self._check("the latents", z, self.config.latent_channels)
        s, r = self.config.spatial_compression, self.config.temporal_compression_ratio
        n, _, f, _, _ = z.shape
        frames = torch.nn.functional.pixel_shuffle(z.transpose(1, 2).flatten(0, 1), s)  # [N*F, 3, H, W]
        video = frames.unflatten(0, (n, f)).transpose(1, 2)  # [N, 3, F, H, W]
        held = torch.cat([video[:, :, :1], video[:, :, 1:].repeat_interleave(r, dim=2)], dim=2)
        held = held + self.mean_colour.to(held.dtype)
        return DecoderOutput(sample=held) if return_dict else (held,)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample
