"""Encode a raw storyboard dataset into precomputed training clips of one length (resumable).

    python -m tttgraph.finetune.precompute --dataset RAW --out LATENTS --seconds 9 [--pretrained DIR]

Clips of ``seconds`` (3, 9, 18, 30, 63) are built as the reference builds them: ``seconds / 3``
contiguous 3-second segments of a sample are concatenated (``48 K + 1`` frames at 16 fps, the
extra frame being the next segment's first or, at the end of a sample, the last frame repeated)
and encoded together by the CogVideoX VAE into ``12 K + 1`` latent frames; each segment's
paragraph is encoded by T5 into ``L`` tokens. Samples given as latents are cut at the same frames.

Output (see :mod:`tttgraph.finetune.dataset`): shards of ``shard_size`` clips, each written
atomically, and a manifest rewritten atomically after every shard; a second run with the same
arguments skips the finished shards and continues.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tttgraph.config import atomic_path, write_atomic
from tttgraph.errors import TTTGraphError
from tttgraph.finetune.dataset import (
    FRAMES_PER_SEGMENT,
    LATENT_FRAMES_PER_SEGMENT,
    MANIFEST,
    NULL_TEXT,
    PRECOMPUTED_FORMAT,
    PRECOMPUTED_VERSION,
    RAW_FIX,
    SEGMENT_SECONDS,
    DatasetError,
    RawSample,
    plan_clips,
    scan_raw,
)
from tttgraph.models.cogvideox_bundle import module_device_dtype
from tttgraph.safe_read import check_safetensors, open_safetensors

DEFAULT_SHARD_SIZE = 8
VAE_BATCH_VALUES = 1 << 24  # uint8 pixel values per VAE call (16 MB: a few tiny clips, one 720p frame batch)


def clip_segments(seconds: int) -> int:
    if not isinstance(seconds, int) or seconds < SEGMENT_SECONDS or seconds % SEGMENT_SECONDS:
        raise DatasetError(f"clip length must be a positive multiple of {SEGMENT_SECONDS} s, got {seconds!r}")
    return seconds // SEGMENT_SECONDS


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def _clip_pixels(video: np.ndarray, first: int, segments: int) -> np.ndarray:
    """Frames ``[48 first, 48 (first + K)]`` (48 K + 1): the next frame, or the last one repeated."""
    start, stop = FRAMES_PER_SEGMENT * first, FRAMES_PER_SEGMENT * (first + segments)
    if stop < video.shape[0]:
        return video[start:stop + 1]
    return np.concatenate([video[start:stop], video[stop - 1:stop]])


def _load_sample(sample: RawSample) -> np.ndarray | torch.Tensor:
    with open_safetensors(sample.tensor_file, "sample tensor file", RAW_FIX, keys=(sample.kind,),
                          framework="np" if sample.kind == "video" else "pt", error=DatasetError) as f:
        return f.get_tensor(sample.kind)


def dataset_entry(dataset: str | os.PathLike, out: Path) -> str:
    """How a manifest in ``out`` names its raw ``dataset``: relative to ``out`` when the dataset sits
    beside it (the fine-tuning run's ``OUT/data/synthetic`` next to ``OUT/data/clips_3s``), so that a
    copied or moved run still names its own dataset; absolute otherwise."""
    dataset, out = Path(dataset).resolve(), out.resolve()
    if dataset.is_relative_to(out.parent):
        return os.path.relpath(dataset, out)
    return str(dataset)


def same_dataset(entry: str, dataset: str | os.PathLike, out: Path) -> bool:
    """Whether a manifest's ``dataset`` entry (relative to ``out``, or absolute as manifests written
    before relative entries hold) names ``dataset``."""
    return (out / entry).resolve() == Path(dataset).resolve()


def _readable(path: Path, keys: tuple[str, ...]) -> bool:
    """Whether ``path`` is a safetensors file with a valid header holding ``keys``."""
    try:
        check_safetensors(path, "precomputed clips file", "", keys=keys, error=DatasetError)
    except DatasetError:
        return False
    return True


def _intact_shards(out: Path, shards: list[dict[str, Any]]) -> int:
    """How many of the manifest's first shards are on disk and readable (a shard damaged since it
    was written is encoded again, with everything after it)."""
    keep = 0
    while keep < len(shards) and _readable(out / shards[keep]["file"], ("latents", "text")):
        keep += 1
    return keep


def precompute(bundle, dataset: str | os.PathLike, out: str | os.PathLike, seconds: int, *,
               stride: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True,
               samples: list[RawSample] | None = None) -> Path:
    """Encode ``dataset`` into clips of ``seconds`` under ``out``; returns ``out``.

    ``bundle`` is a :class:`~tttgraph.models.cogvideox_bundle.CogVideoXBundle`. Resumes an
    unfinished run with the same arguments; refuses (naming the difference) to mix a different
    dataset, model or clip length into an existing ``out``.
    """
    from tttgraph.models.cogvideox_bundle import encode_text, encode_videos
    from tttgraph.progress import progress_bar

    segments = clip_segments(seconds)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise DatasetError(f"shard_size must be an int >= 1, got {shard_size!r}")
    samples = scan_raw(dataset) if samples is None else samples
    clips = plan_clips(samples, segments, stride)
    if samples[0].kind == "video":
        bundle.check_pixels(*samples[0].shape[1:3])
    by_name = {s.name: s for s in samples}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a run killed while writing a shard or the manifest
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)

    _, vae_dtype = module_device_dtype(bundle.vae)
    text_dim = int(bundle.text_encoder.config.d_model)
    manifest: dict[str, Any] = {
        "format": PRECOMPUTED_FORMAT, "version": PRECOMPUTED_VERSION, "clip_seconds": seconds,
        "segments_per_clip": segments, "latent_frames": LATENT_FRAMES_PER_SEGMENT * segments + 1,
        "latent_shape": None, "text_tokens_per_segment": bundle.text_tokens_per_segment, "text_dim": text_dim,
        "model": bundle.source, "dataset": dataset_entry(dataset, out), "dtype": str(vae_dtype).removeprefix("torch."),
        "shard_size": shard_size, "clips": [c.name for c in clips], "shards": [], "complete": False,
    }
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        from tttgraph.finetune.dataset import read_manifest

        old = read_manifest(out)
        if same_dataset(old["dataset"], dataset, out):
            old["dataset"] = manifest["dataset"]  # the same directory, named as an older manifest did
        for key in ("clip_seconds", "model", "dataset", "dtype", "shard_size", "clips", "text_tokens_per_segment"):
            if old[key] != manifest[key]:
                raise DatasetError(
                    f"{out} already holds a precompute with a different {key} ({str(old[key])[:80]!r} vs "
                    f"{str(manifest[key])[:80]!r}); use another --out directory or delete {out}"
                )
        # Keep the finished shards: the contiguous prefix whose files are still there and readable.
        keep = _intact_shards(out, old["shards"])
        manifest["shards"] = old["shards"][:keep]
        manifest["latent_shape"] = old["latent_shape"]

    if not _readable(out / NULL_TEXT, ("text",)):
        null = encode_text(bundle, [""] * segments).to(vae_dtype).cpu()
        _save_safetensors(out / NULL_TEXT, {"text": null}, {"format": PRECOMPUTED_FORMAT})

    done = sum(s["clips"] for s in manifest["shards"])
    text_cache: dict[str, torch.Tensor] = {}
    bar = progress_bar(total=len(clips), initial=done, desc=f"precompute {seconds}s clips", unit="clip",
                       disable=not progress)
    for shard_index in range(len(manifest["shards"]), -(-len(clips) // shard_size)):
        batch = clips[shard_index * shard_size:(shard_index + 1) * shard_size]
        latents, texts, pending = [], [], []
        for clip in batch:
            sample = by_name[clip.sample]
            if clip.sample not in text_cache:
                text_cache.clear()  # clips are in sample order: one sample's paragraphs at a time
                text_cache[clip.sample] = encode_text(bundle, list(sample.paragraphs)).cpu()
            texts.append(text_cache[clip.sample][clip.first:clip.first + segments])
            data = _load_sample(sample)
            if sample.kind == "video":
                pending.append(_clip_pixels(data, clip.first, segments))
                # Small clips go through the VAE together (it is bound by per-op overhead then).
                if sum(v.size for v in pending) >= VAE_BATCH_VALUES or clip is batch[-1]:
                    latents += list(encode_videos(bundle, pending).to(vae_dtype).cpu())
                    bar.update(len(pending))
                    pending = []
            else:
                start = LATENT_FRAMES_PER_SEGMENT * clip.first
                latents.append(data[start:start + LATENT_FRAMES_PER_SEGMENT * segments + 1].to(vae_dtype))
                bar.update(1)
        lat = torch.stack(latents)
        if manifest["latent_shape"] is None:
            manifest["latent_shape"] = list(lat.shape[2:])
        elif list(lat.shape[2:]) != manifest["latent_shape"]:
            raise DatasetError(f"clip {batch[0].name} has latents {list(lat.shape[2:])}, earlier ones "
                               f"{manifest['latent_shape']}; one dataset needs one frame size")
        name = f"shard-{shard_index:05d}.safetensors"
        _save_safetensors(out / name, {"latents": lat, "text": torch.stack(texts).to(vae_dtype)},
                          {"clips": json.dumps([c.name for c in batch])})
        manifest["shards"].append({"file": name, "clips": len(batch)})
        write_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    bar.close()
    manifest["complete"] = True
    write_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="raw dataset directory (see tttgraph/finetune/dataset.py)")
    parser.add_argument("--out", required=True, help="output directory (resumed if it holds an unfinished run)")
    parser.add_argument("--seconds", type=int, default=3, help="clip length: 3, 9, 18, 30 or 63 (default 3)")
    parser.add_argument("--pretrained", help="diffusers-format CogVideoX directory (default: the tiny random bundle)")
    parser.add_argument("--stride", type=int, help="segments between clip starts (default: the clip length)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="clips per shard (default 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny bundle (without --pretrained)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tttgraph.finetune.precompute", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from tttgraph.models.cogvideox_bundle import load_pretrained, tiny_bundle

    try:
        clip_segments(args.seconds)
        samples = scan_raw(args.dataset)  # checked before any model is loaded
        plan_clips(samples, args.seconds // SEGMENT_SECONDS, args.stride)
        if args.pretrained:
            bundle = load_pretrained(args.pretrained, device=args.device)
        else:
            bundle = tiny_bundle(args.seed)
        out = precompute(bundle, args.dataset, args.out, args.seconds, stride=args.stride,
                         shard_size=args.shard_size, samples=samples)
    except TTTGraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"precomputed {args.seconds} s clips of {args.dataset} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
