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

# Video transformers beyond the eight families (issue #20): a diffusers class name -> its tiny config and
# ``make(frames, seed)`` giving its forward inputs at that many latent frames. tests/test_more_dits.py and
# benchmarks/survey_video_dits.py (for classes whose diffusers checkout has no tester config) build from here.
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _text(f, g, dim=16):
    """One text chunk of 4 tokens per segment of 2 frames: a storyboard."""
    return torch.randn(1, 4 * max(1, -(-f // 2)), dim, generator=g)


def _wan_more_inputs(f, seed, channels=4):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, channels, f, 8, 8, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([500])}


def _vace_inputs(f, seed):
    inputs = _wan_more_inputs(f, seed)
    inputs["control_hidden_states"] = torch.randn(1, 12, f, 8, 8, generator=_g(seed + 1))
    return inputs


def _anyflow_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, f, 4, 8, 8, generator=g),
            "timestep": torch.full((1, f), 500.0), "r_timestep": torch.full((1, f), 250.0),
            "encoder_hidden_states": _text(f, g)}


def _anyflow_far_inputs(f, seed):
    """AnyFlow-FAR's training rollout: [B, F, C, H, W], per-frame timesteps [B, F], and chunks of at most 2 frames
    (``chunk_partition`` sums to F; at most ``full_chunk_limit`` = 4 chunks, so no frame is compressed)."""
    inputs = _anyflow_inputs(f, seed)
    inputs["chunk_partition"] = [2] * (f // 2) + [1] * (f % 2)
    return inputs


def _easyanimate_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "timestep": torch.tensor([500]),
            "encoder_hidden_states": _text(f, g)}


def _ltx2_inputs(f, seed):
    """LTX-2: packed video [B, F*h*w, C] with its grid as ints, and an audio stream of 9 frames."""
    g = _g(seed)
    text = _text(f, g)
    return {"hidden_states": torch.randn(1, f * 4 * 4, 4, generator=g), "audio_hidden_states": torch.randn(1, 9, 4),
            "encoder_hidden_states": text, "audio_encoder_hidden_states": torch.randn(1, text.shape[1], 16),
            "timestep": torch.tensor([500.0]), "encoder_attention_mask": torch.ones(1, text.shape[1]).bool(),
            "num_frames": f, "height": 4, "width": 4, "audio_num_frames": 9, "fps": 25.0}


def _consisid_inputs(f, seed):
    """ConsisID (CogVideoX 1.0 with identity conditioning): [B, F, C, H, W]; its sincos table takes exactly
    max_text_seq_length text tokens, so the prompt is one chunk that every segment reads."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, f, 4, 8, 8, generator=g), "encoder_hidden_states": torch.randn(1, 8, 8),
            "timestep": torch.tensor([500]), "id_vit_hidden": [torch.ones(1, 2, 2)], "id_cond": torch.ones(1, 2)}


def _motif_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 33, f, 4, 4, generator=g), "encoder_hidden_states": _text(f, g, 32),
            "timestep": torch.tensor([500])}


def _hunyuan15_inputs(f, seed, image=False):
    """HunyuanVideo 1.5, batch 2: prompts padded as the pipeline pads them (each sample's own valid length), a
    ByT5 stream and the image stream (zero for text-to-video). One prompt for all segments."""
    g = _g(seed)
    mask, mask_2 = torch.ones(2, 6), torch.ones(2, 4)
    mask[0, 4:], mask[1, 5:], mask_2[1, 2:] = 0, 0, 0
    return {"hidden_states": torch.randn(2, 4, f, 4, 4, generator=g), "timestep": torch.tensor([500.0, 500.0]),
            "encoder_hidden_states": torch.randn(2, 6, 16, generator=g), "encoder_attention_mask": mask,
            "encoder_hidden_states_2": torch.randn(2, 4, 8, generator=g), "encoder_attention_mask_2": mask_2,
            "image_embeds": torch.randn(2, 3, 12, generator=g) if image else torch.zeros(2, 3, 12)}


def _cosmos_inputs(f, seed):
    """Cosmos: [B, C, F, H, W], a text padding mask [B, L] and fps as a Python number."""
    g = _g(seed)
    text = _text(f, g)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "timestep": torch.tensor([500]),
            "encoder_hidden_states": text, "attention_mask": torch.ones(1, text.shape[1]), "fps": 30}


def _kandinsky5_inputs(f, seed):
    """Kandinsky 5: channels-last [B, F, H, W, C] latents with their RoPE positions as inputs."""
    g = _g(seed)
    text = _text(f, g)
    return {"hidden_states": torch.randn(1, f, 8, 8, 4, generator=g), "encoder_hidden_states": text,
            "timestep": torch.tensor([500.0]), "pooled_projections": torch.randn(1, 8, generator=g),
            "visual_rope_pos": [torch.arange(f), torch.arange(4), torch.arange(4)],
            "text_rope_pos": torch.arange(text.shape[1])}


def _kandinsky6_inputs(f, seed):
    """Kandinsky 6: channels-last [B, F, H, W, C] latents and an audio stream [B, 9, C]."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, f, 8, 8, 4, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([500.0]), "pooled_projections": torch.randn(1, 8, generator=g),
            "audio_hidden_states": torch.randn(1, 9, 4, generator=g)}


