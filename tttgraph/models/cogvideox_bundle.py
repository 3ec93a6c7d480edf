"""The CogVideoX model bundle shared by fine-tuning and generation.

A :class:`CogVideoXBundle` holds the four parts a CogVideoX pipeline needs, plus the noise
schedule: the diffusion transformer, the video VAE, the T5 text encoder and its tokenizer.

- :func:`tiny_bundle` builds all four offline with seeded random weights and tiny sizes (a
  CogVideoX transformer of width 32, a VAE with the real 8x spatial / 4x temporal compression and
  few channels, a one-layer T5 and a word-level tokenizer over the synthetic storyboards' words):
  tests, the default fine-tuning run and the generation example use it.
- :func:`load_pretrained` loads a diffusers-format directory (``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``) from local files only.

Layouts (CogVideoX is frames-first): latents ``[F, C, h, w]`` (one video) or ``[B, F, C, h, w]``;
videos uint8 ``[T, H, W, 3]`` with ``T = 4 * (F - 1) + 1``; text embeddings ``[S, L, C_text]``, one
row of ``L = text_tokens_per_segment`` tokens per storyboard paragraph (segment).

diffusers and transformers are imported inside the functions: ``import tttgraph`` stays light.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tttgraph.errors import TTTGraphError

__all__ = [
    "CogVideoXBundle",
    "BundleError",
    "SCHEDULER_CONFIG",
    "decode_latents",
    "encode_text",
    "encode_video",
    "encode_videos",
    "load_pretrained",
    "save_bundle",
    "tiny_bundle",
    "transformer_inputs",
]

# CogVideoX's training schedule (diffusers' CogVideoXDDIMScheduler / CogVideoXDPMScheduler config of
# the released 5B model): v-prediction, zero terminal SNR, scaled-linear betas over 1000 steps.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "snr_shift_scale": 1.0,
}

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SPATIAL_COMPRESSION = 8
TEMPORAL_COMPRESSION = 4

# Text tokens per segment of the tiny default: the longest paragraph of the synthetic storyboards
# and of the bundled one-minute story (50 and 43 words and marks) fits, so none is truncated.
TINY_TEXT_TOKENS = 64
TINY_HEIGHT, TINY_WIDTH = 32, 48
# A tiny CogVideoX 1.0 transformer (tttgraph.models.tiny's config, sized for 32x48 pixel clips:
# a 4x6 latent, 2x3 patches per frame); text_embed_dim equals the tiny T5's d_model.
TINY_TRANSFORMER = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
    text_embed_dim=16, num_layers=2, sample_width=TINY_WIDTH // SPATIAL_COMPRESSION,
    sample_height=TINY_HEIGHT // SPATIAL_COMPRESSION, sample_frames=49, patch_size=2,
    max_text_seq_length=TINY_TEXT_TOKENS, use_rotary_positional_embeddings=True,
)
# Four levels (three 2x spatial downsamplings = 8x; the first two also halve time = 4x), as the
# real VAE, with 8-16 channels instead of 128-512 and one resnet per level instead of three.
TINY_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
    norm_num_groups=4, temporal_compression_ratio=4, sample_height=TINY_HEIGHT, sample_width=TINY_WIDTH,
    scaling_factor=1.15258426,
)
TINY_T5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
               relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-gelu")
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<start_scene>", "<end_scene>")


class BundleError(TTTGraphError):
    """A model directory, a video or latents do not fit the CogVideoX bundle."""


@dataclass
class CogVideoXBundle:
    """The parts of a CogVideoX pipeline (see the module docstring for the layouts).

    Attributes:
        transformer: diffusers ``CogVideoXTransformer3DModel``.
        vae: diffusers ``AutoencoderKLCogVideoX``.
        text_encoder: transformers ``T5EncoderModel``.
        tokenizer: a transformers tokenizer (``tokenizer(texts, padding="max_length", ...)``).
        scheduler_config: keyword arguments of diffusers' ``CogVideoXDPMScheduler`` /
            ``CogVideoXDDIMScheduler`` (``.from_config(bundle.scheduler_config)``).
        text_tokens_per_segment: L, text tokens per storyboard paragraph (226 for CogVideoX).
        source: ``"tiny"`` or the directory the bundle was loaded from.
    """

    transformer: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict
    text_tokens_per_segment: int
    source: str

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def text_embed_dim(self) -> int:
        return int(self.transformer.config.text_embed_dim)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along H and W, as diffusers derives it from the VAE's config (8 for
        CogVideoX's VAE; the world model's pixel autoencoder states its own)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Heights and widths must be multiples of this (the VAE's compression times the transformer's patch)."""
        return self.spatial_compression * int(self.transformer.config.patch_size)

    def check_pixels(self, height: int, width: int) -> None:
        """Raise :class:`BundleError` unless a ``height`` x ``width`` video fits VAE and patches."""
        m = self.pixel_multiple
        if height <= 0 or width <= 0 or height % m or width % m:
            fix_h, fix_w = max(m, height - height % m), max(m, width - width % m)
            raise BundleError(
                f"a {height}x{width} video does not fit CogVideoX: height and width must be positive multiples "
                f"of {m} (VAE {self.spatial_compression}x times patch size {m // self.spatial_compression}); "
                f"crop or resize to e.g. {fix_h}x{fix_w}"
            )


