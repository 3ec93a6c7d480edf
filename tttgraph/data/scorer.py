"""Score a video of a world story from its pixels (issue #21, part 2).

For every (character, segment) pair of the story, the scorer looks in the character's slot (the
half of the frame its paragraph names) on a few frames of the segment, finds the palette colour that
covers most of it, and reads the blob of that colour: its colour, shape (fill of its bounding box,
and for the half-filled shapes whether it widens downwards) and size (its extent). The majority over
the frames is what the video rendered. Per story it reports:

- detection rate: the fraction of pairs where a character was found in its slot;
- first-appearance accuracy: the fraction of characters rendered with the attributes their
  introducing paragraph states, in that segment;
- cross-segment consistency: the fraction of (character, later segment) pairs whose rendered
  attributes equal the ones established at the character's first appearance (a pair where nothing is
  found counts as inconsistent). Later paragraphs name the character only, so this needs memory;
- the same on the story's ground-truth frames (the scorer's ceiling), and the chance level of
  consistency (a uniformly random attribute triple: 1 / 32);
- consistency by attribute: the same fraction for the colour, the shape and the size alone (a
  character kept red but drawn as a blob keeps its colour only), with their chance levels.

Layouts: video uint8 ``[T, H, W, 3]`` with T = 48 per segment (16 fps).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from tttgraph.data.world import BACKGROUNDS, COLOURS, FRAMES_PER_SEGMENT, SHAPES, SIZES, SLOTS, Story, render_story
from tttgraph.errors import TTTGraphError

CHANCE_CONSISTENCY = 1.0 / (len(COLOURS) * len(SHAPES) * len(SIZES))
ATTRIBUTES = ("colour", "shape", "size")  # the order of Detection.attributes
CHANCE_BY_ATTRIBUTE = {"colour": 1.0 / len(COLOURS), "shape": 1.0 / len(SHAPES), "size": 1.0 / len(SIZES)}
FRAMES_PER_LOOK = 6  # frames read per segment
_PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # [P, 3]
_NAMES = list(COLOURS)
MAX_COLOUR_DISTANCE = 90.0  # a pixel further than this from every palette colour is no character's
MIN_FILL = 0.4  # below this fraction of its bounding box a region is no drawn shape (they fill >= 0.5)


@dataclass(frozen=True)
class Detection:
    """What one slot of one frame shows: a character's colour, shape and size."""

    colour: str
    shape: str
    size: str

    @property
    def attributes(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.size


def _slot_columns(slot: str, width: int) -> slice:
    """The half of the frame a slot is."""
    half = width // 2
    return slice(0, half) if SLOTS[slot] < 0.5 else slice(half, width)


def colour_labels(frame: np.ndarray) -> np.ndarray:
    """[H, W] index into :data:`COLOURS` of each pixel's character colour, -1 for none (background, far)."""
    pixels = frame.astype(np.float32)[..., None, :]  # [H, W, 1, 3]
    dist = np.sqrt(((pixels - _PALETTE) ** 2).sum(-1))  # [H, W, P]
    nearest = dist.argmin(-1)
    is_character = (nearest < len(COLOURS)) & (dist.min(-1) <= MAX_COLOUR_DISTANCE)
    return np.where(is_character, nearest, -1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask`` [h, w] (bool), as a mask of the same shape."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, region = [(int(y0), int(x0))], []
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def classify_blob(mask: np.ndarray, height: int) -> tuple[str, str] | None:
    """(shape, size) of the largest connected region of ``mask`` [h, w] (bool), or None if it is too
    small or too ragged to be a drawn shape (every shape of the palette fills at least half of its
    bounding box; scattered pixels of a noisy frame that happen to match a colour do not)."""
    mask = largest_component(mask)
    ys, xs = np.nonzero(mask)
    min_area = 0.5 * (SIZES["small"] * height) ** 2  # half a small diamond
    if ys.size < min_area:
        return None
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = bottom - top + 1, right - left + 1
    half_extent = max(h, w) / 2.0
    size = "big" if half_extent / height > (SIZES["small"] + SIZES["big"]) / 2 else "small"
    fill = ys.size / float(h * w)
    if fill < MIN_FILL:
        return None
    if fill > 0.9:
        shape = "square"
    elif fill > 0.66:
        shape = "circle"
    else:
        rows = mask[top:bottom + 1, left:right + 1].sum(1).astype(np.float32)
        third = max(1, h // 3)
        upper, lower = rows[:third].mean(), rows[-third:].mean()
        shape = "triangle" if lower > 1.6 * upper else "diamond"
    return shape, size


def detect(frame: np.ndarray, slot: str) -> Detection | None:
    """The character in ``slot`` of ``frame`` [H, W, 3] uint8, or None if there is none."""
    height, width = frame.shape[:2]
    labels = colour_labels(frame[:, _slot_columns(slot, width)])
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(COLOURS))
    if counts.max(initial=0) == 0:
        return None
    colour = int(counts.argmax())
    found = classify_blob(labels == colour, height)
    return None if found is None else Detection(_NAMES[colour], *found)


def _look(video: np.ndarray, segment: int, slot: str) -> Detection | None:
    """Majority over FRAMES_PER_LOOK frames of the segment (None unless found in at least half)."""
    start = segment * FRAMES_PER_SEGMENT
    frames = np.linspace(start, start + FRAMES_PER_SEGMENT - 1, FRAMES_PER_LOOK).round().astype(int)
    found = [d for d in (detect(video[f], slot) for f in frames) if d is not None]
    if len(found) * 2 < len(frames):
        return None
    return Counter(found).most_common(1)[0][0]


@dataclass
class StoryScore:
    """One story's scores (fractions in [0, 1]; None where the story has no such pair)."""

    seed: int
    segments: int
    detection: float
    first_appearance: float
    consistency: float | None
    pairs: int
    later_pairs: int
    # consistency of each attribute alone (colour, shape, size) over the later pairs: partial memory
    by_attribute: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """One (character, segment) pair: what the story asks for in a slot and what the video shows there."""

    segment: int
    name: str
    slot: str
    expected: tuple[str, str, str]  # the attributes stated where the character first appears
    seen: Detection | None
    first: bool  # the segment that introduces the character (its paragraph states the attributes)

    @property
    def right(self) -> bool:
        return self.seen is not None and self.seen.attributes == self.expected


def verdicts(video: np.ndarray, story: Story) -> list[Verdict]:
    """Every (character, segment) pair of ``story`` read from ``video`` [48 * segments, H, W, 3] uint8."""
    expected = FRAMES_PER_SEGMENT * len(story.segments)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < expected:
        raise TTTGraphError(f"the video must be uint8 [T, H, W, 3] with T >= {expected} (48 frames per segment of "
                            f"the story's {len(story.segments)}), got shape {tuple(video.shape)}")
    return [Verdict(s, a.name, a.slot, story.character(a.name).attributes, _look(video, s, a.slot),
                    story.first_segment(a.name) == s)
            for s, seg in enumerate(story.segments) for a in seg.appearances]


def score_video(video: np.ndarray, story: Story) -> StoryScore:
    """Score ``video`` [48 * segments, H, W, 3] uint8 against ``story``."""
    return score_verdicts(verdicts(video, story), story)


def score_verdicts(found: list[Verdict], story: Story) -> StoryScore:
    """The story-level scores of :func:`verdicts` already read from a video."""
    firsts = [v for v in found if v.first]
    later = [v for v in found if not v.first]
    by_attribute = {name: sum(v.seen is not None and v.seen.attributes[i] == v.expected[i] for v in later) / len(later)
                    for i, name in enumerate(ATTRIBUTES)} if later else None
    return StoryScore(story.seed, len(story.segments), sum(v.seen is not None for v in found) / len(found),
                      sum(v.right for v in firsts) / len(firsts),
                      sum(v.right for v in later) / len(later) if later else None, len(found), len(later),
                      by_attribute)


def score_ground_truth(story: Story, height: int = 32, width: int = 48) -> StoryScore:
    """The scorer on the story's own rendering: its ceiling for this story."""
    return score_video(render_story(story, height, width)[0], story)


def summarize(scores: list[StoryScore], ceiling: list[StoryScore] | None = None) -> dict:
    """Means over stories (consistency over stories that have later pairs), with the ceiling and chance."""
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    out = {
        "stories": len(scores),
        "detection": mean(s.detection for s in scores),
        "first_appearance": mean(s.first_appearance for s in scores),
        "consistency": mean(s.consistency for s in scores),
        "chance_consistency": CHANCE_CONSISTENCY,
        "consistency_by_attribute": {a: mean(s.by_attribute[a] for s in scores if s.by_attribute)
                                     for a in ATTRIBUTES},
        "chance_by_attribute": dict(CHANCE_BY_ATTRIBUTE),
    }
    if ceiling is not None:
        out["ceiling_consistency"] = mean(s.consistency for s in ceiling)
        out["ceiling_detection"] = mean(s.detection for s in ceiling)
    return out
