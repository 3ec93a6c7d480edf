"""A synthetic storyboard dataset: small cartoon clips with consistent characters across scenes.

Each clip is a sequence of 3-second segments (16 fps, 48 frames each). A few characters (shapes
of fixed colour and size: "the red circle", "the blue square", ...) chase, hide behind a wall,
reappear and bounce; scenes change the background. Every segment comes with a storyboard
paragraph of 3-5 sentences that describes it; scene boundaries are marked with ``<start_scene>``
and ``<end_scene>`` as in the reference's storyboards. Everything is deterministic by seed and
needs no download, so tests, the README demo and the examples can train and generate with it.

Shapes: ``video`` is uint8 ``[T, H, W, 3]`` with ``T = 48 * segments``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tttgraph.errors import TTTGraphError

FPS = 16
SEGMENT_SECONDS = 3
FRAMES_PER_SEGMENT = FPS * SEGMENT_SECONDS

# name -> (RGB colour, shape); sizes are fixed per character (a fraction of the frame height).
CHARACTERS = {
    "red circle": ((220, 40, 40), "circle"),
    "blue square": ((40, 80, 220), "square"),
    "green triangle": ((40, 180, 60), "triangle"),
    "yellow diamond": ((230, 200, 30), "diamond"),
}
SIZES = {"red circle": 0.22, "blue square": 0.20, "green triangle": 0.24, "yellow diamond": 0.20}
BACKGROUNDS = {
    "a sunny meadow": (170, 220, 150),
    "a night sky": (30, 30, 70),
    "a sandy beach": (235, 215, 160),
    "a snowy field": (235, 240, 245),
}
ACTIONS = ("chase", "hide", "reappear", "bounce")
WALL = (110, 80, 60)


@dataclass
class Segment:
    """One 3-second segment: its scene, what happens, and the paragraph describing it."""

    scene: int
    background: str
    action: str
    actors: list[str]
    text: str


@dataclass
class Storyboard:
    segments: list[Segment] = field(default_factory=list)

    def paragraphs(self) -> list[str]:
        """One paragraph per segment, with scene markers where scenes start and end."""
        return mark_scenes([s.text for s in self.segments], [s.scene for s in self.segments])

    def to_json(self) -> str:
        return json.dumps({"segments": [asdict(s) for s in self.segments], "paragraphs": self.paragraphs()},
                          indent=1)


def mark_scenes(texts: list[str], scenes: list[int]) -> list[str]:
    """``texts`` (one per segment) with ``<start_scene>`` / ``<end_scene>`` where the scene number changes."""
    out = []
    for i, (text, scene) in enumerate(zip(texts, scenes, strict=True)):
        if i == 0 or scenes[i - 1] != scene:
            text = "<start_scene> " + text
        if i == len(texts) - 1 or scenes[i + 1] != scene:
            text = text + " <end_scene>"
        out.append(text)
    return out


def shape_mask(kind: str, cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """[H, W] bool mask of a shape of half-extent ``r`` centred at (cy, cx); triangles point up."""
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy * dy + dx * dx <= r * r
    if kind == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if kind == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    raise TTTGraphError(f"unknown shape {kind!r}; the shapes are circle, square, triangle, diamond")


def _story(rng: np.random.Generator, segments: int) -> Storyboard:
    cast = list(rng.choice(sorted(CHARACTERS), size=2, replace=False))
    board = Storyboard()
    scene, background = 0, str(rng.choice(sorted(BACKGROUNDS)))
    hidden = False
    for i in range(segments):
        if i and rng.random() < 0.34:  # a new scene
            scene += 1
            background = str(rng.choice([b for b in sorted(BACKGROUNDS) if b != background]))
            hidden = False
        action = "reappear" if hidden else str(rng.choice(["chase", "hide", "bounce"]))
        hidden = action == "hide"
        a, b = cast if rng.random() < 0.5 else cast[::-1]
        board.segments.append(Segment(scene, background, action, [a, b], _describe(action, a, b, background, rng)))
    return board


def _describe(action: str, a: str, b: str, background: str, rng: np.random.Generator) -> str:
    setting = f"The scene takes place in {background}."
    lines = {
        "chase": [f"The {a} chases the {b} from left to right.", f"The {b} runs away as fast as it can.",
                  f"The {a} gets closer and closer."],
        "hide": [f"The {b} slips behind a brown wall and hides.", f"The {a} looks around but cannot find it.",
                 f"Only the {a} is visible now."],
        "reappear": [f"The {b} jumps out from behind the brown wall.", f"The {a} is surprised to see it again.",
                     f"Both the {a} and the {b} are visible."],
        "bounce": [f"The {a} bounces up and down.", f"The {b} watches from the side.",
                   f"The {a} lands softly on the ground."],
    }[action]
    extra = ["The camera does not move.", "The light is bright and even."]
    chosen = lines + ([str(rng.choice(extra))] if rng.random() < 0.5 else [])
    return " ".join([setting, *chosen])


def render_clip(board: Storyboard, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """uint8 video [48 * segments, height, width, 3] showing the storyboard."""
    if height < 8 or width < 8:
        raise TTTGraphError(f"frames of {height}x{width} are too small to draw on; use at least 8x8")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for seg in board.segments:
        a, b = seg.actors
        ground = height * 0.65
        wall_x = width * 0.75
        for t in np.linspace(0.0, 1.0, FRAMES_PER_SEGMENT, endpoint=False):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = BACKGROUNDS[seg.background]
            positions = _positions(seg.action, t, width, ground)
            visible = {a: True, b: seg.action not in ("hide",) or t < 0.5}
            if seg.action == "reappear":
                visible[b] = t >= 0.3
            for name in (a, b):
                if not visible[name]:
                    continue
                cy, cx = positions[name == b]
                colour, kind = CHARACTERS[name]
                frame[shape_mask(kind, cy, cx, SIZES[name] * height, yy, xx)] = colour
            if seg.action in ("hide", "reappear"):
                frame[(xx >= wall_x - width * 0.06) & (xx <= wall_x + width * 0.06) & (yy >= height * 0.3)] = WALL
            noise = rng.integers(-4, 5, size=frame.shape)  # keeps frames from being piecewise constant
            frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _positions(action: str, t: float, width: int, ground: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(y, x) of the first and second actor at time t in [0, 1) of the segment."""
    if action == "chase":
        return (ground, width * (0.1 + 0.55 * t)), (ground, width * (0.3 + 0.6 * t))
    if action in ("hide", "reappear"):
        return (ground, width * 0.25), (ground, width * (0.5 + 0.25 * (t if action == "hide" else 1 - t)))
    return (ground - abs(np.sin(t * 2 * np.pi)) * ground * 0.5, width * 0.35), (ground, width * 0.7)