# ---------------------------------------------------------------------------------------------
# The tiny bundle
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def storyboard_vocabulary() -> tuple[str, ...]:
    """Every word the synthetic storyboards and the world's stories use, lower-cased and sorted (the
    tiny tokenizer's vocab).

    Derived from the generators themselves (every action x cast x background of
    ``tttgraph.data.synthetic``, a few seeds so that the optional closing sentences appear; the
    world's palettes and the paragraphs of long stories of ``tttgraph.data.world``), so that it
    follows them.
    """
    from tttgraph.data import synthetic

    texts = []
    names = sorted(synthetic.CHARACTERS)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        for action in synthetic.ACTIONS:
            for a in names:
                for b in names:
                    for bg in sorted(synthetic.BACKGROUNDS):
                        texts.append(synthetic._describe(action, a, b, bg, rng))
    texts += _world_texts()
    words = set()
    for text in texts:
        words.update(_words(text))
    return tuple(sorted(words))


def _world_texts() -> list[str]:
    """Paragraphs of :mod:`tttgraph.data.world` stories and every word of its palettes."""
    from tttgraph.data import world

    texts = [" ".join((*world.NAMES, *world.COLOURS, *world.SHAPES, *world.SIZES, *world.BACKGROUNDS,
                       *world.SLOTS, *world.ACTIONS.values()))]
    for split in world.SPLITS:
        for seed in range(40):
            texts += world.make_story(seed, world.MAX_SEGMENTS, split).paragraphs()
    return texts


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def tiny_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over :func:`storyboard_vocabulary`, built offline.

    Lower-cases, splits words and punctuation, keeps ``<start_scene>`` / ``<end_scene>`` whole,
    appends ``</s>`` as T5 does; pad id 0, eos 1, unk 2 (T5's convention).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in storyboard_vocabulary():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<start_scene>", "<end_scene>"], model_max_length=TINY_TEXT_TOKENS,
    )


def t5_encoder(tokenizer, config: dict[str, Any]):
    """A freshly initialised T5 encoder of ``config``'s sizes over ``tokenizer``'s vocabulary (T5's ids:
    pad 0, eos 1), drawing its weights from the global RNG."""
    from transformers import T5Config, T5EncoderModel

    t5 = T5Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                  is_encoder_decoder=False, **config)
    return T5EncoderModel(t5)


