"""The contact sheet a person reads: each tile labelled with its segment, time span and scene title."""

from __future__ import annotations

import numpy as np
import pytest

from tttgraph.generate.pipeline import segment_labels
from tttgraph.generate.storyboard import parse_storyboard
from tttgraph.generate.video_io import LABEL_LINES, contact_sheet, read_png, write_png

pytest.importorskip("PIL")  # the label text is drawn with Pillow (installed with diffusers)

SENTENCES = "The red circle moves. The blue square waits. The camera does not move."
STORY = f'''title = "The chase"
[[scenes]]
name = "Morning in the meadow"
segments = ["{SENTENCES}", "{SENTENCES}"]
[[scenes]]
segments = ["{SENTENCES}"]
'''


def _frames(t=3, h=32, w=48):
    """Flat mid-grey frames with a diagonal: easy to tell from text on the dark background."""
    frames = np.full((t, h, w, 3), 128, np.uint8)
    for i in range(min(h, w)):
        frames[:, i, i] = (255, 0, 0)
    return frames


def test_segment_labels_give_number_time_span_and_scene_title():
    board = parse_storyboard(STORY)
    assert segment_labels(board) == [
        ["seg 1 · 0.0-3.0 s", "Morning in the meadow"],
        ["seg 2 · 3.0-6.0 s", "Morning in the meadow"],
        ["seg 3 · 6.0-9.0 s", "scene 2"],  # a scene without a name
    ]


def test_labels_are_drawn_under_each_tile_and_leave_the_frames_untouched(tmp_path):
    from tttgraph.drawing import get_font, line_height

    frames = _frames()
    labels = segment_labels(parse_storyboard(STORY))
    plain = contact_sheet(frames, [0, 1, 2], columns=2)
    sheet = contact_sheet(frames, [0, 1, 2], columns=2, labels=labels, title="The chase · 9 s")
    step = line_height(get_font(12))  # 144-pixel tiles get 12-pixel text
    title_h, label_h, gap = step + 8, LABEL_LINES * step + 4, 4
    assert plain.shape == (2 * 96 + 3 * gap, 2 * 144 + 3 * gap, 3)
    assert sheet.shape == (title_h + 2 * (96 + label_h) + 3 * gap, plain.shape[1], 3)
    for n in range(3):
        r, c = divmod(n, 2)
        y, x = title_h + gap + r * (96 + label_h + gap), gap + c * (144 + gap)
        py = gap + r * (96 + gap)
        assert np.array_equal(sheet[y:y + 96, x:x + 144], plain[py:py + 96, x:x + 144])  # the frame as is
        under = sheet[y + 96:y + 96 + label_h, x:x + 144].astype(int)
        bright = under.sum(axis=-1) > 3 * 120  # text pixels on the dark (24) background
        assert bright[:step].sum() > 40, n  # the "seg N · a-b s" line
        assert bright[step:].sum() > 40, n  # the scene title
    assert (sheet[:title_h].sum(axis=-1) > 3 * 120).sum() > 40  # the title row
    # Tiles 1 and 2 differ in their labels only: their label strips differ, their frames do not.
    y1, y2 = title_h + gap, title_h + gap + 96 + label_h + gap
    assert not np.array_equal(sheet[y1 + 96:y1 + 96 + label_h, 4 + 148:148 + 148],
                              sheet[y2 + 96:y2 + 96 + label_h, 4:148])
    assert np.array_equal(read_png(write_png(sheet, tmp_path / "sheet.png")), sheet)


def test_long_titles_wrap_to_the_tile_and_end_with_an_ellipsis():
    from tttgraph.drawing import get_font, text_width, wrap

    font = get_font(12)
    title = "A very long scene title that goes on and on about the meadow, the wall, the night and the snow"
    lines = wrap(title, font, 144, 2)
    assert len(lines) == 2 and lines[1].endswith("…")
    assert all(text_width(line, font) <= 144 for line in lines)
    assert wrap("Good night", font, 144, 2) == ["Good night"]
    frames = _frames(t=1)
    sheet = contact_sheet(frames, [0], labels=[["seg 1 · 0.0-3.0 s", title]])
    assert sheet.shape[1] == 144 + 8  # text never widens the sheet
    with pytest.raises(ValueError, match="2 labels for 1 tiles"):
        contact_sheet(frames, [0], labels=[["a"], ["b"]])


def test_a_title_wider_than_the_grid_wraps_onto_more_lines_instead_of_being_cut():
    from tttgraph.drawing import get_font, line_height, wrap

    frames = _frames()
    title = "world story 7 (held_out) · 9 s, 3 segments, one frame per segment · seed 0, 25 steps"
    one = contact_sheet(frames, [0, 1, 2], columns=3, title="short")
    long = contact_sheet(frames, [0, 1, 2], columns=3, title=title)
    step = line_height(get_font(12))
    lines = wrap(title, get_font(12), long.shape[1] - 8, 3)
    assert len(lines) == 2 and not lines[-1].endswith("…")  # all of it, on two lines
    assert long.shape == (one.shape[0] + step, one.shape[1], 3)  # one more line of title, same width
    assert np.array_equal(long[one.shape[0] + step - 96 - 4:], one[one.shape[0] - 96 - 4:])  # the tiles as they were
