"""The synthetic storyboard dataset: deterministic, consistent characters, storyboards that fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tttgraph.data.synthetic import CHARACTERS, FRAMES_PER_SEGMENT, make_clip, write_dataset
from tttgraph.errors import TTTGraphError


def test_clips_are_deterministic_by_seed_and_differ_across_seeds():
    a, b, c = make_clip(3, 9), make_clip(3, 9), make_clip(4, 9)
    assert np.array_equal(a.video, b.video) and a.storyboard.paragraphs() == b.storyboard.paragraphs()
    assert not np.array_equal(a.video, c.video)
    assert a.video.shape == (3 * FRAMES_PER_SEGMENT, 32, 48, 3) and a.video.dtype == np.uint8


def test_storyboard_has_one_paragraph_per_segment_with_scene_markers():
    clip = make_clip(7, 63)
    paragraphs = clip.storyboard.paragraphs()
    assert len(paragraphs) == 21
    assert paragraphs[0].startswith("<start_scene>") and paragraphs[-1].endswith("<end_scene>")
    assert sum(p.count("<start_scene>") for p in paragraphs) == sum(p.count("<end_scene>") for p in paragraphs)
    for p, seg in zip(paragraphs, clip.storyboard.segments, strict=True):
        assert 4 <= p.count(".") <= 6  # the setting plus 3-4 sentences
        assert all(name in p for name in seg.actors if seg.action != "hide") or seg.action == "hide"


def test_characters_keep_their_colour_and_size_across_scenes():
    clip = make_clip(11, 30, height=40, width=60)
    cast = {name for seg in clip.storyboard.segments for name in seg.actors}
    assert len(cast) == 2  # the same two characters all along
    for name in cast:
        colour = np.array(CHARACTERS[name][0])
        # A character drawn in a frame shows its colour (up to the +-4 noise).
        seen = [np.any(np.all(np.abs(f.astype(int) - colour) <= 4, axis=-1)) for f in clip.video[::16]]
        assert sum(seen) >= len(seen) // 2, name


def test_write_dataset_is_resumable(tmp_path):
    from safetensors.numpy import load_file

    root = write_dataset(tmp_path / "ds", samples=2, seconds=3)
    first = (root / "sample_00000.safetensors").stat().st_mtime_ns
    write_dataset(root, samples=3, seconds=3)
    assert (root / "sample_00000.safetensors").stat().st_mtime_ns == first  # kept, not rewritten
    expected = [f"sample_0000{i}.{ext}" for i in range(3) for ext in ("json", "safetensors")]
    assert sorted(p.name for p in root.iterdir()) == expected
    video = load_file(root / "sample_00002.safetensors")["video"]
    assert np.array_equal(video, make_clip(2, 3).video)
    meta = json.loads((root / "sample_00002.json").read_text())
    assert len(meta["paragraphs"]) == 1 and meta["segments"][0]["actors"]


def test_bad_lengths_are_refused():
    with pytest.raises(TTTGraphError, match="multiple of 3, got 4"):
        make_clip(0, 4)