@dataclass
class Clip:
    video: np.ndarray  # uint8 [T, H, W, 3]
    storyboard: Storyboard
    seed: int


def make_clip(seed: int, seconds: int = 9, height: int = 32, width: int = 48) -> Clip:
    """A deterministic clip of ``seconds`` (a multiple of 3) with its storyboard."""
    if seconds < SEGMENT_SECONDS or seconds % SEGMENT_SECONDS:
        raise TTTGraphError(f"seconds must be a positive multiple of {SEGMENT_SECONDS}, got {seconds}")
    board = _story(np.random.default_rng(seed), seconds // SEGMENT_SECONDS)
    return Clip(render_clip(board, height, width, seed), board, seed)


def write_dataset(root: str | os.PathLike, samples: int, seconds: int = 9, height: int = 32, width: int = 48,
                  seed: int = 0) -> Path:
    """Write ``samples`` clips as ``sample_XXXXX.safetensors`` (video) + ``.json`` (storyboard).

    Resumable: existing complete samples are kept; each file is written atomically.
    """
    from safetensors.numpy import save_file

    from tttgraph.config import atomic_path, write_atomic

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(samples):
        stem = root / f"sample_{i:05d}"
        if stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file():
            continue
        clip = make_clip(seed + i, seconds, height, width)
        # Each file by an atomic rename (readable like any new file): a killed run leaves whole files.
        with atomic_path(stem.with_suffix(".safetensors")) as tmp:
            save_file({"video": clip.video}, str(tmp), metadata={"fps": str(FPS), "seed": str(seed + i)})
        write_atomic(stem.with_suffix(".json"), clip.storyboard.to_json())
    return root
