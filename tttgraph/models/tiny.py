"""Builders of tiny diffusers video transformers (random weights) and their forward inputs.

Every family has the real diffusers class with a shrunken config: 2 heads, head dim 12-16,
1-2 blocks, an 8x8 latent (4x4 tokens per frame after 2x2 patches, LTX: 1x1 patches on 4x4).
Shapes follow each diffusers pipeline's own call of the transformer, with
B = ``batch_size``, F = latent frames, L = text tokens, C = latent channels:

===============  ====================================  =========================================
family           hidden_states                         other tensor inputs
===============  ====================================  =========================================
cogvideox        [B, F, C, H, W]                       text [B, L, 16], timestep [B], RoPE (cos, sin)
cogvideox1.5     [B, F, C, H, W] (F even, 2-frame       same as cogvideox ("slice" RoPE grid)
                 patches)
wan2.1           [B, C, F, H, W]                       text [B, L, 16], timestep [B]
hunyuanvideo     [B, C, F, H, W]                       text [B, L, 16], mask [B, L], pooled [B, 8],
                                                       guidance [B]
mochi            [B, C, F, H, W]                       text [B, L, 16], mask [B, L], timestep [B]
ltx-video        [B, F*H*W, C] (packed)                text [B, L, 16], mask [B, L], timestep [B];
                                                       num_frames/height/width are Python ints
latte            [B, C, F, H, W] (F = video_length 4)  text [B, L, 16], timestep [B]
allegro          [B, C, F, H, W]                       text [B, L, 16], mask [B, L], timestep [B],
                                                       RoPE ((freqs_t, _h, _w), (grid_t, _h, _w))
===============  ====================================  =========================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from tttgraph.errors import TTTGraphError


@dataclass(frozen=True)
class Family:
    """One supported model family: its diffusers class, a tiny config and an input builder.

    ``make_inputs(model, num_frames, height, width, text_tokens, batch_size, generator)`` returns
    the forward keyword arguments; ``frame_multiple`` is what the latent frame count must be a
    multiple of (CogVideoX 1.5 patches 2 frames together).
    """

    name: str
    class_name: str
    config: dict[str, Any]
    make_inputs: Callable[..., dict[str, Any]]
    default_frames: int = 3
    frame_multiple: int = 1
    height: int = 8
    width: int = 8
    text_tokens: int = 8
    aliases: tuple[str, ...] = field(default=())


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _crop_region(grid: tuple[int, int], base_w: int, base_h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The CogVideoX 1.0 pipeline's RoPE crop: the grid resized to fit the base grid, centred.

    Written here because the pipeline module imports transformers, which the core must not need.
    """
    h, w = grid
    if h / w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / h * w))
    else:
        rw, rh = base_w, int(round(base_w / w * h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def _cogvideox_inputs(model, f, h, w, text, b, gen):
    """CogVideoX takes [B, F, C, H, W] and its RoPE tables from the pipeline ([F*h*w, d] each)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = model.config
    p, p_t = cfg.patch_size, cfg.patch_size_t
    gh, gw = h // p, w // p
    if p_t is None:
        crops = _crop_region((gh, gw), cfg.sample_width // p, cfg.sample_height // p)
        rope = get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, (gh, gw), f)
    else:
        rope = get_3d_rotary_pos_embed(
            cfg.attention_head_dim, None, (gh, gw), (f + p_t - 1) // p_t,
            grid_type="slice", max_size=(cfg.sample_height // p, cfg.sample_width // p),
        )
    return {
        "hidden_states": _randn(gen, b, f, cfg.in_channels, h, w),
        "encoder_hidden_states": _randn(gen, b, text, cfg.text_embed_dim),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "image_rotary_emb": tuple(rope),
    }


def _wan_inputs(model, f, h, w, text, b, gen):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, f, h, w),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_hidden_states": _randn(gen, b, text, cfg.text_dim),
    }


def _text_mask(b: int, text: int) -> torch.Tensor:
    # All-ones masks: a padded prompt changes the text length data-dependently (Mochi's nonzero).
    return torch.ones(b, text, dtype=torch.long)


def _hunyuan_inputs(model, f, h, w, text, b, gen):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, f, h, w),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_hidden_states": _randn(gen, b, text, cfg.text_embed_dim),
        "encoder_attention_mask": _text_mask(b, text),
        "pooled_projections": _randn(gen, b, cfg.pooled_projection_dim),
        "guidance": torch.full((b,), 6000.0),
    }


def _mochi_inputs(model, f, h, w, text, b, gen):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, f, h, w),
        "encoder_hidden_states": _randn(gen, b, text, cfg.text_embed_dim),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_attention_mask": _text_mask(b, text),
    }


def _ltx_inputs(model, f, h, w, text, b, gen):
    """LTX-Video takes packed latents [B, F*H*W, C] and the grid size as Python ints."""
    cfg = model.config
    p, p_t = cfg.patch_size, cfg.patch_size_t
    return {
        "hidden_states": _randn(gen, b, (f // p_t) * (h // p) * (w // p), cfg.in_channels),
        "encoder_hidden_states": _randn(gen, b, text, cfg.caption_channels),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_attention_mask": _text_mask(b, text),
        "num_frames": f // p_t,
        "height": h // p,
        "width": w // p,
        # The pipeline's value: (temporal compression / frame rate, spatial, spatial).
        "rope_interpolation_scale": (8 / 25, 32, 32),
    }


def _latte_inputs(model, f, h, w, text, b, gen):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, f, h, w),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_hidden_states": _randn(gen, b, text, cfg.caption_channels),
        "enable_temporal_attentions": True,
    }


def _allegro_inputs(model, f, h, w, text, b, gen):
    """Allegro takes its RoPE frequencies and integer grids from the pipeline."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    cfg = model.config
    p = cfg.patch_size
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=cfg.attention_head_dim, crops_coords=((0, 0), (h // p, w // p)),
        grid_size=(h // p, w // p), temporal_size=f // cfg.patch_size_t,
        interpolation_scale=(cfg.interpolation_scale_t, cfg.interpolation_scale_h, cfg.interpolation_scale_w),
    )
    pos = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long())
    pos = pos.reshape(-1, 3).transpose(0, 1).reshape(3, 1, -1).contiguous()
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, f, h, w),
        "encoder_hidden_states": _randn(gen, b, text, cfg.caption_channels),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_attention_mask": _text_mask(b, text),
        "image_rotary_emb": ((freqs_t, freqs_h, freqs_w), tuple(pos)),
    }


_COGVIDEOX = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
    text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
    max_text_seq_length=8, use_rotary_positional_embeddings=True,
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("cogvideox", "CogVideoXTransformer3DModel", _COGVIDEOX, _cogvideox_inputs),
        Family(
            "cogvideox1.5", "CogVideoXTransformer3DModel",
            {**_COGVIDEOX, "patch_size_t": 2, "sample_frames": 17}, _cogvideox_inputs,
            default_frames=4, frame_multiple=2, aliases=("cogvideox15",),
        ),
        Family(
            "wan2.1", "WanTransformer3DModel",
            dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                 out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32),
            _wan_inputs, aliases=("wan",),
        ),
        Family(
            "hunyuanvideo", "HunyuanVideoTransformer3DModel",
            dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                 num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
                 text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)),
            _hunyuan_inputs, aliases=("hunyuan",),
        ),
        Family(
            "mochi", "MochiTransformer3DModel",
            dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                 pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=16,
                 max_sequence_length=8),
            _mochi_inputs,
        ),
        Family(
            "ltx-video", "LTXVideoTransformer3DModel",
            dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
                 attention_head_dim=16, cross_attention_dim=32, num_layers=2, caption_channels=16),
            _ltx_inputs, height=4, width=4, aliases=("ltx",),
        ),
        Family(
            "latte", "LatteTransformer3DModel",
            dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                 cross_attention_dim=16, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                 norm_type="ada_norm_single", caption_channels=16, video_length=4),
            _latte_inputs, default_frames=4,
        ),
        Family(
            "allegro", "AllegroTransformer3DModel",
            dict(patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12, in_channels=4,
                 out_channels=4, num_layers=2, cross_attention_dim=24, sample_height=8, sample_width=8,
                 sample_frames=4, caption_channels=16),
            _allegro_inputs,
        ),
    )
}

