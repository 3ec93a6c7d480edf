"""The scorer's per-pair verdicts and the side-by-side comparison sheet of a world story."""

from __future__ import annotations

import numpy as np
import pytest

from tttgraph.data.scorer import score_video, verdicts
from tttgraph.data.sheets import comparison_sheet, story_row
from tttgraph.data.world import COLOURS, FRAMES_PER_SEGMENT, make_story, render_story
from tttgraph.errors import TTTGraphError


def _recoloured(video: np.ndarray, story, segment: int, name: str) -> np.ndarray:
    """``video`` with ``name``'s colour replaced by another palette colour in ``segment``."""
    out = video.copy()
    colour = np.array(COLOURS[story.character(name).colour], np.uint8)
    other = np.array(next(c for n, c in COLOURS.items() if n != story.character(name).colour), np.uint8)
    frames = out[segment * FRAMES_PER_SEGMENT:(segment + 1) * FRAMES_PER_SEGMENT]
    near = np.abs(frames.astype(int) - colour).sum(-1) < 60
    frames[near] = other
    return out


def test_verdicts_mark_first_appearances_and_the_one_pair_that_changed():
    story = make_story(7, 7, "held_out")
    video = render_story(story)[0]
    found = verdicts(video, story)
    assert all(v.right for v in found)
    assert {(v.name, v.segment) for v in found if v.first} == {(c.name, story.first_segment(c.name))
                                                               for c in story.characters
                                                               if story.first_segment(c.name) < 7}
    later = next(v for v in found if not v.first)
    wrong = verdicts(_recoloured(video, story, later.segment, later.name), story)
    changed = [(v.segment, v.name) for v, w in zip(found, wrong, strict=True) if v.right != w.right]
    assert changed == [(later.segment, later.name)]
    assert score_video(video, story).consistency == 1.0
    # by attribute: the recoloured pair keeps its shape and size
    score = score_video(_recoloured(video, story, later.segment, later.name), story)
    assert score.by_attribute == {"colour": 1 - 1 / score.later_pairs, "shape": 1.0, "size": 1.0}


def test_comparison_sheet_has_the_ground_truth_row_then_one_per_video():
    story = make_story(7, 4, "held_out")
    video = render_story(story)[0]
    row = story_row(story, video, "ground truth")
    sheet = comparison_sheet(story, {"TTT": video, "local attention": video[::-1].copy()})
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * row.shape[0], row.shape[1], 3)
    assert row.shape[1] > 4 * 48 * 2  # four upscaled tiles side by side
    with pytest.raises(TTTGraphError, match="at least one video"):
        comparison_sheet(story, {})
    with pytest.raises(TTTGraphError, match="different frame sizes"):
        comparison_sheet(story, {"TTT": video, "narrow": video[:, :, :24].copy()})
