"""One-minute, multi-scene video generation from a storyboard (docs/DESIGN.md §7, issue #7).

    from tttgraph.generate import GenerateOptions, generate
    result = generate(GenerateOptions(seconds=9, out="video.mp4"))       # the shipped world base model
    result = generate(GenerateOptions(tiny=True, out="video.mp4"))        # tiny random models (smoke runs)
    result = generate(GenerateOptions(pretrained="CogVideoX-5b", ttt="run/ttt", seconds=63))

Stages (each a function here, so a caller can reuse loaded models across runs):

1. :func:`plan` reads the storyboard and the model configs only, and describes the job:
   segments, latent and video frames, tokens, estimated memory and FLOPs (printed first).
2. :func:`load_models` builds or loads the CogVideoX bundle (T5, VAE, transformer) and transforms
   the transformer with tttgraph (segment-local attention + TTT layers), restoring trained TTT
   weights from ``ttt`` (a ``tttgraph.save`` directory) when given.
3. :func:`generate` encodes every segment's paragraph (scene markers added) and negative prompt,
   denoises the whole video in one pass (:func:`~tttgraph.generate.sampler.denoise`, resumable),
   decodes it with the VAE in temporal tiles and writes the MP4 (16 fps) and a PNG contact sheet.

Under ``torchrun`` every rank runs the same loop with the attention and TTT heads split across
ranks (:mod:`tttgraph.generate.distributed`); rank 0 writes checkpoints and outputs.

Base model: ``pretrained`` (a diffusers CogVideoX directory), ``world`` (the world base model's
weights), ``tiny`` (random tiny models); with none of them, the world base model that ships inside
the package (:mod:`tttgraph.models.world_model`) and its bundled 63 s held-out story.

Default TTT weights: with the default base model (or ``tiny``) and no ``ttt``, a fine-tuning output
at ``$TTTGRAPH_TTT_DIR`` or ``./runs/finetune/ttt`` (what a bare ``tttgraph finetune`` writes) is
used if it fits the base model; ``ttt="none"`` forces freshly initialised TTT layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tttgraph.config import TTTConfig
from tttgraph.errors import TTTGraphError
from tttgraph.generate.distributed import Parallel, init_from_env, shard_heads
from tttgraph.generate.estimate import Estimate, estimate, human
from tttgraph.generate.sampler import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_STEPS,
    LatentCheckpoint,
    SamplerSettings,
    denoise,
    job_fingerprint,
)
from tttgraph.generate.storyboard import SEGMENT_SECONDS, Storyboard, bundled_storyboard, load_storyboard
from tttgraph.generate.video_io import DEFAULT_FPS, contact_sheet, segment_frame_indices, write_mp4, write_png
from tttgraph.layout import SequenceLayout
from tttgraph.progress import abandon, progress_bar

TTT_DIR_ENV = "TTTGRAPH_TTT_DIR"
DEFAULT_TTT_DIR = Path("runs") / "finetune" / "ttt"  # `tttgraph finetune`'s default OUT/ttt
SPATIAL, TEMPORAL = 8, 4  # CogVideoX VAE compression


class GenerateError(TTTGraphError):
    """A generation request can't run as given (bad option, mismatched models)."""


