"""The scorer reads characters from pixels: perfect on ground truth, blind on empty frames, and it
catches a character whose colour changes after its first appearance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tttgraph.data.scorer import CHANCE_CONSISTENCY, detect, score_ground_truth, score_video, summarize
from tttgraph.data.world import (
    ACTIONS,
    BACKGROUNDS,
    COLOURS,
    FRAMES_PER_SEGMENT,
    SHAPES,
    SIZES,
    Appearance,
    Character,
    Story,
    WorldSegment,
    make_story,
    render_story,
)
from tttgraph.errors import TTTGraphError


@pytest.mark.parametrize("colour, shape, size", list(itertools.product(COLOURS, SHAPES, SIZES)))
def test_every_attribute_triple_is_read_back_on_every_background_and_motion(colour, shape, size):
    other = "red" if colour != "red" else "blue"
    story = Story(0, "train", [Character("Bo", colour, shape, size), Character("Ada", other, "square", "big")])
    story.segments = [WorldSegment(0, bg, [Appearance("Bo", "left", action), Appearance("Ada", "right", "waits")])
                      for bg in BACKGROUNDS for action in ACTIONS]
    video, _ = render_story(story)
    for f in range(0, len(video), 5):
        found = detect(video[f], "left")
        assert found is not None and found.attributes == (colour, shape, size), (f, found)


def test_ground_truth_scores_perfectly():
    scores = [score_ground_truth(make_story(seed, 2 + seed % 20, split))
              for seed in range(12) for split in ("train", "held_out")]
    assert all(s.detection == 1.0 and s.first_appearance == 1.0 for s in scores)
    assert all(s.consistency == 1.0 for s in scores if s.consistency is not None)
    summary = summarize(scores, ceiling=scores)
    assert summary["consistency"] == summary["ceiling_consistency"] == 1.0
    assert summary["chance_consistency"] == CHANCE_CONSISTENCY == 1 / 32


def test_a_colour_swap_after_the_first_appearance_breaks_consistency_exactly_there():
    story = make_story(5, 10)
    video, _ = render_story(story)
    name = story.characters[0].name
    first = story.first_segment(name)
    colour = story.character(name).colour
    new = next(c for c in COLOURS if c != colour)
    later = [s for s, seg in enumerate(story.segments) if s > first and any(a.name == name for a in seg.appearances)]
    assert later
    swapped = video.copy()
    for f in range(len(video)):
        if f // FRAMES_PER_SEGMENT in later:
            mask = np.all(np.abs(swapped[f].astype(int) - COLOURS[colour]) <= 4, axis=-1)
            swapped[f][mask] = COLOURS[new]
    base, hit = score_video(video, story), score_video(swapped, story)
    assert base.consistency == 1.0 and hit.detection == 1.0 and hit.first_appearance == 1.0
    assert hit.consistency == pytest.approx(1.0 - len(later) / base.later_pairs)


def test_empty_frames_detect_nothing():
    story = make_story(6, 8)
    video, _ = render_story(story)
    empty = np.empty_like(video)
    for s, seg in enumerate(story.segments):
        empty[s * FRAMES_PER_SEGMENT:(s + 1) * FRAMES_PER_SEGMENT] = BACKGROUNDS[seg.background]
    score = score_video(empty, story)
    assert score.detection == 0.0 and score.first_appearance == 0.0 and score.consistency == 0.0


def test_noise_frames_detect_nothing():
    """Scattered pixels that happen to match a palette colour (an untrained model's output) are no character."""
    story = make_story(7, 3)
    rng = np.random.default_rng(0)
    video, _ = render_story(story)
    for s, seg in enumerate(story.segments):
        part = slice(s * FRAMES_PER_SEGMENT, (s + 1) * FRAMES_PER_SEGMENT)
        noise = rng.normal(0, 60, size=video[part].shape)
        video[part] = np.clip(np.array(BACKGROUNDS[seg.background]) + noise, 0, 255).astype(np.uint8)
    assert score_video(video, story).detection == 0.0


def test_a_video_too_short_for_its_story_is_refused():
    story = make_story(1, 3)
    with pytest.raises(TTTGraphError, match=r"T >= 144 \(48 frames per segment"):
        score_video(np.zeros((100, 32, 48, 3), np.uint8), story)


def test_evaluate_command_scores_a_directory_and_writes_json(tmp_path, capsys):
    import json

    from tttgraph.cli import main
    from tttgraph.data.evaluate import write_world

    write_world(tmp_path / "gt", stories=3, segments=5, split="held_out")
    assert main(["evaluate", str(tmp_path / "gt"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "story_00002.safetensors" in out and "consistency 100.0%; ceiling (ground truth) 100.0%" in out
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert summary["stories"] == 3 and summary["detection"] == 1.0
    assert main(["evaluate", str(tmp_path / "nothing")]) == 1
    assert "is not a directory; give the story of this video with --story" in capsys.readouterr().err
