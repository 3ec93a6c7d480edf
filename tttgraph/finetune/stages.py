"""Stage configs of the fine-tuning recipe (docs/DESIGN.md §6) as validated JSON files.

A stage file is a JSON object with the sections below; every key is optional and defaults to the
tiny synthetic run (``tttgraph finetune --tiny``). Unknown keys are refused with the list of valid
ones. Relative paths are relative to the working directory. A bare ``tttgraph finetune`` runs
:func:`default_world_stage` (the shipped world base model on 9 s world stories).

.. code-block:: json

    {"name": "cogvideox-5b-9s", "clip_seconds": 9,
     "init_from": "runs/stage_3s/ttt",
     "model": {"kind": "pretrained", "pretrained": null, "seed": 0},
     "data": {"dataset": "synthetic", "precomputed": null, "synthetic_samples": 24, "synthetic_seconds": 9,
              "height": 32, "width": 48, "clip_stride_segments": null, "shard_size": 8},
     "ttt": {"segment_latent_frames": 12, "segment_overlap_frames": 1, "mini_batch_size": 64, ...},
     "train": {"steps": 5000, "batch_size": 1, "grad_accum": 1, "trainable": "ttt_attention",
               "lr": 1e-5, "lr_ttt": 1e-5, "lr_ttt_end": 1e-5, "warmup_steps": 100, ...},
     "checkpoint": {"every": 500, "keep": 2},
     "parallel": {"fsdp": "auto", "mixed_precision": "bf16", "context": 1}}

``init_from`` names the previous stage's ``tttgraph.save`` directory (``OUT/ttt`` of that run);
the first stage has none and transforms the base model with the ``ttt`` section (a
:class:`~tttgraph.config.TTTConfig`; later stages take the config saved in ``init_from``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tttgraph.errors import TTTGraphError
from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS

TRAINABLE = ("all", "ttt", "ttt_attention")
MODEL_KINDS = ("tiny", "pretrained", "world")
GENERATED_DATASETS = ("synthetic", "world")
STAGE_SECONDS = (3, 9, 18, 30, 63)


class StageConfigError(TTTGraphError):
    """A stage config file or value is invalid."""


@dataclass(frozen=True)
class ModelSection:
    """``kind``: "tiny" (random weights, offline), "pretrained" (a diffusers-format directory,
    ``pretrained`` or ``--pretrained``) or "world" (the world base model of
    :mod:`tttgraph.models.world_model`; ``pretrained`` optionally names a directory of its weights,
    default the shipped ones); ``seed``: the tiny model's seed."""

    kind: str = "tiny"
    pretrained: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class DataSection:
    """``dataset``: "synthetic" (storyboards of :mod:`tttgraph.data.synthetic`), "world" (training
    stories of :mod:`tttgraph.data.world`; both generated under ``OUT/data``: ``synthetic_samples``
    samples of ``synthetic_seconds`` each) or a raw dataset directory; ``precomputed``: a
    precomputed directory for this clip length (skips encoding)."""

    dataset: str = "synthetic"
    precomputed: str | None = None
    synthetic_samples: int = 24
    synthetic_seconds: int | None = None
    height: int = 32
    width: int = 48
    clip_stride_segments: int | None = None
    shard_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TrainSection:
    """Optimisation (reference values in the stage files; defaults for the tiny CPU run).

    ``trainable``: "all" (stage 1), "ttt_attention" (TTT, gates, attention q/k/v/o and q/k norms;
    later stages) or "ttt". ``lr``: pretrained parameters (constant after warm-up); ``lr_ttt`` ->
    ``lr_ttt_end``: new TTT parameters (cosine after warm-up). Weight decay skips biases, norms and
    gates. ``batch_size`` is per process; the global batch is ``batch_size * grad_accum * world``.
    ``freeze_gates``: the TTT gates keep their initial value; with ``ttt.gate_init`` 0 the TTT layers
    add nothing, which is the paper's baseline (segment-local attention only, the same fine-tuning).
    ``high_noise_fraction``: the share of samples whose timestep is drawn from
    ``[high_noise_from, num_train_timesteps)`` instead of all timesteps (0: uniform, as the paper). A
    video's content is settled in the first, noisiest denoising steps; below them a segment's own
    noisy frames already show what memory across segments would have to supply, so that is where
    long-context fine-tuning learns it.
    """

    steps: int = 300
    batch_size: int = 2
    grad_accum: int = 1
    trainable: str = "all"
    lr: float = 1e-3
    lr_ttt: float = 3e-3
    lr_ttt_end: float = 3e-4
    warmup_steps: int = 10
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    text_dropout: float = 0.1
    seed: int = 0
    activation_checkpointing: bool = True
    freeze_gates: bool = False
    high_noise_fraction: float = 0.0
    high_noise_from: int = 900
    log_every: int = 1


