"""Side-by-side contact sheets of one world story: its ground truth and each model's video.

    sheet = comparison_sheet(story, {"TTT": video_a, "local attention": video_b})   # uint8 [H', W', 3]
    write_png(sheet, "story_00000.png")

One row per video (the ground truth rendered from the story first), one frame per segment (the middle
one) in columns, each tile labelled with its segment, time and scene and with the scorer's verdict on
every character the segment's paragraph places: ``Dax ok`` (rendered with the attributes established
where Dax first appears), ``Dax x`` (wrong or missing); ``*`` marks that first appearance, the one
segment whose paragraph states the attributes. Each row's title carries its story-level scores.
"""

from __future__ import annotations

import numpy as np

from tttgraph.data.scorer import score_verdicts, verdicts
from tttgraph.data.synthetic import SEGMENT_SECONDS
from tttgraph.data.world import Story, render_story
from tttgraph.errors import TTTGraphError


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def story_row(story: Story, video: np.ndarray, name: str) -> np.ndarray:
    """One labelled row of ``video`` [48 * segments, H, W, 3] uint8: a tile per segment."""
    from tttgraph.generate.video_io import contact_sheet, segment_frame_indices

    segments = len(story.segments)
    found = verdicts(video, story)
    score = score_verdicts(found, story)
    labels = []
    for s, seg in enumerate(story.segments):
        start = s * SEGMENT_SECONDS
        said = " ".join(f"{v.name}{'*' if v.first else ''} {'ok' if v.right else 'x'}" for v in found if v.segment == s)
        labels.append([f"seg {s + 1} · {start}-{start + SEGMENT_SECONDS} s · scene {seg.scene + 1}", said or "-"])
    title = (f"{name}: detection {_percent(score.detection)}, first appearance {_percent(score.first_appearance)}, "
             f"cross-segment consistency {_percent(score.consistency)}")
    return contact_sheet(video, segment_frame_indices(len(video), segments), columns=segments, labels=labels,
                         title=title)


def comparison_sheet(story: Story, videos: dict[str, np.ndarray]) -> np.ndarray:
    """The ground truth's row, then one row per named video (all of the story's length): uint8 [H', W', 3]."""
    if not videos:
        raise TTTGraphError("a comparison sheet needs at least one video besides the ground truth")
    height, width = next(iter(videos.values())).shape[1:3]
    rows = [story_row(story, render_story(story, height, width)[0], "ground truth")]
    rows += [story_row(story, video, name) for name, video in videos.items()]
    widths = {r.shape[1] for r in rows}
    if len(widths) != 1:
        raise TTTGraphError(f"the videos have different frame sizes (rows {sorted(widths)} px wide); pass videos of "
                            f"one size, {width}x{height} like the first")
    return np.concatenate(rows, axis=0)