_ALIASES = {alias: f.name for f in FAMILIES.values() for alias in f.aliases}


def _family(name: str) -> Family:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise TTTGraphError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[key]


def build_tiny(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the tiny diffusers transformer of ``family`` with seeded random weights, in eval mode."""
    fam = _family(family)
    try:
        diffusers = importlib.import_module("diffusers")
    except ImportError as exc:
        raise TTTGraphError(
            "tiny models need diffusers; install it with `pip install tttgraph[diffusers]`"
        ) from exc
    cls = getattr(diffusers, fam.class_name)
    # The global RNG is restored afterwards so that building a model has no side effect on callers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**fam.config)
    model._tttgraph_family = fam.name
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def family_of(model: nn.Module) -> Family:
    """The tiny-model family a model was built as (or the first family using its class)."""
    name = getattr(model, "_tttgraph_family", None)
    if name is not None:
        return FAMILIES[name]
    for fam in FAMILIES.values():
        if fam.class_name == type(model).__name__:
            # CogVideoX 1.0 and 1.5 share a class; 1.5 is told apart by its temporal patch.
            if fam.name == "cogvideox" and getattr(model.config, "patch_size_t", None):
                return FAMILIES["cogvideox1.5"]
            return fam
    raise TTTGraphError(
        f"no tiny-model family for {type(model).__name__}; known classes are "
        f"{sorted({f.class_name for f in FAMILIES.values()})}"
    )


def example_inputs(
    model: nn.Module,
    num_frames: int | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    text_tokens: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward keyword arguments for ``model`` with ``num_frames`` latent frames.

    Sizes are in latent units (``height``/``width`` latent pixels, defaults 8x8, LTX 4x4); the
    tensors are seeded random normals of the model's dtype, timesteps 500, masks all ones.
    """
    fam = family_of(model)
    f = fam.default_frames if num_frames is None else num_frames
    if f < 1 or f % fam.frame_multiple:
        raise TTTGraphError(
            f"num_frames={f} does not fit {fam.name}: latent frames must be a positive multiple of "
            f"{fam.frame_multiple}; pass e.g. "
            f"num_frames={max(fam.frame_multiple, f - f % fam.frame_multiple)}"
        )
    gen = torch.Generator().manual_seed(seed)
    inputs = fam.make_inputs(
        model, f, height or fam.height, width or fam.width, text_tokens or fam.text_tokens, batch_size, gen
    )
    dtype = next(model.parameters()).dtype
    return pytree.tree_map(
        lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v, inputs
    )