@dataclass(frozen=True)
class CheckpointSection:
    """``every``: steps between checkpoints (0: only at the end); ``keep``: newest ones kept."""

    every: int = 50
    keep: int = 2


@dataclass(frozen=True)
class ParallelSection:
    """``fsdp``: "auto" (on with several processes), "on", "off"; ``mixed_precision``: "bf16"
    (bf16 compute on GPU: FSDP2 bf16 parameters with fp32 reduction, or bf16 autocast) or "none";
    ``context``: processes that share one sample's sequence, split by whole segments
    (``tttgraph.parallel``; 1 = off). The processes form a data x context mesh: the world size must
    be a multiple of it, and it must divide the model's heads."""

    fsdp: str = "auto"
    mixed_precision: str = "bf16"
    context: int = 1


TINY_TTT = {
    "segment_latent_frames": 12, "segment_overlap_frames": 1, "text_tokens_per_segment": TINY_TEXT_TOKENS,
    "mini_batch_size": 16, "backend": "reference",
}


@dataclass(frozen=True)
class StageConfig:
    """One stage of the recipe; see the module docstring for the file format."""

    name: str = "tiny-synthetic-3s"
    clip_seconds: int = 3
    init_from: str | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    ttt: dict[str, Any] = field(default_factory=lambda: dict(TINY_TTT))
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def __post_init__(self):
        _validate(self)

    @property
    def segments(self) -> int:
        return self.clip_seconds // 3

    def ttt_config(self):
        from tttgraph.config import ConfigError, TTTConfig

        try:
            return TTTConfig.from_dict(dict(self.ttt))
        except ConfigError as err:
            raise StageConfigError(f"stage {self.name!r}, section ttt: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> StageConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Any, where: str = "stage config") -> StageConfig:
        if not isinstance(data, dict):
            raise StageConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
        return _build(cls, data, where)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StageConfig:
        from tttgraph.safe_read import read_json

        path = Path(path)
        if not path.exists():
            raise StageConfigError(f"stage config {path} is not a file (see examples/configs/finetune/ for examples)")
        data = read_json(path, "stage config", "fix it or start from one in examples/configs/finetune/",
                         error=StageConfigError)
        return cls.from_dict(data, str(path))


_SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainSection,
             "checkpoint": CheckpointSection, "parallel": ParallelSection}