def _kandinsky6_sr_inputs(f, seed):
    """Kandinsky 6 SR: channels-last [B, F, H, W, 2C+1] (noisy latent, anchor latent, anchor mask), no text; a grid
    of 8x16 tokens, two of NABLA's 8x8 blocks per frame (so its token order within a frame is not row-major)."""
    return {"hidden_states": torch.randn(1, f, 8, 16, 9, generator=_g(seed)), "timestep": torch.tensor([500.0])}


def _sana_video_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([500])}


def _joyimage_edit_plus_inputs(f, seed):
    """JoyImage Edit Plus (image editing: ``f`` is unused), batch 2 in 6-D patches [B, 8, C, 1, 2, 2]: sample 0 a 2x2
    target and a 1x2 reference image, sample 1 a 2x2 target alone (padded further); prompts padded as the pipeline
    pads them."""
    g = _g(seed)
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    return {"hidden_states": torch.randn(2, 8, 4, 1, 2, 2, generator=g), "timestep": torch.tensor([500.0, 500.0]),
            "encoder_hidden_states": torch.randn(2, 6, 16, generator=g), "encoder_hidden_states_mask": mask,
            "shape_list": [[(1, 2, 2), (1, 1, 2)], [(1, 2, 2)]]}


def _framepack_inputs(f, seed):
    """HunyuanVideo-Framepack: a section of F frames [B, C, F, 8, 8] after its clean latents (2 frames) and its 2x and
    4x downsampled history (2 and 8 frames), each with its frame indices; an image stream of 4 tokens."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "timestep": torch.tensor([500]),
            "encoder_hidden_states": torch.randn(1, 8, 16, generator=g), "encoder_attention_mask": torch.ones(1, 8),
            "pooled_projections": torch.randn(1, 8, generator=g), "image_embeds": torch.randn(1, 4, 16, generator=g),
            "indices_latents": torch.arange(10, 10 + f), "guidance": torch.tensor([500]),
            "latents_clean": torch.randn(1, 4, 2, 8, 8, generator=g), "indices_latents_clean": torch.arange(8, 10),
            "latents_history_2x": torch.randn(1, 4, 2, 8, 8, generator=g),
            "indices_latents_history_2x": torch.arange(6, 8),
            "latents_history_4x": torch.randn(1, 4, 8, 8, 8, generator=g),
            "indices_latents_history_4x": torch.arange(0, 8)}


def _helios_inputs(f, seed):
    """Helios: a section of F frames [B, C, F, 8, 8] after its short, mid and long history (1, 2 and 4 frames)."""
    g = _g(seed)
    inputs = {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 8, 16, generator=g),
              "indices_hidden_states": torch.arange(7, 7 + f)[None]}
    for name, frames, start in (("long", 4, 0), ("mid", 2, 4), ("short", 1, 6)):
        inputs[f"latents_history_{name}"] = torch.randn(1, 4, frames, 8, 8, generator=g)
        inputs[f"indices_latents_history_{name}"] = torch.arange(start, start + frames)[None]
    return inputs


def _minimax_h3_inputs(f, seed):
    """MiniMax-H3, batch 2: one packed sequence of 6 text rows, F frames of 2x2 video rows and 3 audio rows, placed by
    index tensors, with their (t, h, w) positions and two noise levels (video and audio)."""
    g = _g(seed)
    nt, nv, na = 6, 4 * f, 3
    n = nt + nv + na
    text, video, audio = torch.arange(nt), torch.arange(nt, nt + nv), torch.arange(nt + nv, n)
    tags = torch.zeros(n, dtype=torch.long)
    tags[text], tags[audio] = 1, 2
    steps = torch.zeros(n, dtype=torch.long)
    steps[audio] = 1
    positions = torch.zeros(n, 3)
    positions[:, 0] = torch.arange(n)
    positions[video] = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(2), torch.arange(2), indexing="ij"),
                                   -1).reshape(-1, 3).float()
    return {"hidden_states": torch.randn(2, nv, 16, generator=g),
            "audio_hidden_states": torch.randn(2, na, 6, generator=g),
            "encoder_hidden_states": torch.randn(2, nt, 8, generator=g), "timestep": torch.tensor([0.7, 0.3]),
            "timestep_indices": steps, "token_tags": tags, "position_ids": positions, "video_indices": video,
            "audio_indices": audio, "text_indices": text}


def _wan_animate_inputs(f, seed):
    """Wan-Animate: [B, 2C+4, F, 4, 4] latents (a reference frame, then F-1 frames with their pose latents), the
    prompt, CLIP image tokens, and 4(F-1)-3 face crops that the face encoder reduces to F-1 motion frames."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 12, f, 4, 4, generator=g), "timestep": torch.tensor([500]),
            "encoder_hidden_states": _text(f, g), "encoder_hidden_states_image": torch.randn(1, 4, 16, generator=g),
            "pose_hidden_states": torch.randn(1, 4, f - 1, 4, 4, generator=g),
            "face_pixel_values": torch.randn(1, 3, 4 * (f - 1) - 3, 16, 16, generator=g)}


