"""Score videos of world stories: detection and cross-segment consistency (tttgraph evaluate).

    tttgraph evaluate VIDEO --story STORY.json      one video (.mp4 or .safetensors with "video")
    tttgraph evaluate DIR                           every NAME.story.json in DIR with its NAME.mp4
                                                    or NAME.safetensors beside it
    tttgraph evaluate DIR --json scores.json        also write the per-story scores and the summary

Prints one row per story (detection, first-appearance accuracy, cross-segment consistency) and a
summary with the scorer's ceiling (the same stories' ground-truth renderings at the videos'
resolution) and the chance level. ``write_world(DIR, ...)`` writes ground-truth samples in this
layout (``tttgraph evaluate DIR`` on them gives the ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from tttgraph.data.scorer import StoryScore, score_ground_truth, score_video, summarize
from tttgraph.data.world import Story, write_stories
from tttgraph.errors import TTTGraphError
from tttgraph.safe_read import load_safetensors, read_json

STORY_SUFFIX = ".story.json"
_FIX_STORY = "write it with tttgraph.data.world.Story.to_json (or tttgraph.data.evaluate.write_world)"


def read_story(path: str | os.PathLike) -> Story:
    """A world story from JSON (validated; a damaged file names itself and the fix)."""
    data = read_json(path, "world story", _FIX_STORY)
    try:
        return Story.from_dict(data)
    except TTTGraphError as err:
        raise TTTGraphError(f"world story {path}: {err}") from None


def read_video(path: str | os.PathLike) -> np.ndarray:
    """uint8 [T, H, W, 3] from an .mp4 (needs the video extra) or a .safetensors holding ``video``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = load_safetensors(path, "video file", "write it again", keys=("video",), framework="np")
        video = tensors["video"]
    elif path.suffix == ".mp4":
        from tttgraph.generate.video_io import read_mp4

        video = read_mp4(path)[0]
    else:
        raise TTTGraphError(f"{path}: a video must be .mp4 or .safetensors (with a 'video' tensor), got "
                            f"{path.suffix or 'no suffix'!r}")
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise TTTGraphError(f"{path}: expected a uint8 video [T, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    return video


def find_pairs(directory: Path) -> list[tuple[Path, Path]]:
    """(video, story) pairs of ``directory``: each NAME.story.json with NAME.mp4 or NAME.safetensors."""
    pairs = []
    for story in sorted(directory.glob(f"*{STORY_SUFFIX}")):
        stem = story.name[: -len(STORY_SUFFIX)]
        video = next((directory / f"{stem}{ext}" for ext in (".mp4", ".safetensors")
                      if (directory / f"{stem}{ext}").is_file()), None)
        if video is None:
            raise TTTGraphError(f"{story} has no video beside it ({stem}.mp4 or {stem}.safetensors)")
        pairs.append((video, story))
    if not pairs:
        raise TTTGraphError(f"{directory} holds no *{STORY_SUFFIX} files; pass a video with --story, or a directory "
                            "written by tttgraph.data.evaluate.write_world")
    return pairs


def evaluate(pairs: list[tuple[Path, Path]]) -> tuple[list[StoryScore], dict]:
    """Per-story scores of ``pairs`` and the summary with the ceiling and chance."""
    scores, ceiling = [], []
    for video_path, story_path in pairs:
        story, video = read_story(story_path), read_video(video_path)
        scores.append(score_video(video, story))
        ceiling.append(score_ground_truth(story, *video.shape[1:3]))
    return scores, summarize(scores, ceiling)


def write_world(root: str | os.PathLike, stories: int, segments: int, split: str = "held_out", seed: int = 0,
                height: int = 32, width: int = 48) -> Path:
    """Write ``stories`` ground-truth samples (``story_XXXXX.safetensors`` + ``.story.json``) to ``root``."""
    return write_stories(root, stories, segments, split, seed, height, width, prefix="story",
                         story_suffix=STORY_SUFFIX)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a video (.mp4 / .safetensors) with --story, or a directory of pairs")
    parser.add_argument("--story", help="the world story JSON of a single video")
    parser.add_argument("--json", dest="json_out", help="also write per-story scores and the summary here")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        if args.story:
            raise TTTGraphError("--story is for a single video; a directory pairs NAME.story.json with its video")
        pairs = find_pairs(path)
    elif args.story:
        pairs = [(path, Path(args.story))]
    else:
        raise TTTGraphError(f"{path} is not a directory; give the story of this video with --story STORY.json")
    scores, summary = evaluate(pairs)
    print(f"{'story':<28} {'segments':>8} {'detection':>10} {'first':>8} {'consistency':>12}")
    for (video, _), s in zip(pairs, scores, strict=True):
        print(f"{video.name:<28} {s.segments:>8} {_fmt(s.detection):>10} {_fmt(s.first_appearance):>8} "
              f"{_fmt(s.consistency):>12}")
    print(f"mean over {summary['stories']} stories: detection {_fmt(summary['detection'])}, first appearance "
          f"{_fmt(summary['first_appearance'])}, consistency {_fmt(summary['consistency'])}; ceiling (ground "
          f"truth) {_fmt(summary['ceiling_consistency'])}, chance {_fmt(summary['chance_consistency'])}")
    parts = [f"{a} {_fmt(v)} (chance {_fmt(summary['chance_by_attribute'][a])})"
             for a, v in summary["consistency_by_attribute"].items()]
    print(f"consistency by attribute: {', '.join(parts)}")
    if args.json_out:
        from tttgraph.config import write_atomic

        write_atomic(args.json_out, json.dumps({"stories": [s.to_dict() for s in scores], "summary": summary},
                                               indent=1) + "\n")
    return 0