def tiny_bundle(seed: int = 0) -> CogVideoXBundle:
    """All four parts with tiny sizes and seeded random weights (float32, eval mode, CPU, offline).

    Clips must be multiples of 16 pixels high and wide (default 32x48: a 4x6 latent with 4 channels,
    2x3 patches per frame); the transformer takes 16 text tokens per segment of 16 features.
    Same ``seed``, same weights; the global RNG is left as it was.
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**TINY_TRANSFORMER)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLCogVideoX(**TINY_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = t5_encoder(tokenizer, TINY_T5)
    transformer._tttgraph_family = "cogvideox"
    return CogVideoXBundle(
        transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        scheduler_config=dict(SCHEDULER_CONFIG), text_tokens_per_segment=TINY_TEXT_TOKENS, source="tiny",
    )


# ---------------------------------------------------------------------------------------------
# Pretrained: a diffusers-format directory
# ---------------------------------------------------------------------------------------------


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise BundleError(
            f"{path} is not a directory; pass a diffusers-format CogVideoX checkpoint directory with the "
            f"subfolders {', '.join(SUBFOLDERS)} (e.g. a local copy of THUDM/CogVideoX-5b)"
        )
    missing = [name for name in SUBFOLDERS if not (path / name).is_dir()]
    if missing:
        raise BundleError(
            f"{path} lacks the subfolder(s) {', '.join(missing)}; a diffusers-format CogVideoX checkpoint has "
            f"{', '.join(SUBFOLDERS)} (download the whole model repository, not single files)"
        )
    _check_files(path)


_BUNDLE_FIX = ("download that file again (e.g. huggingface-cli download THUDM/CogVideoX-5b --local-dir DIR) or "
               "write the directory again")


def _check_files(path: Path) -> None:
    """Validate every JSON and safetensors file of the subfolders (safetensors headers only: cheap at
    any size), so that a damaged download fails here naming the file, not deep inside diffusers."""
    from tttgraph.safe_read import check_safetensors, read_json

    for name in SUBFOLDERS:
        for file in sorted((path / name).glob("*.json")):
            read_json(file, "pretrained model file", _BUNDLE_FIX, error=BundleError)
        for file in sorted((path / name).glob("*.safetensors")):
            check_safetensors(file, "pretrained model file", _BUNDLE_FIX, error=BundleError)


def _read_scheduler(path: Path) -> dict:
    from tttgraph.safe_read import read_json

    file = path / "scheduler" / "scheduler_config.json"
    if not file.exists():
        raise BundleError(f"{file} is missing; the scheduler subfolder needs its scheduler_config.json")
    data = read_json(file, "scheduler config", _BUNDLE_FIX, error=BundleError)
    config = {k: v for k, v in data.items() if not k.startswith("_")}
    if config.get("prediction_type", "v_prediction") != "v_prediction":
        raise BundleError(
            f"{file} has prediction_type={config['prediction_type']!r}; tttgraph's CogVideoX recipe trains "
            "and samples with v_prediction (CogVideoX-2B/5B use it)"
        )
    return {**SCHEDULER_CONFIG, **config}


def load_pretrained(path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu") -> CogVideoXBundle:
    """Load a diffusers-format CogVideoX directory from local files only (nothing is downloaded).

    ``path`` must hold ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and
    ``scheduler/``; the models are loaded in ``dtype`` on ``device``, in eval mode.
    ``text_tokens_per_segment`` is the transformer's ``max_text_seq_length`` (226 for CogVideoX).
    """
    path = Path(path).expanduser()
    _check_dir(path)
    scheduler_config = _read_scheduler(path)
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    def load(name, fn):
        try:
            return fn(path / name)
        except Exception as err:  # diffusers, transformers and tokenizers each raise their own types
            raise BundleError(f"could not load {path / name}: {err}; {_BUNDLE_FIX}") from err

    transformer = load("transformer", lambda p: CogVideoXTransformer3DModel.from_pretrained(
        p, torch_dtype=dtype, local_files_only=True))
    vae = load("vae", lambda p: AutoencoderKLCogVideoX.from_pretrained(p, torch_dtype=dtype, local_files_only=True))
    text_encoder = load("text_encoder", lambda p: T5EncoderModel.from_pretrained(
        p, dtype=dtype, local_files_only=True))
    tokenizer = load("tokenizer", lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True))
    if transformer.config.text_embed_dim != text_encoder.config.d_model:
        raise BundleError(
            f"{path}: the transformer takes text features of {transformer.config.text_embed_dim}, the text "
            f"encoder gives {text_encoder.config.d_model}; the subfolders come from different models"
        )
    if transformer.config.in_channels != vae.config.latent_channels:
        raise BundleError(
            f"{path}: the transformer takes {transformer.config.in_channels} latent channels, the VAE gives "
            f"{vae.config.latent_channels}; the subfolders come from different models"
        )
    return CogVideoXBundle(
        transformer=transformer.to(device).eval(), vae=vae.to(device).eval(),
        text_encoder=text_encoder.to(device).eval(), tokenizer=tokenizer, scheduler_config=scheduler_config,
        text_tokens_per_segment=int(transformer.config.max_text_seq_length), source=str(path),
    )


def save_bundle(bundle: CogVideoXBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` as a diffusers-format directory that :func:`load_pretrained` reads back."""
    from tttgraph.config import file_mode, write_atomic

    path = Path(path)
    bundle.transformer.save_pretrained(path / "transformer")
    bundle.vae.save_pretrained(path / "vae")
    bundle.text_encoder.save_pretrained(path / "text_encoder")
    bundle.tokenizer.save_pretrained(path / "tokenizer")
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        for file in (path / name).iterdir():
            if file.is_file():
                os.chmod(file, file_mode())  # some save_pretrained versions write weights 0o600
    config = {"_class_name": "CogVideoXDPMScheduler", **bundle.scheduler_config}
    write_atomic(path / "scheduler" / "scheduler_config.json", json.dumps(config, indent=1) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Encoders, decoder, transformer inputs
# ---------------------------------------------------------------------------------------------


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a module computes: its first parameter's, else its first buffer's (the pixel autoencoder has
    no parameters)."""
    import itertools

    p = next(itertools.chain(module.parameters(), module.buffers()))
    return p.device, p.dtype


@torch.no_grad()
def encode_text(bundle: CogVideoXBundle, paragraphs: list[str]) -> Tensor:
    """T5 embeddings of a storyboard: ``[S, L, C]``, one row per paragraph.

    Each paragraph is tokenized to exactly ``L = bundle.text_tokens_per_segment`` tokens (padded or
    truncated, ``</s>`` included) and encoded without an attention mask, as the CogVideoX pipeline
    does (the model was trained on padded prompts). C is the text encoder's width.
    """
    if isinstance(paragraphs, str) or not paragraphs or not all(isinstance(p, str) for p in paragraphs):
        raise BundleError(f"paragraphs must be a non-empty list of strings (one per segment), got {paragraphs!r:.80}")
    length = bundle.text_tokens_per_segment
    ids = bundle.tokenizer(list(paragraphs), padding="max_length", max_length=length, truncation=True,
                           add_special_tokens=True, return_tensors="pt")["input_ids"]
    device, _ = module_device_dtype(bundle.text_encoder)
    return bundle.text_encoder(ids.to(device))[0]


def _video_tensor(video) -> Tensor:
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if not isinstance(video, Tensor) or video.dtype != torch.uint8 or video.dim() != 4 or video.shape[-1] != 3:
        got = f"{type(video).__name__} {getattr(video, 'dtype', '')} {tuple(getattr(video, 'shape', ()))}"
        raise BundleError(f"video must be uint8 [T, H, W, 3] (numpy or torch), got {got}")
    return video


@torch.no_grad()
def encode_video(bundle: CogVideoXBundle, video) -> Tensor:
    """VAE latents of one video: uint8 ``[T, H, W, 3]`` -> ``[F, C, h, w]``, ``F = (T - 1) // 4 + 1``.

    ``T`` must be ``4k + 1`` and H, W multiples of ``bundle.pixel_multiple``. The latents are the
    posterior mean times the VAE scaling factor (deterministic), in the VAE's dtype.
    """
    return encode_videos(bundle, [video])[0]


@torch.no_grad()
def encode_videos(bundle: CogVideoXBundle, videos: list) -> Tensor:
    """:func:`encode_video` of several videos of one shape in one VAE batch: ``[N, F, C, h, w]``.

    Faster for small videos (the tiny VAE is bound by per-op overhead); equal to encoding them one
    by one up to float rounding.
    """
    videos = [_video_tensor(v) for v in videos]
    if not videos or any(v.shape != videos[0].shape for v in videos):
        shapes = [tuple(v.shape) for v in videos]
        raise BundleError(f"encode_videos needs one or more videos of one shape, got {shapes}")
    video = torch.stack(videos)
    _, frames, height, width, _ = video.shape
    if (frames - 1) % TEMPORAL_COMPRESSION:
        k = (frames - 1) // TEMPORAL_COMPRESSION
        raise BundleError(
            f"a video of {frames} frames does not fit the CogVideoX VAE: it takes 4k+1 frames (e.g. "
            f"{4 * k + 1} or {4 * k + 5}); drop frames or repeat the last one"
        )
    bundle.check_pixels(height, width)
    vae = bundle.vae
    device, dtype = module_device_dtype(vae)
    x = video.to(device).permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0  # [N, 3, T, H, W] in [-1, 1]
    latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor  # [N, C, F, h, w]
    return latents.transpose(1, 2).contiguous()


def _decoder_batches(num_frames: int, batch: int = 2) -> list[tuple[int, int]]:
    """diffusers' ``AutoencoderKLCogVideoX._decode`` frame batches (the first takes the remainder)."""
    count = max(num_frames // batch, 1)
    rem = num_frames % batch
    return [(batch * i + (0 if i == 0 else rem), batch * (i + 1) + rem) for i in range(count)]


def _to_uint8(video: Tensor) -> Tensor:
    """[3, t, H, W] in [-1, 1] -> uint8 [3, t, H, W]."""
    return ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def decode_latents(bundle: CogVideoXBundle, latents: Tensor, *, tile_frames: int = 8,
                   progress: bool = False) -> np.ndarray:
    """Decode latents ``[F, C, h, w]`` (scaled as :func:`encode_video` returns them) to uint8 video.

    Returns ``[T, H, W, 3]`` with ``T = 4 * (F - 1) + 1``. The decoder runs over temporal tiles of
    about ``tile_frames`` latent frames, carrying its causal convolution cache from tile to tile
    and writing each tile's frames to the uint8 output at once, so memory beyond the output is
    bounded by one tile. The result equals ``vae.decode`` of the whole video (same frame batches,
    same cache).
    """
    if not isinstance(latents, Tensor) or latents.dim() != 4 or latents.shape[1] != bundle.vae.config.latent_channels:
        raise BundleError(
            f"latents must be [F, {bundle.vae.config.latent_channels}, h, w], got "
            f"{tuple(getattr(latents, 'shape', ()))}"
        )
    if not isinstance(tile_frames, int) or tile_frames < 2:
        raise BundleError(f"tile_frames must be an int >= 2, got {tile_frames!r}")
    from tttgraph.progress import progress_bar

    vae = bundle.vae
    device, dtype = module_device_dtype(vae)
    num, _, h, w = latents.shape
    if not hasattr(vae, "decoder"):  # the pixel autoencoder: a reshape, no cache to carry between tiles
        video = vae.decode(latents.to(device=device, dtype=dtype).transpose(0, 1)[None] / vae.config.scaling_factor)
        return _to_uint8(video.sample[0]).permute(1, 2, 3, 0).cpu().numpy()
    s = bundle.spatial_compression
    out = np.empty((TEMPORAL_COMPRESSION * (num - 1) + 1, h * s, w * s, 3), np.uint8)
    batches = _decoder_batches(num, vae.num_latent_frames_batch_size)
    per_tile = max(1, tile_frames // vae.num_latent_frames_batch_size)
    tiles = [batches[i:i + per_tile] for i in range(0, len(batches), per_tile)]
    cache, written = None, 0
    for tile in progress_bar(tiles, desc="VAE decode", unit="tile", disable=not progress):
        pieces = []
        for start, end in tile:
            z = latents[start:end].to(device=device, dtype=dtype).transpose(0, 1)[None] / vae.config.scaling_factor
            if vae.post_quant_conv is not None:
                z = vae.post_quant_conv(z)
            frames, cache = vae.decoder(z, conv_cache=cache)
            pieces.append(frames)
        pixels = _to_uint8(torch.cat(pieces, dim=2)[0])
        count = pixels.shape[1]
        out[written:written + count] = pixels.permute(1, 2, 3, 0).cpu().numpy()
        written += count
    assert written == out.shape[0], (written, out.shape)
    return out


@functools.lru_cache(maxsize=8)
def _rope(head_dim: int, grid: tuple[int, int], frames: int, patch_t: int | None, sample: tuple[int, int],
          patch: int) -> tuple[Tensor, Tensor]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    from tttgraph.models.tiny import _crop_region

    base_h, base_w = sample[0] // patch, sample[1] // patch
    if patch_t is None:
        crops = _crop_region(grid, base_w, base_h)
        cos, sin = get_3d_rotary_pos_embed(head_dim, crops, grid, frames)
    else:
        cos, sin = get_3d_rotary_pos_embed(head_dim, None, grid, (frames + patch_t - 1) // patch_t,
                                           grid_type="slice", max_size=(base_h, base_w))
    return cos.float(), sin.float()


def transformer_inputs(bundle: CogVideoXBundle, latents: Tensor, text: Tensor, timestep: Tensor) -> dict[str, Any]:
    """Forward keyword arguments of ``bundle.transformer`` (or its tttgraph transform).

    Args:
        latents: ``[B, F, C, h, w]`` noisy latents.
        text: ``[B, S*L, C_text]`` text embeddings, the segments' rows concatenated.
        timestep: ``[B]`` integer timesteps.

    Returns ``hidden_states``, ``encoder_hidden_states``, ``timestep`` and ``image_rotary_emb``
    (CogVideoX's 3D RoPE tables ``(cos, sin)``, each ``[F*gh*gw, head_dim]``, for this grid, as
    the diffusers pipeline computes them; None when the model uses no RoPE).
    """
    cfg = bundle.transformer.config
    if latents.dim() != 5 or latents.shape[2] != cfg.in_channels:
        raise BundleError(f"latents must be [B, F, {cfg.in_channels}, h, w], got {tuple(latents.shape)}")
    if text.dim() != 3 or text.shape[0] != latents.shape[0] or text.shape[2] != cfg.text_embed_dim:
        raise BundleError(
            f"text must be [B={latents.shape[0]}, S*L, {cfg.text_embed_dim}], got {tuple(text.shape)}"
        )
    if text.shape[1] % bundle.text_tokens_per_segment:
        raise BundleError(
            f"text has {text.shape[1]} tokens, not a multiple of text_tokens_per_segment="
            f"{bundle.text_tokens_per_segment} (one chunk per segment)"
        )
    _, frames, _, h, w = latents.shape
    p = cfg.patch_size
    if h % p or w % p:
        raise BundleError(f"a latent grid of {h}x{w} is not a multiple of the patch size {p}")
    rope = None
    if cfg.use_rotary_positional_embeddings:
        cos, sin = _rope(cfg.attention_head_dim, (h // p, w // p), frames, cfg.patch_size_t,
                         (cfg.sample_height, cfg.sample_width), p)
        rope = (cos.to(latents.device), sin.to(latents.device))
    if not isinstance(timestep, Tensor):
        timestep = torch.full((latents.shape[0],), int(timestep), dtype=torch.long)
    return {
        "hidden_states": latents,
        "encoder_hidden_states": text,
        "timestep": timestep.to(latents.device),
        "image_rotary_emb": rope,
    }
