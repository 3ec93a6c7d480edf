"""The world of issue #21: attributes written once, names after; held-out pairings; exits and returns."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tttgraph.data.world import (
    BACKGROUNDS,
    COLOURS,
    FRAMES_PER_SEGMENT,
    MAX_SEGMENTS,
    Story,
    is_held_out,
    make_story,
    render_story,
)
from tttgraph.errors import TTTGraphError

STORIES = [make_story(seed, 1 + seed % MAX_SEGMENTS, split) for seed in range(60) for split in ("train", "held_out")]


def _sentences(paragraph: str) -> list[str]:
    text = paragraph.replace("<start_scene>", "").replace("<end_scene>", "")
    return [s for s in re.split(r"(?<=\.)\s+", text.strip()) if s]


@pytest.mark.parametrize("story", STORIES[:40], ids=lambda s: f"{s.split}-{s.seed}-{len(s.segments)}seg")
def test_attributes_are_written_only_where_a_character_first_appears(story):
    paragraphs = story.paragraphs()
    assert len(paragraphs) == len(story.segments) and 1 <= len(story.characters) - 1 <= 3
    for s, (seg, text) in enumerate(zip(story.segments, paragraphs, strict=True)):
        assert 3 <= len(_sentences(text)) <= 5, text
        for who in story.characters:
            described = f"{who.name}, a {who.size} {who.colour} {who.shape}," in text
            present = any(a.name == who.name for a in seg.appearances)
            assert described == (present and story.first_segment(who.name) == s), (s, who, text)
            assert (who.name in text) == present
            if present and not described:  # named only: none of its attribute words next to the name
                assert re.search(rf"{who.name} is on the (left|right)\.", text)


def test_every_character_appears_and_one_leaves_and_comes_back():
    for story in STORIES:
        present = [{a.name for a in seg.appearances} for seg in story.segments]
        if len(story.segments) >= len(story.characters):
            assert set().union(*present) == {c.name for c in story.characters}
        if len(story.segments) >= 4:
            returns = [n for n in set().union(*present)
                       if any(n in present[i] and n not in present[i + 1] and n not in present[i + 2]
                              and any(n in p for p in present[i + 3:]) for i in range(len(present) - 3))]
            assert returns, present


def test_scene_cuts_change_the_background():
    cuts = 0
    for story in STORIES:
        for prev, seg in zip(story.segments, story.segments[1:], strict=False):
            if seg.scene != prev.scene:
                cuts += 1
                assert seg.background != prev.background
            else:
                assert seg.background == prev.background
    assert cuts > 50


def test_held_out_stories_use_pairings_never_seen_in_training():
    train = {(c.name, *c.attributes) for s in STORIES if s.split == "train" for c in s.characters}
    held = {(c.name, *c.attributes) for s in STORIES if s.split == "held_out" for c in s.characters}
    assert train and held and not train & held
    assert all(is_held_out(c) for s in STORIES if s.split == "held_out" for c in s.characters)
    assert not any(is_held_out(c) for s in STORIES if s.split == "train" for c in s.characters)


def test_stories_are_deterministic_and_round_trip_through_json():
    import json

    a, b = make_story(7, 9), make_story(7, 9)
    assert a.to_json() == b.to_json()
    assert Story.from_dict(json.loads(a.to_json())).to_json() == a.to_json()
    assert make_story(7, 9, "held_out").to_json() != a.to_json()
    with pytest.raises(TTTGraphError, match="segments must be an int in 1..21"):
        make_story(0, 22)
    with pytest.raises(TTTGraphError, match="not a world story"):
        Story.from_dict({"format": "something else"})


def test_rendering_matches_the_ground_truth():
    story = make_story(4, 6)
    video, truth = render_story(story)
    assert video.shape == (6 * FRAMES_PER_SEGMENT, 32, 48, 3) and video.dtype == np.uint8
    for f in range(0, len(video), 13):
        seg = story.segments[f // FRAMES_PER_SEGMENT]
        assert {p.name for p in truth[f]} == {a.name for a in seg.appearances}
        assert np.abs(video[f, 0, 0].astype(int) - BACKGROUNDS[seg.background]).max() <= 4
        for p in truth[f]:
            centre = video[f, int(round(p.cy)), int(round(p.cx))].astype(int)
            assert np.abs(centre - COLOURS[p.colour]).max() <= 4, (f, p)