@dataclass
class GenerateOptions:
    """Everything a generation takes; the CLI fills it from its flags.

    Attributes:
        storyboard: path of a .toml/.json/.yaml storyboard, a :class:`Storyboard`, or None for the
            bundled 63 s one (a held-out world story for the world model, else a CogVideoX storyboard).
        seconds: video length, a multiple of 3 (None: the whole storyboard); the first
            ``seconds / 3`` segments are used.
        seed, steps, guidance_scale: sampling (see :class:`SamplerSettings`); scale 6; steps None: the
            base model's default, 50 (25 for the world model: ``world_model.DEFAULT_SAMPLER_STEPS``).
        out: the MP4 to write; ``contact_sheet`` the PNG (None: ``out`` with ``.png``; "" for none).
        pretrained: a diffusers-format CogVideoX directory (see also ``world`` and ``tiny``; with
            none of the three, the shipped world base model).
        ttt: a ``tttgraph.save`` directory with trained TTT weights; None looks for the default
            fine-tuning output (default base model or tiny only), "none" uses fresh TTT layers.
        height, width: pixels (None: the model's native size, 480x720 for CogVideoX, 32x48 tiny).
        checkpoint: latent checkpoint file (None: ``out`` with ``.resume.safetensors``);
            ``checkpoint_every`` steps apart (0: none); ``resume`` continues from it.
        tile_frames: latent frames per VAE decode tile.
        device, dtype: where and in what precision the models run (defaults: CUDA + bfloat16 if
            available and a pretrained model is used, else CPU + float32 for tiny).
        context_parallel: under ``torchrun``, split each sequence by segments over the processes
            (``tttgraph.parallel``) instead of splitting the attention and TTT heads.
        backend: the ``tttgraph::ttt_mlp`` backend.
        tiny: tiny CogVideoX-architecture models with random weights (fast, for smoke runs and tests).
        tiny_seed: seed of the tiny models' random weights.
        world: the world base model (:mod:`tttgraph.models.world_model`): a directory of its weights,
            or "default" for the shipped ones (also what no base model at all means); storyboards are
            then world stories (``tttgraph.data.world`` JSON) or any storyboard in the world's words,
            at 32x48 pixels.
    """

    storyboard: str | os.PathLike | Storyboard | None = None
    seconds: int | None = None
    seed: int = 0
    steps: int | None = None
    guidance_scale: float = 6.0
    out: str | os.PathLike = "video.mp4"
    contact_sheet: str | os.PathLike | None = None
    pretrained: str | os.PathLike | None = None
    world: str | os.PathLike | None = None
    ttt: str | os.PathLike | None = None
    height: int | None = None
    width: int | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    resume: bool = True
    keep_checkpoint: bool = False
    tile_frames: int = 8
    fps: int = DEFAULT_FPS
    device: str | None = None
    dtype: str | None = None
    backend: str = "auto"
    tiny: bool = False
    tiny_seed: int = 0
    progress: bool = True
    context_parallel: bool = False  # under torchrun: split the sequence by segments, not the heads

    def sampler(self, default_steps: int = DEFAULT_STEPS) -> SamplerSettings:
        steps = default_steps if self.steps is None else self.steps
        return SamplerSettings(steps, self.guidance_scale, self.seed, self.checkpoint_every)

    def base_model(self) -> str:
        """Which base model runs: "pretrained", "world" or "tiny" (none named: the shipped world model)."""
        named = [flag for flag, given in (("--pretrained", self.pretrained is not None),
                                          ("--world", self.world is not None), ("--tiny", self.tiny)) if given]
        if len(named) > 1:
            raise GenerateError(f"{' and '.join(named)} each name a base model; pass one of them")
        if self.pretrained is not None:
            return "pretrained"
        return "tiny" if self.tiny else "world"

    def named_base_model(self) -> bool:
        """Whether the base model was asked for by name (the default fine-tuning output is for the default)."""
        return self.pretrained is not None or self.world is not None


