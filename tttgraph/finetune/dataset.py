"""Storyboard video datasets on disk: the raw format, the precomputed format, and their checks.

Raw dataset (what a user provides; ``tttgraph.data.synthetic.write_dataset`` writes one)::

    DATASET/
      <name>.safetensors   "video": uint8 [T, H, W, 3] at 16 fps, T = 48 * S (or 48 * S + 1), or
                           "latents": [12 * S + 1, C, h, w] already encoded (scaled CogVideoX latents)
      <name>.json          {"paragraphs": ["...", ...]}: S storyboard paragraphs, one per 3 s segment,
                           in order; a paragraph that starts a scene begins with "<start_scene>", one
                           that ends a scene ends with "<end_scene>". Other keys are ignored.

Every ``<name>`` needs both files. Precomputed dataset (``tttgraph.finetune.precompute`` writes it,
for one clip length; training reads it)::

    LATENTS/
      manifest.json        format, clip length, shapes, the model it was encoded with, the shards
      shard-00000.safetensors   "latents" [N, F, C, h, w], "text" [N, K, L, C_text] (K segments per
                                clip, F = 12 K + 1 latent frames), clip names in the metadata
      null_text.safetensors     "text" [K, L, C_text]: the empty storyboard (text dropout)

Everything is read with safetensors and validated JSON; nothing in a dataset is executed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tttgraph.errors import TTTGraphError
from tttgraph.safe_read import check_fields, damaged, load_safetensors, open_safetensors, read_json

FPS = 16
SEGMENT_SECONDS = 3
FRAMES_PER_SEGMENT = FPS * SEGMENT_SECONDS  # 48 video frames
LATENT_FRAMES_PER_SEGMENT = FRAMES_PER_SEGMENT // 4  # 12 latent frames (+1 shared with the next segment)
PRECOMPUTED_FORMAT = "tttgraph-precomputed-clips"
PRECOMPUTED_VERSION = 1
MANIFEST = "manifest.json"
NULL_TEXT = "null_text.safetensors"


class DatasetError(TTTGraphError):
    """A dataset directory, a sample or a precomputed shard is missing or malformed."""


@dataclass(frozen=True)
class RawSample:
    """One raw sample: its files, its paragraphs, and what its tensor file holds."""

    name: str
    tensor_file: Path
    paragraphs: tuple[str, ...]
    kind: str  # "video" or "latents"
    shape: tuple[int, ...]

    @property
    def segments(self) -> int:
        return len(self.paragraphs)


RAW_FIX = "write the sample again (or remove both of its files from the dataset)"
_PRECOMPUTE_FIX = ("re-run the precompute (python -m tttgraph.finetune.precompute, or the stage without "
                   "data.precomputed)")


def read_paragraphs(path: Path) -> tuple[str, ...]:
    """The ``paragraphs`` list of a storyboard JSON file, validated."""
    data = read_json(path, "sample storyboard", RAW_FIX, error=DatasetError)
    paragraphs = data.get("paragraphs")
    if not isinstance(paragraphs, list) or not paragraphs or not all(isinstance(p, str) and p.strip()
                                                                       for p in paragraphs):
        raise DatasetError(
            f'{path}: a storyboard must be a JSON object with "paragraphs": a non-empty list of non-empty strings, '
            "one per 3-second segment"
        )
    return tuple(paragraphs)


def _tensor_entry(path: Path) -> tuple[str, tuple[int, ...], str]:
    with open_safetensors(path, "sample tensor file", RAW_FIX, error=DatasetError) as f:
        keys = set(f.keys())
        kind = "video" if "video" in keys else "latents" if "latents" in keys else None
        if kind is None:
            raise DatasetError(f'{path} holds {sorted(keys)}; a sample needs a "video" or a "latents" tensor')
        piece = f.get_slice(kind)
        return kind, tuple(piece.get_shape()), str(piece.get_dtype())


def check_segments(name: str, kind: str, shape: tuple[int, ...], segments: int) -> None:
    """Raise unless a sample's video or latents hold exactly ``segments`` 3-second segments."""
    frames = shape[0] if shape else 0
    if kind == "video":
        if len(shape) != 4 or shape[-1] != 3:
            raise DatasetError(f"{name}: video must be uint8 [T, H, W, 3], got shape {list(shape)}")
        fits = frames in (FRAMES_PER_SEGMENT * segments, FRAMES_PER_SEGMENT * segments + 1)
        unit = f"{FRAMES_PER_SEGMENT} frames (3 s at {FPS} fps)"
        have = frames / FRAMES_PER_SEGMENT
    else:
        if len(shape) != 4:
            raise DatasetError(f"{name}: latents must be [F, C, h, w], got shape {list(shape)}")
        fits = frames == LATENT_FRAMES_PER_SEGMENT * segments + 1
        unit = f"{LATENT_FRAMES_PER_SEGMENT} latent frames (+1)"
        have = (frames - 1) / LATENT_FRAMES_PER_SEGMENT
    if not fits:
        raise DatasetError(
            f"{name}: the storyboard has {segments} paragraph(s) but the {kind} has {frames} frames = {have:g} "
            f"segment(s) of {unit}; give one paragraph per 3-second segment or trim the clip"
        )


