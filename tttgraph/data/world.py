"""A small world in which memory across segments is needed and measurable (issue #21, part 1).

Stories of 1 to 21 three-second segments, in scenes. Each story has 2 to 4 named characters, each a
coloured shape of a size, drawn from a small palette (:data:`COLOURS` x :data:`SHAPES` x
:data:`SIZES`). **A character's attributes are written only in the paragraph of the segment where it
first appears**; later paragraphs call it by name only, so a model that renders a later segment
correctly must carry what it read earlier across segments. Scene cuts change the background, and
characters leave and come back several segments later. Each character stands in a fixed *slot*
(left or right half of the frame) that the paragraph states every time, which is how the scorer
(:mod:`tttgraph.data.scorer`) knows where to look for it.

Held-out stories use name/attribute pairings never seen in training (:func:`is_held_out`), so a model
can only get them right by reading the text, not by remembering names.

Shapes: a rendered video is uint8 ``[48 * segments, H, W, 3]`` (16 fps); ground truth per frame is a
list of :class:`Placement`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from tttgraph.data.synthetic import FRAMES_PER_SEGMENT, mark_scenes, shape_mask
from tttgraph.errors import TTTGraphError

MAX_SEGMENTS = 21

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (30, 160, 50), "yellow": (240, 200, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.17, "big": 0.30}  # half-extent of the shape, as a fraction of the frame height
NAMES = ("Ada", "Bo", "Cleo", "Dax", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo", "Nia", "Oz", "Pip")
BACKGROUNDS = {
    "a sunny meadow": (170, 220, 150),
    "a night sky": (35, 35, 75),
    "a sandy beach": (235, 215, 165),
    "a snowy field": (235, 240, 245),
}
SLOTS = {"left": 0.25, "right": 0.75}  # x of a slot's centre, as a fraction of the frame width
ACTIONS = {"waits": "waits quietly", "hops": "hops up and down", "slides": "slides from side to side"}
SPLITS = ("train", "held_out")
HELD_OUT_EVERY = 5  # one attribute triple in five is held out for each name


@dataclass(frozen=True)
class Character:
    """A named coloured shape: what a paragraph says when the character first appears."""

    name: str
    colour: str
    shape: str
    size: str

    @property
    def attributes(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.size

    def introduction(self) -> str:
        return f"{self.name}, a {self.size} {self.colour} {self.shape},"


@dataclass(frozen=True)
class Appearance:
    """One character in one segment: where it stands and what it does."""

    name: str
    slot: str
    action: str


@dataclass
class WorldSegment:
    """One 3-second segment: its scene, background, who is there, and its paragraph."""

    scene: int
    background: str
    appearances: list[Appearance]
    text: str = ""


@dataclass
class Story:
    """A storyboard of the world with its ground truth: the cast and every segment's appearances."""

    seed: int
    split: str
    characters: list[Character]
    segments: list[WorldSegment] = field(default_factory=list)

    def character(self, name: str) -> Character:
        return next(c for c in self.characters if c.name == name)

    def first_segment(self, name: str) -> int:
        """Index of the segment in whose paragraph ``name``'s attributes are written."""
        return next(i for i, seg in enumerate(self.segments) if any(a.name == name for a in seg.appearances))

    def paragraphs(self) -> list[str]:
        """One paragraph per segment, ``<start_scene>``/``<end_scene>`` at scene boundaries."""
        return mark_scenes([s.text for s in self.segments], [s.scene for s in self.segments])

    def to_dict(self) -> dict:
        return {"format": "tttgraph-world-story", "version": 1, "seed": self.seed, "split": self.split,
                "characters": [asdict(c) for c in self.characters],
                "segments": [asdict(s) for s in self.segments], "paragraphs": self.paragraphs()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> Story:
        """Rebuild a story from :meth:`to_dict`; raises TTTGraphError naming what is malformed."""
        try:
            if data.get("format") != "tttgraph-world-story":
                raise TTTGraphError(f"not a world story (format {data.get('format')!r})")
            characters = [Character(**c) for c in data["characters"]]
            segments = [WorldSegment(s["scene"], s["background"], [Appearance(**a) for a in s["appearances"]],
                                     s["text"]) for s in data["segments"]]
            story = cls(int(data["seed"]), str(data["split"]), characters, segments)
        except (KeyError, TypeError, AttributeError) as err:
            raise TTTGraphError(f"a world story is malformed ({type(err).__name__}: {err}); write it with "
                                "Story.to_json") from None
        _validate(story)
        return story


def _validate(story: Story) -> None:
    names = {c.name for c in story.characters}
    for c in story.characters:
        if c.colour not in COLOURS or c.shape not in SHAPES or c.size not in SIZES:
            raise TTTGraphError(f"character {c} has attributes outside the palette {list(COLOURS)} x {SHAPES} x "
                                f"{list(SIZES)}")
    for i, seg in enumerate(story.segments):
        for a in seg.appearances:
            if a.name not in names or a.slot not in SLOTS or a.action not in ACTIONS:
                raise TTTGraphError(f"segment {i}: appearance {a} names an unknown character, slot or action")


def is_held_out(character: Character) -> bool:
    """Whether this name/attribute pairing is reserved for held-out stories (never in training)."""
    key = "|".join((character.name, *character.attributes)).encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % HELD_OUT_EVERY == 0


def _cast(rng: np.random.Generator, split: str, size: int) -> list[Character]:
    """``size`` characters of ``split`` with distinct names and colours (redrawn until every name has an
    attribute triple of its colour in the split: about one in six draws of a held-out name has none)."""
    while True:
        names = rng.choice(NAMES, size=size, replace=False)
        colours = rng.choice(list(COLOURS), size=size, replace=False)
        cast = []
        for name, colour in zip(names, colours, strict=True):
            options = [Character(str(name), str(colour), shape, sz) for shape in SHAPES for sz in SIZES]
            options = [c for c in options if is_held_out(c) == (split == "held_out")]
            if not options:
                break
            cast.append(options[int(rng.integers(len(options)))])
        else:
            return cast


def _who_appears(rng: np.random.Generator, cast: list[Character], segments: int) -> list[list[str]]:
    """Per segment, the names present (1 or 2). Character j appears in segment j (so everyone
    appears when the story is long enough); with 4+ segments the first character leaves for two
    segments and comes back in the last."""
    names = [c.name for c in cast]
    plan = [[str(n) for n in rng.choice(names, size=1 if rng.random() < 0.3 else 2, replace=False)]
            for _ in range(segments)]
    for j, name in enumerate(names[:segments]):
        plan[j] = [name] + [n for n in plan[j] if n != name][:1]
    if segments >= 4:
        first = names[0]
        gone = int(rng.integers(1, segments - 2))
        for i in (gone, gone + 1):
            plan[i] = [n for n in plan[i] if n != first]  # segment i still holds names[i] (i >= 1) or another
            if not plan[i]:
                plan[i] = [names[1]]
        plan[-1] = [first] + [n for n in plan[-1] if n != first][:1]
    return plan


def make_story(seed: int, segments: int, split: str = "train") -> Story:
    """A deterministic story of ``segments`` 3-second segments (1 to 21) from ``split``."""
    if split not in SPLITS:
        raise TTTGraphError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(segments, int) or not 1 <= segments <= MAX_SEGMENTS:
        raise TTTGraphError(f"segments must be an int in 1..{MAX_SEGMENTS}, got {segments!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    cast = _cast(rng, split, int(rng.integers(2, 5)))
    story = Story(seed, split, cast)
    scene, background, left_in_scene = 0, str(rng.choice(list(BACKGROUNDS))), int(rng.integers(1, 5))
    introduced: set[str] = set()
    for i, present in enumerate(_who_appears(rng, cast, segments)):
        if i and left_in_scene == 0:
            scene += 1
            background = str(rng.choice([b for b in BACKGROUNDS if b != background]))
            left_in_scene = int(rng.integers(1, 5))
        left_in_scene -= 1
        slots = list(SLOTS) if rng.random() < 0.5 else list(SLOTS)[::-1]
        appearances = [Appearance(name, slot, str(rng.choice(list(ACTIONS))))
                       for name, slot in zip(present, slots, strict=False)]  # one or two present, two slots
        segment = WorldSegment(scene, background, appearances)
        segment.text = _paragraph(story, segment, introduced, rng)
        introduced.update(a.name for a in appearances)
        story.segments.append(segment)
    return story


def _paragraph(story: Story, segment: WorldSegment, introduced: set[str], rng: np.random.Generator) -> str:
    """3-5 sentences. Attributes only at a character's first appearance; later its name only."""
    sentences = [f"The scene takes place in {segment.background}."]
    for a in segment.appearances:
        who = story.character(a.name)
        subject = who.introduction() if a.name not in introduced else a.name
        sentences.append(f"{subject} is on the {a.slot}.")
        sentences.append(f"{a.name} {ACTIONS[a.action]}.")
    while len(sentences) < 3:
        sentences.append(str(rng.choice(["The camera does not move.", "The light is soft and even."])))
    return " ".join(sentences[:5])


@dataclass(frozen=True)
class Placement:
    """Ground truth of one character in one frame: who, where (pixels) and how big."""

    name: str
    colour: str
    shape: str
    size: str
    slot: str
    cy: float
    cx: float
    radius: float


def placements(story: Story, segment: int, t: float, height: int, width: int) -> list[Placement]:
    """Where each character of ``segment`` is at time ``t`` in [0, 1) of the segment."""
    out = []
    for a in story.segments[segment].appearances:
        who = story.character(a.name)
        r = SIZES[who.size] * height
        ground = height - 1.5 - r  # resting on the bottom edge
        cy, cx = ground, SLOTS[a.slot] * width
        if a.action == "hops":
            cy = ground - abs(np.sin(t * 2 * np.pi)) * min(ground - r - 1, height * 0.25)
        elif a.action == "slides":
            cx += np.sin(t * 2 * np.pi) * width * 0.06
        out.append(Placement(a.name, who.colour, who.shape, who.size, a.slot, float(cy), float(cx), float(r)))
    return out


def render_story(story: Story, height: int = 32, width: int = 48, noise: int = 4) -> tuple[np.ndarray, list]:
    """(video uint8 [48 * segments, height, width, 3], per-frame list of :class:`Placement`)."""
    if height < 16 or width < 24:
        raise TTTGraphError(f"frames of {height}x{width} are too small for the world; use at least 16x24")
    rng = np.random.default_rng(story.seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames, truth = [], []
    for s, seg in enumerate(story.segments):
        for t in np.linspace(0.0, 1.0, FRAMES_PER_SEGMENT, endpoint=False):
            frame = np.empty((height, width, 3), np.int16)
            frame[:] = BACKGROUNDS[seg.background]
            placed = placements(story, s, float(t), height, width)
            for p in placed:
                frame[shape_mask(p.shape, p.cy, p.cx, p.radius, yy, xx)] = COLOURS[p.colour]
            if noise:  # keeps frames from being piecewise constant
                frame += rng.integers(-noise, noise + 1, size=frame.shape, dtype=np.int16)
            frames.append(np.clip(frame, 0, 255).astype(np.uint8))
            truth.append(placed)
    return np.stack(frames), truth



def write_stories(root, count: int, segments: int, split: str = "train", seed: int = 0, height: int = 32,
                  width: int = 48, *, prefix: str = "sample", story_suffix: str = ".json"):
    """Write ``count`` stories of ``split`` as ``PREFIX_XXXXX.safetensors`` (uint8 ``video``) + the story JSON.

    Story ``i`` is ``make_story(seed + i, segments, split)``. The story JSON carries ``paragraphs``,
    so with the default names the directory is a raw fine-tuning dataset
    (:func:`tttgraph.finetune.dataset.scan_raw`) and, with ``story_suffix=".story.json"``, what
    ``tttgraph evaluate`` reads. Resumable: complete samples are kept; each file is written atomically.
    """
    from pathlib import Path

    from safetensors.numpy import save_file

    from tttgraph.config import atomic_path, write_atomic

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        video_path, story_path = root / f"{prefix}_{i:05d}.safetensors", root / f"{prefix}_{i:05d}{story_suffix}"
        if video_path.is_file() and story_path.is_file():
            continue
        story = make_story(seed + i, segments, split)
        with atomic_path(video_path) as tmp:
            save_file({"video": render_story(story, height, width)[0]}, str(tmp))
        write_atomic(story_path, story.to_json())
    return root