@dataclass
class Plan:
    """What will run, known before any model is built (see :func:`plan`)."""

    storyboard: Storyboard
    seconds: int
    latent_frames: int
    video_frames: int
    height: int
    width: int
    latent_channels: int
    transformer_config: dict[str, Any]
    ttt_config: TTTConfig
    ttt_dir: Path | None
    text_tokens_per_segment: int
    device: torch.device
    dtype: torch.dtype
    settings: SamplerSettings
    estimate: Estimate
    out: Path
    contact_sheet: Path | None
    checkpoint: Path | None
    source: str
    ttt_auto: bool = False  # ttt_dir is the default fine-tuning output, not asked for
    notes: list[str] = field(default_factory=list)

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        """[1, F, C, h, w]"""
        s = _spatial(self.source)
        return (1, self.latent_frames, self.latent_channels, self.height // s, self.width // s)

    def summary(self) -> str:
        e, s = self.estimate, self.settings
        board = self.storyboard
        lines = [
            f"storyboard   {board.source}{f' ({board.title})' if board.title else ''}: {len(board.scenes)} scene(s), "
            f"{board.num_segments} segment(s) of 3 s",
            f"video        {self.seconds} s = {self.video_frames} frames at {DEFAULT_FPS} fps, "
            f"{self.width}x{self.height} px; latents {self.latent_frames} x {self.latent_channels} x "
            f"{self.latent_shape[3]} x {self.latent_shape[4]}",
            f"tokens       {e.tokens:,} per sample = {e.segments} segments x "
            f"({self.text_tokens_per_segment} text + {e.video_tokens // self.latent_frames} per frame x "
            f"{self.ttt_config.segment_latent_frames}(+{self.ttt_config.segment_overlap_frames}) frames); "
            f"batch {s.batch} ({'CFG' if s.cfg else 'no CFG'})",
            f"model        {self.source}: {human(e.base_params)} params + {human(e.ttt_params)} TTT "
            f"({'trained: ' + str(self.ttt_dir) if self.ttt_dir else 'freshly initialised'}"
            f"{', the default fine-tuning output' if self.ttt_auto else ''}); "
            f"{str(self.dtype).replace('torch.', '')} on {self.device}",
            f"sampler      {s.steps} steps, v-prediction DPM-Solver++(2M) (CogVideoXDPMScheduler), dynamic CFG "
            f"1 -> {1 + s.guidance_scale:g}, seed {s.seed}",
            f"compute      {human(e.flops_per_step, 'FLOP')} per step (attention {human(e.attention_flops, 'FLOP')}, "
            f"TTT {human(e.ttt_flops, 'FLOP')}), {human(e.flops_per_step * s.steps, 'FLOP')} in all; the original "
            f"model (full attention) would take {human(e.full_attention_flops_per_step, 'FLOP')} per step "
            f"({e.full_attention_flops_per_step / e.flops_per_step:.1f}x)",
            f"memory       ~{human(e.weights_bytes, 'B')} transformer weights + ~{human(e.activation_bytes, 'B')} "
            f"activations (rough; T5 and VAE extra)",
            f"output       {self.out}" + (f" + contact sheet {self.contact_sheet}" if self.contact_sheet else "")
            + (f"; checkpoint every {s.checkpoint_every} steps to {self.checkpoint}" if self.checkpoint else ""),
        ]
        return "\n".join(lines + [f"note         {n}" for n in self.notes])


@dataclass
class LoadedModels:
    """A bundle whose transformer was transformed for one latent shape and CFG batch."""

    bundle: Any  # tttgraph.models.cogvideox_bundle.CogVideoXBundle
    model: nn.Module
    latent_shape: tuple[int, ...]
    batch: int
    ttt_dir: Path | None
    ttt_digest: str
    parallel: Parallel
    seconds: float
    split: dict[str, int] = field(default_factory=dict)


@dataclass
class GenerationResult:
    video: Path | None
    contact_sheet: Path | None
    latents: Tensor  # [1, F, C, h, w] float32, CPU
    frames: int
    size: tuple[int, int]  # (height, width)
    fps: int
    resumed_from: int
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def _resolve_ttt(options: GenerateOptions) -> tuple[Path | None, bool]:
    """(TTT save directory or None, whether it was picked up by default rather than asked for)."""
    ttt = options.ttt
    if ttt is not None and str(ttt).lower() == "none":
        return None, False
    if ttt is not None:
        path = Path(ttt).expanduser()
        if not path.is_dir():
            raise GenerateError(f"--ttt {ttt}: no such directory; pass a directory written by tttgraph.save "
                                "(e.g. the fine-tuning example's OUT/ttt) or leave --ttt out")
        return path, False
    if options.named_base_model():
        return None, False  # the default fine-tuning output belongs to the default base model (or --tiny)
    default = Path(os.environ.get(TTT_DIR_ENV) or DEFAULT_TTT_DIR)
    return (default, True) if (default / "tttgraph_recipe.json").is_file() else (None, False)


WORLD_SOURCE = "world:"  # prefix of Plan.source for the world base model: "world:<weights dir>"


def _world_dir(options: GenerateOptions) -> Path:
    from tttgraph.models.world_model import WEIGHTS_DIR, weights_available

    named = options.world if options.world is not None else "default"
    where = WEIGHTS_DIR if str(named) == "default" else Path(named).expanduser()
    if not weights_available(where):
        raise GenerateError(f"--world {named}: {where} holds no world base model weights; train them with "
                            "`tttgraph train-world --out DIR` and pass --world DIR/weights")
    return where


def _spatial(source: str) -> int:
    """Pixels per latent cell of the source's autoencoder (the world's pixel autoencoder: 4)."""
    if source.startswith(WORLD_SOURCE):
        from tttgraph.models.world_model import WORLD_AUTOENCODER

        return int(WORLD_AUTOENCODER["spatial_compression"])
    return SPATIAL


def _transformer_config(options: GenerateOptions) -> tuple[dict[str, Any], int, str]:
    """(transformer config, text tokens per segment, source) without loading any weights."""
    base = options.base_model()
    if base == "world":
        from tttgraph.models.world_model import WORLD_TEXT_TOKENS, WORLD_TRANSFORMER

        return dict(WORLD_TRANSFORMER), WORLD_TEXT_TOKENS, f"{WORLD_SOURCE}{_world_dir(options)}"
    if base == "tiny":
        from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS, TINY_TRANSFORMER

        return dict(TINY_TRANSFORMER), TINY_TEXT_TOKENS, "tiny"
    path = Path(options.pretrained).expanduser() / "transformer" / "config.json"
    if not path.exists():
        raise GenerateError(
            f"--pretrained {options.pretrained}: {path} is missing; pass a diffusers-format CogVideoX directory "
            "(transformer/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    from tttgraph.safe_read import read_json

    config = read_json(path, "pretrained transformer config", "download it again (or the whole model directory)",
                       error=GenerateError)
    defaults = {"in_channels": 16, "patch_size": 2, "time_embed_dim": 512, "text_embed_dim": 4096,
                "sample_height": 60, "sample_width": 90, "max_text_seq_length": 226}
    config = {**defaults, **config}
    missing = [k for k in ("num_attention_heads", "attention_head_dim", "num_layers") if k not in config]
    if missing:
        raise GenerateError(f"{path} lacks {missing}; is it a CogVideoXTransformer3DModel config?")
    return config, int(config["max_text_seq_length"]), str(options.pretrained)


def _ttt_config(ttt_dir: Path | None, seconds: int, text_tokens: int, segments: int, backend: str) -> TTTConfig:
    """The preset (fresh layers) or the recipe's config, checked to cut the video into ``segments``."""
    from tttgraph import presets

    if ttt_dir is None:
        return presets.cogvideox_5b(seconds, text_tokens_per_segment=text_tokens, backend=backend)
    from tttgraph.checkpoint import read_recipe

    cfg = TTTConfig.from_dict(read_recipe(ttt_dir)["config"])
    if cfg.text_tokens_per_segment not in (None, text_tokens):
        raise GenerateError(
            f"--ttt {ttt_dir} was trained with {cfg.text_tokens_per_segment} text tokens per segment, the model "
            f"takes {text_tokens}; use TTT weights trained on this base model"
        )
    if cfg.segment_latent_frames is None:
        # Segmentation off: one attention over the whole video and every paragraph, as the untransformed
        # model would run (a full-attention bound that keeps paragraphs apart is attention_scope="video").
        return cfg.replace(backend=backend)
    frames = TEMPORAL * seconds + 1
    found = SequenceLayout(text_tokens, 1, cfg.segment_latent_frames, cfg.segment_overlap_frames).num_segments(frames)
    if found != segments:
        raise GenerateError(
            f"--ttt {ttt_dir}'s config cuts {frames} latent frames into {found} segments (segment_latent_frames="
            f"{cfg.segment_latent_frames}, overlap {cfg.segment_overlap_frames}) but {seconds} s of storyboard has "
            f"{segments} paragraphs; generation needs 12-frame (3 s) segments + 1 overlap, as presets.cogvideox_5b"
        )
    return cfg.replace(text_tokens_per_segment=text_tokens, backend=backend)


def _default_steps(options: GenerateOptions) -> int:
    if options.base_model() == "world":
        from tttgraph.models.world_model import DEFAULT_SAMPLER_STEPS

        return DEFAULT_SAMPLER_STEPS
    return DEFAULT_STEPS


def _device_dtype(options: GenerateOptions, par: Parallel) -> tuple[torch.device, torch.dtype]:
    device = options.device or ("cuda" if torch.cuda.is_available() and options.pretrained else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and par.enabled:
        device = torch.device("cuda", par.local_rank)
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    name = options.dtype or ("bfloat16" if options.pretrained else "float32")
    if name not in names:
        raise GenerateError(f"dtype {name!r} is not one of {sorted(names)}")
    return device, names[name]


def plan(options: GenerateOptions, par: Parallel | None = None) -> Plan:
    """Validate ``options`` and describe the job, reading only the storyboard and config files."""
    par = par or Parallel()
    board = options.storyboard
    if board is None:
        board = bundled_storyboard("world_one_minute" if options.base_model() == "world" else "one_minute")
    if not isinstance(board, Storyboard):
        board = load_storyboard(board)
    seconds = board.seconds if options.seconds is None else options.seconds
    board = board.first_seconds(seconds)
    settings = options.sampler(_default_steps(options))
    out = Path(options.out)
    if out.suffix.lower() != ".mp4":
        raise GenerateError(f"--out {out}: the video is written as MP4; give a path ending in .mp4")
    config, text_tokens, source = _transformer_config(options)
    ttt_dir, auto = _resolve_ttt(options)
    notes = []
    try:
        cfg = _ttt_config(ttt_dir, seconds, text_tokens, board.num_segments, options.backend)
    except TTTGraphError as err:
        if not auto:
            raise
        # A default pick-up must not break the no-argument command: say why and use fresh layers.
        notes.append(f"not using the fine-tuning output {ttt_dir}: {err}")
        ttt_dir, auto = None, False
        cfg = _ttt_config(None, seconds, text_tokens, board.num_segments, options.backend)
    spatial = _spatial(source)
    height = options.height or int(config["sample_height"]) * spatial
    width = options.width or int(config["sample_width"]) * spatial
    multiple = spatial * int(config["patch_size"])
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise GenerateError(f"--height/--width {height}x{width}: both must be positive multiples of {multiple} "
                            f"(VAE {spatial}x times patch {config['patch_size']})")
    frames = TEMPORAL * seconds + 1  # 16 fps video: 48 frames per 3 s segment plus the first frame
    full = cfg.segment_latent_frames is None  # every paragraph's tokens in the one attention
    layout = SequenceLayout(text_tokens * (board.num_segments if full else 1), 1, cfg.segment_latent_frames,
                            cfg.segment_overlap_frames, global_video=cfg.attention_scope == "video")
    device, dtype = _device_dtype(options, par)
    est = estimate(config, frames, (height // spatial, width // spatial), layout, batch=settings.batch,
                   dtype_bytes=torch.empty((), dtype=dtype).element_size(), mlp_expansion=cfg.mlp_expansion)
    sheet = None if options.contact_sheet == "" else Path(options.contact_sheet or out.with_suffix(".png"))
    ckpt = Path(options.checkpoint) if options.checkpoint else out.with_suffix(".resume.safetensors")
    return Plan(
        storyboard=board, seconds=seconds, latent_frames=frames, video_frames=TEMPORAL * (frames - 1) + 1,
        height=height, width=width, latent_channels=int(config["in_channels"]), transformer_config=config,
        ttt_config=cfg, ttt_dir=ttt_dir, text_tokens_per_segment=text_tokens, device=device, dtype=dtype,
        settings=settings, estimate=est, out=out, contact_sheet=sheet,
        checkpoint=ckpt if settings.checkpoint_every else None, source=source, ttt_auto=auto, notes=notes,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def _ttt_digest(ttt_dir: Path | None) -> str:
    """Identity of the TTT weights for resume checks: the recipe's tensor checksums."""
    if ttt_dir is None:
        return "fresh"
    from tttgraph.checkpoint import read_recipe

    checksums = read_recipe(ttt_dir)["checksums"]
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:16]


def _example_inputs(job: Plan, bundle: Any) -> dict[str, Any]:
    """What ``transform`` captures and checks the model on: one sample of at most two segments.

    The transformed model runs at any batch and length (segments are cut at run time), so the
    example need not be the job's; a short one makes capture and the transform's self-check a few
    seconds instead of a full-length forward pass (half the set-up time of a 9 s CPU run)."""
    from tttgraph.models.cogvideox_bundle import transformer_inputs

    cfg = job.ttt_config
    segments = min(job.estimate.segments, 2)
    frames = job.latent_frames if cfg.segment_latent_frames is None else min(
        job.latent_frames, segments * cfg.segment_latent_frames + cfg.segment_overlap_frames)
    text_tokens = job.estimate.text_tokens // job.estimate.segments * segments
    latents = torch.zeros((1, frames, *job.latent_shape[2:]), dtype=job.dtype, device=job.device)
    text = torch.zeros(1, text_tokens, int(bundle.transformer.config.text_embed_dim), dtype=job.dtype,
                       device=job.device)
    return transformer_inputs(bundle, latents, text, torch.full((1,), 999, dtype=torch.long))


def load_models(job: Plan, *, options: GenerateOptions | None = None, par: Parallel | None = None,
                bundle: Any = None, out: Callable[[str], None] = print) -> LoadedModels:
    """Build/load the bundle for ``job`` and transform its transformer (restoring ``job.ttt_dir``).

    ``bundle`` may be given to reuse one (its transformer must not be transformed yet). A default
    fine-tuning output (``job.ttt_auto``) that does not fit the base model is skipped with a note.
    """
    from tttgraph.checkpoint import RestoreError, restore
    from tttgraph.models.cogvideox_bundle import load_pretrained, tiny_bundle
    from tttgraph.rewrite import transform

    options = options or GenerateOptions()
    par = par or Parallel()
    start = time.perf_counter()
    if bundle is None:
        if job.source == "tiny" or job.source.startswith(WORLD_SOURCE):
            if job.source == "tiny":
                bundle = tiny_bundle(options.tiny_seed)
            else:
                from tttgraph.models.world_model import world_bundle

                bundle = world_bundle(job.source[len(WORLD_SOURCE):])
            for part in (bundle.transformer, bundle.vae, bundle.text_encoder):
                part.to(job.device)
                if job.dtype != torch.float32:  # diffusers warns about any dtype cast, even a no-op one
                    part.to(job.dtype)
        else:
            bundle = load_pretrained(job.source, dtype=job.dtype, device=job.device)
    batch = job.settings.batch
    example = _example_inputs(job, bundle)
    show = options.progress and par.is_main
    ttt_dir = job.ttt_dir
    model = None
    if ttt_dir is not None:
        try:
            model = restore(bundle.transformer, ttt_dir, example, progress=show)
        except RestoreError as err:
            if not job.ttt_auto:
                raise
            out(f"note: not using the fine-tuning output {ttt_dir}: {err}; using fresh TTT layers")
            ttt_dir = None
    if model is None:
        # Fresh TTT layers draw their initial weights from the global RNG: seed it (and put it back
        # afterwards) so that every run, and every rank of a distributed run, gets the same layers.
        with torch.random.fork_rng(devices=[job.device] if job.device.type == "cuda" else []):
            torch.manual_seed(options.tiny_seed)
            model = transform(bundle.transformer, job.ttt_config, example, progress=show)
    model.eval()
    split = shard_heads(model, par)
    return LoadedModels(bundle, model, job.latent_shape, batch, ttt_dir, _ttt_digest(ttt_dir), par,
                        time.perf_counter() - start, split)


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _text(bundle, board: Storyboard, cfg: bool, device, dtype) -> Tensor:
    """[B, S*L, C]: the negative prompts' embeddings then the paragraphs' (B = 2), or the paragraphs' only."""
    from tttgraph.models.cogvideox_bundle import encode_text

    rows = [encode_text(bundle, board.paragraphs())]  # [S, L, C]
    if cfg:
        rows.insert(0, encode_text(bundle, board.negative_paragraphs()))
    return torch.stack([r.flatten(0, 1) for r in rows]).to(device=device, dtype=dtype)


def _truncated(bundle, paragraphs: list[str]) -> list[int]:
    """Token counts of the paragraphs longer than the model's text chunk."""
    lengths = [len(ids) for ids in bundle.tokenizer(paragraphs, add_special_tokens=True, verbose=False)["input_ids"]]
    return [n for n in lengths if n > bundle.text_tokens_per_segment]


def generate(
    options: GenerateOptions | None = None,
    *,
    models: LoadedModels | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    out: Callable[[str], None] = print,
) -> GenerationResult:
    """Generate the video described by ``options``; returns paths, latents and timings.

    ``models`` reuses models loaded by :func:`load_models` for the same shape and TTT weights.
    ``callback(steps_done, latents)`` runs after every denoising step. Under ``torchrun`` only rank
    0 writes files (other ranks return ``video=None``).
    """
    options = options or GenerateOptions()
    par = models.parallel if models is not None else init_from_env(options.device, options.context_parallel)
    job = plan(options, par)
    say = out if par.is_main else (lambda _msg: None)
    say(job.summary())
    if models is None:
        models = load_models(job, options=options, par=par, out=say)
        say(f"models ready in {models.seconds:.1f} s (transformed: segment-local attention + TTT layers"
            + (f"; {'sequences' if par.context else 'heads'} of {models.split['attention']} attentions and "
               f"{models.split['ttt']} TTT layers split over {par.world} processes" if par.enabled else "") + ")")
    elif models.latent_shape != job.latent_shape or models.batch != job.settings.batch or (
            models.ttt_dir != job.ttt_dir and not job.ttt_auto):
        raise GenerateError(
            f"the loaded models were prepared for latents {models.latent_shape}, batch {models.batch}, TTT "
            f"{models.ttt_dir}; this job needs {job.latent_shape}, batch {job.settings.batch}, TTT {job.ttt_dir}. "
            "Load models for this job (load_models(plan(options)))"
        )
    timings: dict[str, float] = {"load": models.seconds}
    bundle, model = models.bundle, models.model

    start = time.perf_counter()
    long = _truncated(bundle, job.storyboard.paragraphs())
    if long:
        say(f"note: {len(long)} of {job.storyboard.num_segments} paragraphs exceed {bundle.text_tokens_per_segment} "
            f"text tokens and are truncated (longest {max(long)} tokens)")
    text = _text(bundle, job.storyboard, job.settings.cfg, job.device, job.dtype)
    timings["text"] = time.perf_counter() - start

    def predict(x: Tensor, t: Tensor) -> Tensor:
        from tttgraph.models.cogvideox_bundle import transformer_inputs

        return model(**transformer_inputs(bundle, x, text, t), return_dict=False)[0]

    job_id = job_fingerprint(job.settings, job.latent_shape, storyboard=job.storyboard.prompt_fingerprint(),
                             model=job.source, tiny_seed=options.tiny_seed if job.source == "tiny" else None,
                             ttt=models.ttt_digest, dtype=str(job.dtype), ttt_config=job.ttt_config.to_dict())
    checkpoint = None
    if job.checkpoint is not None:
        checkpoint = LatentCheckpoint(job.checkpoint, job_id)
        if not options.resume and par.is_main:
            checkpoint.remove()
        if par.enabled:
            import torch.distributed as dist

            dist.barrier()  # nobody reads a checkpoint rank 0 is about to remove
    resumed = checkpoint.load() if checkpoint is not None else None
    resumed_from = resumed[0] if resumed else 0
    if resumed_from:
        say(f"resuming from {job.checkpoint} at step {resumed_from}/{job.settings.steps}")

    start = time.perf_counter()
    # The progress display is drawn here, through the step callback (denoise's own is off), so that an
    # interrupt can abandon it before the one-line message is printed.
    bar = progress_bar(total=job.settings.steps, initial=resumed_from, desc="denoising", unit="step",
                       disable=not (options.progress and par.is_main))

    def on_step(done: int, x: Tensor) -> None:
        bar.update(1)
        if callback is not None:
            callback(done, x)

    with torch.no_grad():
        try:
            latents = denoise(
                predict, job.latent_shape, job.settings, bundle.scheduler_config, device=job.device, dtype=job.dtype,
                checkpoint=checkpoint, write_checkpoints=par.is_main, callback=on_step, progress=False,
            )  # fmt: skip
        except BaseException:
            abandon(bar)
            raise
    bar.close()
    timings["denoise"] = time.perf_counter() - start
    latents = latents.float().cpu()
    result = GenerationResult(None, None, latents, job.video_frames, (job.height, job.width), options.fps,
                              resumed_from, timings)
    if par.is_main:
        _decode_and_write(job, bundle, latents, options, result, say)
        if checkpoint is not None and not options.keep_checkpoint:
            checkpoint.remove()
    if par.enabled:
        import torch.distributed as dist

        dist.barrier()
    return result


def _decode_and_write(job: Plan, bundle, latents: Tensor, options: GenerateOptions, result: GenerationResult,
                      say: Callable[[str], None]) -> None:
    from tttgraph.models.cogvideox_bundle import decode_latents

    start = time.perf_counter()
    frames = decode_latents(bundle, latents[0].to(job.dtype), tile_frames=options.tile_frames,
                            progress=options.progress)
    result.timings["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    result.video = write_mp4(frames, job.out, fps=options.fps)
    if job.contact_sheet is not None:
        board = job.storyboard
        sheet = contact_sheet(frames, segment_frame_indices(len(frames), board.num_segments),
                              labels=segment_labels(board), title=_sheet_title(job))
        result.contact_sheet = write_png(sheet, job.contact_sheet)
    result.timings["write"] = time.perf_counter() - start
    result.frames = int(frames.shape[0])
    total = sum(result.timings.values())
    say(f"wrote {result.video} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {options.fps} fps"
        f"{f'; contact sheet {result.contact_sheet}' if result.contact_sheet else ''}) in {total:.1f} s: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))


def segment_labels(board: Storyboard) -> list[list[str]]:
    """Contact-sheet lines of each segment: ``seg 3 · 6.0-9.0 s`` and its scene's title (or ``scene N``)."""
    labels = []
    for s, scene in enumerate(board.segment_scenes()):
        start = s * SEGMENT_SECONDS
        name = board.scenes[scene].name or f"scene {scene + 1}"
        labels.append([f"seg {s + 1} · {start:.1f}-{start + SEGMENT_SECONDS:.1f} s", name])
    return labels


def _sheet_title(job: Plan) -> str:
    board = job.storyboard
    title = board.title or Path(board.source).name
    return (f"{title} · {job.seconds} s, {board.num_segments} segments, one frame per segment · seed "
            f"{job.settings.seed}, {job.settings.steps} steps")


def frames_digest(frames: np.ndarray) -> str:
    """sha256 of decoded frames (for comparing runs)."""
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