def scan_raw(root: str | os.PathLike) -> list[RawSample]:
    """List and check every sample of a raw dataset (reads JSON and tensor headers only).

    Raises :class:`DatasetError` naming the sample for a missing partner file, bad JSON, a tensor
    of the wrong kind or shape, or a storyboard whose segment count does not fit its clip.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"dataset directory {root} does not exist; write one (tttgraph.data.synthetic.write_dataset, or "
            "<name>.safetensors + <name>.json per sample: see tttgraph/finetune/dataset.py)"
        )
    tensors = {p.stem: p for p in root.glob("*.safetensors")}
    boards = {p.stem: p for p in root.glob("*.json") if p.name != MANIFEST}
    if not tensors and not boards:
        raise DatasetError(f"dataset directory {root} holds no samples (<name>.safetensors + <name>.json)")
    lonely = sorted(set(tensors) ^ set(boards))
    if lonely:
        name = lonely[0]
        has, lacks = (".safetensors", ".json") if name in tensors else (".json", ".safetensors")
        raise DatasetError(
            f"sample {name!r} in {root} has a {has} file but no {lacks} file ({len(lonely)} incomplete sample(s)); "
            "every sample needs both"
        )
    samples = []
    for name in sorted(tensors):
        paragraphs = read_paragraphs(boards[name])
        kind, shape, dtype = _tensor_entry(tensors[name])
        if kind == "video" and dtype.upper() not in ("U8", "UINT8"):
            raise DatasetError(f"{tensors[name]}: video must be uint8, got {dtype}")
        check_segments(str(tensors[name]), kind, shape, len(paragraphs))
        samples.append(RawSample(name, tensors[name], paragraphs, kind, shape))
    kinds = {(s.kind, s.shape[1:]) for s in samples}
    if len(kinds) > 1:
        raise DatasetError(
            f"samples of {root} differ in kind or frame size: {sorted(kinds)}; one dataset needs one size"
        )
    return samples


@dataclass(frozen=True)
class ClipRef:
    """A training clip: ``segments`` contiguous segments of a raw sample starting at ``first``."""

    sample: str
    first: int
    segments: int

    @property
    def name(self) -> str:
        return f"{self.sample}@{self.first}+{self.segments}"


def plan_clips(samples: list[RawSample], segments: int, stride: int | None = None) -> list[ClipRef]:
    """Clips of ``segments`` contiguous segments from each sample, every ``stride`` segments.

    ``stride`` defaults to ``segments`` (non-overlapping clips). Samples shorter than a clip give
    none; if no sample is long enough, :class:`DatasetError` says which lengths there are.
    """
    if segments < 1:
        raise DatasetError(f"a clip needs at least one segment, got {segments}")
    stride = segments if stride is None else stride
    if stride < 1:
        raise DatasetError(f"clip_stride_segments must be >= 1, got {stride}")
    clips = [ClipRef(s.name, first, segments) for s in samples
             for first in range(0, s.segments - segments + 1, stride)]
    if not clips:
        longest = max((s.segments for s in samples), default=0)
        raise DatasetError(
            f"no sample holds {segments} segment(s) ({segments * SEGMENT_SECONDS} s); the longest has {longest} "
            f"({longest * SEGMENT_SECONDS} s). Use a shorter stage or longer samples"
        )
    return clips


# ---------------------------------------------------------------------------------------------
# Precomputed clips
# ---------------------------------------------------------------------------------------------

_MANIFEST_KEYS = {
    "format": str, "version": int, "clip_seconds": int, "segments_per_clip": int, "latent_frames": int,
    "latent_shape": list, "text_tokens_per_segment": int, "text_dim": int, "model": str, "dataset": str,
    "dtype": str, "shard_size": int, "clips": list, "shards": list, "complete": bool,
}


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The validated ``manifest.json`` of a precomputed directory."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise DatasetError(
            f"{path} does not exist: {root} is not a precomputed dataset; run `python -m "
            "tttgraph.finetune.precompute --dataset RAW --out DIR --seconds S` first"
        )
    data = read_json(path, "precompute manifest", _PRECOMPUTE_FIX, error=DatasetError)
    if data.get("format") != PRECOMPUTED_FORMAT:
        raise damaged(path, f"is not a tttgraph precomputed manifest (format {PRECOMPUTED_FORMAT!r})",
                      "precompute manifest", _PRECOMPUTE_FIX, DatasetError)
    check_fields(data, _MANIFEST_KEYS, path, "precompute manifest", _PRECOMPUTE_FIX, error=DatasetError)
    if data["version"] > PRECOMPUTED_VERSION:
        raise DatasetError(f"{path} has version {data['version']}; this tttgraph reads {PRECOMPUTED_VERSION}")
    for shard in data["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and isinstance(shard.get("clips"), int)
                and "/" not in shard["file"] and "\\" not in shard["file"]):
            raise DatasetError(f"{path}: malformed shard entry {shard!r}; {_PRECOMPUTE_FIX}")
    return data


class PrecomputedClips(torch.utils.data.Dataset):
    """Training clips of one length from a precomputed directory.

    ``dataset[i]`` is ``(latents [F, C, h, w], text [K * L, C_text])`` as float32; ``null_text`` is
    the empty storyboard ``[K * L, C_text]`` (text dropout). Shards are loaded whole on first use
    (they are written small enough for that).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = m = read_manifest(self.root)
        if not m["complete"]:
            raise DatasetError(
                f"{self.root} is an unfinished precompute ({sum(s['clips'] for s in m['shards'])} of "
                f"{len(m['clips'])} clips); re-run the precompute command, it resumes where it stopped"
            )
        self.index: list[tuple[int, int]] = []
        for s, shard in enumerate(m["shards"]):
            if not (self.root / shard["file"]).exists():  # a damaged one is named when it is read
                raise DatasetError(f"{self.root / shard['file']} is missing; re-run the precompute to rebuild it")
            self.index += [(s, j) for j in range(shard["clips"])]
        if not self.index:
            raise DatasetError(f"{self.root} holds no clips")
        if not (self.root / NULL_TEXT).exists():
            raise DatasetError(f"{self.root / NULL_TEXT} is missing; re-run the precompute")
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        self.null_text = self._load(self.root / NULL_TEXT, ("text",))["text"].float().flatten(0, 1)

    @property
    def latent_frames(self) -> int:
        return self.manifest["latent_frames"]

    @property
    def segments(self) -> int:
        return self.manifest["segments_per_clip"]

    def _load(self, path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return load_safetensors(path, "precomputed clips file", _PRECOMPUTE_FIX, keys=keys, error=DatasetError)[0]

    def _shard(self, s: int) -> dict[str, torch.Tensor]:
        if s not in self._cache:
            shard = self.manifest["shards"][s]
            data = self._load(self.root / shard["file"], ("latents", "text"))
            m = self.manifest
            want_lat = (shard["clips"], m["latent_frames"], *m["latent_shape"])
            want_txt = (shard["clips"], m["segments_per_clip"], m["text_tokens_per_segment"], m["text_dim"])
            if tuple(data["latents"].shape) != want_lat or tuple(data["text"].shape) != want_txt:
                raise DatasetError(
                    f"{self.root / shard['file']}: latents {tuple(data['latents'].shape)} / text "
                    f"{tuple(data['text'].shape)}, the manifest says {want_lat} / {want_txt}; re-run the precompute"
                )
            self._cache[s] = data
        return self._cache[s]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, j = self.index[i]
        data = self._shard(s)
        return data["latents"][j].float(), data["text"][j].float().flatten(0, 1)

    def check_model(self, *, latent_channels: int, text_dim: int, text_tokens: int, source: str | None = None) -> None:
        """Raise unless these clips were encoded for a model of these sizes."""
        m = self.manifest
        problems = []
        if m["latent_shape"][0] != latent_channels:
            problems.append(f"latent channels {m['latent_shape'][0]} vs the model's {latent_channels}")
        if m["text_dim"] != text_dim:
            problems.append(f"text features {m['text_dim']} vs {text_dim}")
        if m["text_tokens_per_segment"] != text_tokens:
            problems.append(f"text tokens per segment {m['text_tokens_per_segment']} vs {text_tokens}")
        if problems:
            raise DatasetError(
                f"{self.root} was precomputed with {m['model']!r}, which does not fit this model"
                f"{f' ({source})' if source else ''}: {'; '.join(problems)}. Precompute again with this model"
            )