def _check_type(where: str, value: Any, annotation: str) -> Any:
    """Check a JSON value against a field's annotation (as written in this module)."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        if optional:
            return None
        raise StageConfigError(f"{where} must not be null")
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base == "str":
        ok = isinstance(value, str)
    elif base.startswith("tuple[float"):
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    elif base.startswith("dict"):
        ok = isinstance(value, dict)
    else:  # pragma: no cover - every annotation above is handled
        raise AssertionError(annotation)
    if not ok:
        raise StageConfigError(f"{where} must be {annotation.replace('| None', 'or null')}, got {value!r}")
    return value


def _build(cls, data: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        section = "" if cls is StageConfig else f" in section {_section_name(cls)}"
        raise StageConfigError(f"{where}: unknown key(s) {unknown}{section}; valid keys are {sorted(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{where}: {name}" if cls is StageConfig else f"{where}: {_section_name(cls)}.{name}"
        if cls is StageConfig and name in _SECTIONS:
            if not isinstance(value, dict):
                raise StageConfigError(f"{key} must be a JSON object, got {value!r}")
            values[name] = _build(_SECTIONS[name], value, where)
        else:
            values[name] = _check_type(key, value, str(fields[name].type))
    return cls(**values)


def _section_name(cls) -> str:
    return next(k for k, v in _SECTIONS.items() if v is cls)


def _validate(cfg: StageConfig) -> None:
    def bad(what: str) -> StageConfigError:
        return StageConfigError(f"stage {cfg.name!r}: {what}")

    if cfg.clip_seconds < 3 or cfg.clip_seconds % 3:
        raise bad(f"clip_seconds must be a positive multiple of 3 (one segment is 3 s), got {cfg.clip_seconds}")
    if cfg.model.kind not in MODEL_KINDS:
        raise bad(f"model.kind must be one of {MODEL_KINDS}, got {cfg.model.kind!r}")
    t = cfg.train
    if t.trainable not in TRAINABLE:
        raise bad(f"train.trainable must be one of {TRAINABLE}, got {t.trainable!r}")
    for name in ("steps", "batch_size", "grad_accum", "log_every"):
        if getattr(t, name) < 1:
            raise bad(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.warmup_steps < 0:
        raise bad(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    for name in ("lr", "lr_ttt", "lr_ttt_end", "eps", "grad_clip"):
        if not getattr(t, name) > 0:
            raise bad(f"train.{name} must be > 0, got {getattr(t, name)}")
    if t.weight_decay < 0 or not 0 <= t.text_dropout < 1:
        raise bad(f"train.weight_decay must be >= 0 and train.text_dropout in [0, 1), got "
                  f"{t.weight_decay} and {t.text_dropout}")
    if not 0 <= t.high_noise_fraction <= 1 or t.high_noise_from < 0:
        raise bad(f"train.high_noise_fraction must be in [0, 1] and train.high_noise_from >= 0, got "
                  f"{t.high_noise_fraction} and {t.high_noise_from}")
    if not all(0 <= b < 1 for b in t.betas):
        raise bad(f"train.betas must be in [0, 1), got {t.betas}")
    if cfg.checkpoint.every < 0 or cfg.checkpoint.keep < 1:
        raise bad(f"checkpoint.every must be >= 0 and checkpoint.keep >= 1, got {cfg.checkpoint}")
    if cfg.parallel.fsdp not in ("auto", "on", "off"):
        raise bad(f"parallel.fsdp must be 'auto', 'on' or 'off', got {cfg.parallel.fsdp!r}")
    if cfg.parallel.context < 1:
        raise bad(f"parallel.context must be >= 1 (processes per sample; 1 = off), got {cfg.parallel.context}")
    if cfg.parallel.context > cfg.segments:
        raise bad(f"parallel.context={cfg.parallel.context} is more than the {cfg.segments} segment(s) of a "
                  f"{cfg.clip_seconds} s clip; each process needs a segment (use at most {cfg.segments})")
    if cfg.parallel.mixed_precision not in ("bf16", "none"):
        raise bad(f"parallel.mixed_precision must be 'bf16' or 'none', got {cfg.parallel.mixed_precision!r}")
    d = cfg.data
    if d.synthetic_samples < 1 or d.shard_size < 1:
        raise bad("data.synthetic_samples and data.shard_size must be >= 1")
    if d.synthetic_seconds is not None and (d.synthetic_seconds < cfg.clip_seconds or d.synthetic_seconds % 3):
        raise bad(f"data.synthetic_seconds must be a multiple of 3 and >= clip_seconds={cfg.clip_seconds}, "
                  f"got {d.synthetic_seconds}")
    if d.clip_stride_segments is not None and d.clip_stride_segments < 1:
        raise bad(f"data.clip_stride_segments must be >= 1, got {d.clip_stride_segments}")
    if cfg.init_from is None:
        cfg.ttt_config()  # the first stage transforms with it: fail now, not after loading a model


WORLD_TTT = {
    "segment_latent_frames": 12, "segment_overlap_frames": 1, "text_tokens_per_segment": 64, "mini_batch_size": 64,
    "base_lr": 0.1, "backend": "auto",
}


def default_world_stage() -> StageConfig:
    """What a bare ``tttgraph finetune`` runs: the world base model that ships with tttgraph, transformed
    with 3 s segments and fine-tuned (TTT layers, gates and attention) on 9 s world stories, where a
    character's attributes are stated only in the segment that introduces it. Sized for a CPU: 100
    steps of one story (~7 minutes on 2 cores); ``examples/configs/world/`` holds the GPU recipe."""
    return StageConfig(
        name="world-9s-default", clip_seconds=9, model=ModelSection(kind="world"),
        data=DataSection(dataset="world", synthetic_samples=64, synthetic_seconds=9, shard_size=16),
        ttt=dict(WORLD_TTT),
        train=TrainSection(steps=100, batch_size=1, trainable="ttt_attention", lr=5e-5, lr_ttt=1e-3,
                           lr_ttt_end=3e-4, warmup_steps=10, activation_checkpointing=False),
        checkpoint=CheckpointSection(every=25, keep=2),
    )  # fmt: skip