def _joyimage_edit_inputs(f, seed):
    """JoyImage-Edit: [B, 16, F, 4, 4] latents (one frame for an image edit; the 3D RoPE takes more) and a prompt."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 16, f, 4, 4, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([1.0])}


def _wan_animate2_inputs(f, seed):
    """Wan-Animate 2's reference pass (``kv_cache_mode="extract"``): lists of unbatched [C, F, 4, 4] latents, a prompt,
    CLIP image tokens and an empty ``WanAnimate2KVCache`` that the pass fills."""
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    g = _g(seed)
    return {"hidden_states": [torch.randn(16, f, 4, 4, generator=g)], "timestep": torch.tensor([1.0]),
            "encoder_hidden_states": [torch.randn(8, 32, generator=g)],
            "condition_latents": [torch.randn(20, f, 4, 4, generator=g)],
            "encoder_hidden_states_image": torch.randn(1, 4, 1280, generator=g), "kv_cache": WanAnimate2KVCache(2),
            "kv_cache_mode": "extract", "seq_len": 4 * f, "offset_grid_sizes": torch.tensor([[f, 2, 2]])}


def _sana_wm_inputs(f, seed):
    """SANA-WM: [B, C, F, 4, 4] latents, per-frame timesteps [B, 1, F], the prompt [B, 1, L, D] with its mask, and
    camera conditions [B, F, 20] (camera-to-world matrices moving along x, pinhole intrinsics)."""
    g = _g(seed)
    text = _text(f, g)
    c2w = torch.eye(4).repeat(1, f, 1, 1)
    c2w[..., 0, 3] = 0.1 * torch.arange(f)
    cameras = torch.cat([c2w.flatten(2), torch.tensor([4.0, 4.0, 2.0, 2.0]).repeat(1, f, 1)], -1)
    return {"hidden_states": torch.randn(1, 4, f, 4, 4, generator=g), "timestep": torch.full((1, 1, f), 500.0),
            "encoder_hidden_states": text[:, None], "encoder_attention_mask": torch.ones(1, text.shape[1]),
            "camera_conditions": cameras}


def _sana_wm_refiner_inputs(f, seed):
    """SANA-WM's LTX-2 refiner without a KV cache: packed tokens [B, F*16, C] of F frames of 4x4, per-token timesteps
    and the RoPE the refiner pipeline builds for the frames' positions (``build_rotary_emb_for_absolute_positions``)."""
    diffusers = importlib.import_module("diffusers")

    g = _g(seed)
    text = _text(f, g)
    rope_of = diffusers.SanaWMLTX2RefinerTransformer3DModel(**MORE_DITS["SanaWMLTX2RefinerTransformer3DModel"][0])
    rope = rope_of.build_rotary_emb_for_absolute_positions(1, list(range(f)), 4, 4, torch.device("cpu"), 24.0)
    return {"hidden_states": torch.randn(1, f * 16, 4, generator=g), "encoder_hidden_states": text,
            "timestep": torch.full((1, f * 16), 500.0), "video_rotary_emb": rope,
            "encoder_attention_mask": torch.ones(1, text.shape[1])}


def _temporal_inputs(f, seed):
    return {"hidden_states": torch.randn(f, 4, 4, 4, generator=_g(seed)), "num_frames": f}


MORE_DITS: dict[str, tuple[dict[str, Any], Callable[[int, int], dict[str, Any]]]] = {
    "SkyReelsV2Transformer3DModel": (_WAN, _wan_more_inputs),
    "WanVACETransformer3DModel": ({**_WAN, "num_layers": 4, "vace_layers": [0, 2], "vace_in_channels": 12},
                                  _vace_inputs),
    "ChronoEditTransformer3DModel": ({**_WAN, "rope_temporal_skip_len": 8}, _wan_more_inputs),
    "AnyFlowTransformer3DModel": ({k: v for k, v in _WAN.items() if k != "qk_norm"} | {"gate_value": 0.25,
                                  "deltatime_type": "r"}, _anyflow_inputs),
    "AnyFlowFARTransformer3DModel": ({k: v for k, v in _WAN.items() if k != "qk_norm"} | {
                                     "gate_value": 0.25, "deltatime_type": "r", "compressed_patch_size": (1, 4, 4),
                                     "full_chunk_limit": 4}, _anyflow_far_inputs),
    "EasyAnimateTransformer3DModel": (dict(attention_head_dim=16, num_attention_heads=2, in_channels=4,
                                           mmdit_layers=2, num_layers=2, out_channels=4, patch_size=2,
                                           sample_height=16, sample_width=16, text_embed_dim=16, time_embed_dim=8,
                                           time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
                                      _easyanimate_inputs),
    "TransformerTemporalModel": (dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                      norm_num_groups=1), _temporal_inputs),
    "ConsisIDTransformer3DModel": (dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                        time_embed_dim=2, text_embed_dim=8, num_layers=1, sample_width=8,
                                        sample_height=8, sample_frames=8, patch_size=2, temporal_compression_ratio=4,
                                        max_text_seq_length=8, cross_attn_interval=1, is_kps=False,
                                        is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1,
                                        LFE_id_dim=2, LFE_vit_dim=2, LFE_depth=5, LFE_dim_head=8, LFE_num_heads=2,
                                        LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=10, LFE_ff_mult=1,
                                        LFE_num_scale=1), _consisid_inputs),
    "MotifVideoTransformer3DModel": (dict(in_channels=33, out_channels=16, num_attention_heads=2,
                                          attention_head_dim=12, num_layers=1, num_single_layers=1,
                                          num_decoder_layers=0, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
                                          qk_norm="rms_norm", norm_type="layer_norm", text_embed_dim=32,
                                          image_embed_dim=4, rope_theta=256.0, rope_axes_dim=(4, 4, 4),
                                          enable_text_cross_attention_dual=False,
                                          enable_text_cross_attention_single=False), _motif_inputs),
    "LTX2VideoTransformer3DModel": (dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                         num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                         audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
                                         audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
                                         qk_norm="rms_norm_across_heads", caption_channels=16,
                                         rope_double_precision=False), _ltx2_inputs),
    "HunyuanVideo15Transformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2,
                                              attention_head_dim=8, num_layers=1, num_refiner_layers=1,
                                              mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
                                              text_embed_2_dim=8,
                                              image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16,
                                              task_type="t2v"), _hunyuan15_inputs),
    "CosmosTransformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
                                      num_layers=2, mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4,
                                      max_size=(8, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
                                      concat_padding_mask=False, extra_pos_embed_type="learnable"), _cosmos_inputs),
    "Kandinsky5Transformer3DModel": (dict(in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
                                          out_visual_dim=4, patch_size=(1, 2, 2), model_dim=32, ff_dim=32,
                                          num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6)),
                                     _kandinsky5_inputs),
    "Kandinsky6Transformer3DModel": (dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8,
                                          time_dim=16, patch_size=(1, 2, 2), model_dim=32, ff_dim=32,
                                          num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
                                          visual_cond=False, in_audio_dim=4, out_audio_dim=4, model_dim_a=16,
                                          axes_dims_a=(8,)), _kandinsky6_inputs),
    "Kandinsky6SRTransformer3DModel": (dict(in_visual_dim=4, out_visual_dim=4, time_dim=16, patch_size=(1, 1, 1),
                                            model_dim=32, ff_dim=32, num_visual_blocks=2, axes_dims=(4, 6, 6),
                                            nabla_window=(3, 3, 3)), _kandinsky6_sr_inputs),
    "SanaVideoTransformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
                                         num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=12,
                                         cross_attention_dim=24, caption_channels=16, mlp_ratio=2.5,
                                         attention_bias=False, sample_size=8, patch_size=(1, 2, 2),
                                         norm_elementwise_affine=False, norm_eps=1e-6,
                                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32), _sana_video_inputs),
    "JoyImageEditPlusTransformer3DModel": (dict(patch_size=[1, 2, 2], in_channels=4, hidden_size=32,
                                                num_attention_heads=2, text_dim=16, num_layers=2,
                                                rope_dim_list=[4, 6, 6]), _joyimage_edit_plus_inputs),
    "HunyuanVideoFramepackTransformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2,
                                                     attention_head_dim=10, num_layers=1, num_single_layers=1,
                                                     num_refiner_layers=1, patch_size=2, patch_size_t=1,
                                                     guidance_embeds=True, text_embed_dim=16,
                                                     pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
                                                     image_condition_type=None, has_image_proj=True,
                                                     image_proj_dim=16, has_clean_x_embedder=True),
                                                _framepack_inputs),
    "HeliosTransformer3DModel": (dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                      in_channels=4, out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32,
                                      num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      rope_dim=(4, 4, 4), has_multi_term_memory_patch=True, guidance_cross_attn=True,
                                      zero_history_timestep=True, is_amplify_history=False), _helios_inputs),
    "MiniMaxH3Transformer3DModel": (dict(num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=2,
                                         num_refiner_layers=2, ffn_dim=32, in_channels=4, audio_in_channels=6,
                                         patch_size=(1, 2, 2), text_dim=8, freq_dim=8, time_embed_hidden_dim=24,
                                         time_embed_dim=16, rope_freq_dim=2), _minimax_h3_inputs),
    "WanAnimateTransformer3DModel": ({**_WAN, "in_channels": 12, "latent_channels": 4, "freq_dim": 256,
                                      "image_dim": 16, "motion_encoder_channel_sizes": {"4": 16, "8": 16, "16": 16},
                                      "motion_encoder_size": 16, "motion_style_dim": 8, "motion_dim": 4,
                                      "motion_encoder_dim": 16, "face_encoder_hidden_dim": 16,
                                      "face_encoder_num_heads": 2, "inject_face_latents_blocks": 2},
                                     _wan_animate_inputs),
    "JoyImageEditTransformer3DModel": (dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2,
                                            text_dim=16, num_layers=2, rope_dim_list=[4, 6, 6], theta=256),
                                       _joyimage_edit_inputs),
    "WanAnimate2Transformer3DModel": (dict(patch_size=(1, 2, 2), text_len=16, in_dim=36, dim=128, ffn_dim=256,
                                           freq_dim=64, text_dim=32, out_dim=16, num_heads=4, num_layers=2,
                                           cross_attn_norm=True, use_img_emb=True), _wan_animate2_inputs),
    "SanaWMTransformer3DModel": (dict(in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2,
                                      linear_head_dim=16, softmax_every_n=2, caption_channels=16,
                                      chunk_plucker_post_attn_blocks=2, image_size=64), _sana_wm_inputs),
    "SanaWMLTX2RefinerTransformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4,
                                                 audio_out_channels=4, audio_num_attention_heads=2,
                                                 audio_attention_head_dim=4, audio_cross_attention_dim=8,
                                                 num_layers=2, caption_channels=16, rope_double_precision=False),
                                            _sana_wm_refiner_inputs),
}

# Classes that zero-initialise their modulations (adaLN-Zero): at random init their blocks would not reach the output,
# so the tests give those parameters random values.
_ZERO_INIT = ("Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel", "Kandinsky6SRTransformer3DModel")


def build_more_dit(name: str) -> tuple[nn.Module, Callable[[int, int], dict[str, Any]]]:
    """The tiny model of ``MORE_DITS[name]`` (seeded random weights, eval mode) and its ``make(frames, seed)``."""
    diffusers = importlib.import_module("diffusers")

    config, inputs = MORE_DITS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(diffusers, name)(**config).eval()
        if name in _ZERO_INIT:
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.1)
    return model, inputs
