"""Storyboards: the text input of one-minute generation (one paragraph per 3-second segment).

Format (TOML shown; JSON and YAML take the same keys; ``.toml``, ``.json``, ``.yaml``/``.yml``)::

    version = 1                                   # optional, the format version
    title = "The chase"                           # optional
    negative_prompt = "blurry, low quality"       # optional, for every scene

    [[scenes]]
    name = "Morning in the meadow"                # optional
    negative_prompt = "night, darkness"           # optional, replaces the global one for this scene
    segments = [
        "The scene takes place in a sunny meadow. The red circle chases the blue square. ...",
        "...",                                    # one paragraph of 3-5 sentences per 3 seconds
    ]

    [[scenes]]
    segments = ["..."]

Every segment paragraph describes 3 seconds of video in 3-5 sentences (the reference's
storyboards; sentences end with ``.``, ``!`` or ``?``). The scene-transition markers
``<start_scene>`` / ``<end_scene>`` are added by :meth:`Storyboard.paragraphs` (first and last
segment of each scene) and must not be written by hand. A video of ``S`` seconds uses the first
``S / 3`` segments.

Errors raise :class:`StoryboardError` naming the file, the line and the field
(``story.toml:14: scenes[1].segments[2]: ...``) and saying how to fix it. Only data is parsed
(``tomllib``, ``json``, ``yaml.safe_load``-level composition): a storyboard can't run code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tttgraph.errors import TTTGraphError

FORMAT_VERSION = 1
SEGMENT_SECONDS = 3
MIN_SENTENCES, MAX_SENTENCES = 3, 5
START_SCENE, END_SCENE = "<start_scene>", "<end_scene>"
BUNDLED = {"one_minute": "one_minute.toml", "world_one_minute": "world_one_minute.json"}

_TOP_KEYS = {"version", "title", "negative_prompt", "scenes"}
_SCENE_KEYS = {"name", "negative_prompt", "segments"}
# A sentence ends at . ! or ? (possibly followed by closing quotes/brackets) before whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


class StoryboardError(TTTGraphError):
    """A storyboard file is malformed; the message names the file, line and field and the fix."""


@dataclass(frozen=True)
class Scene:
    """One scene: its segment paragraphs (3 s each) and an optional negative prompt."""

    segments: tuple[str, ...]
    name: str = ""
    negative_prompt: str | None = None


@dataclass(frozen=True)
class Storyboard:
    """A parsed, validated storyboard. ``source`` is the file it came from (for messages)."""

    scenes: tuple[Scene, ...]
    title: str = ""
    negative_prompt: str = ""
    source: str = "<string>"
    segment_lines: tuple[int | None, ...] = field(default=(), compare=False, repr=False)

    @property
    def num_segments(self) -> int:
        return sum(len(s.segments) for s in self.scenes)

    @property
    def seconds(self) -> int:
        return SEGMENT_SECONDS * self.num_segments

    def segment_scenes(self) -> list[int]:
        """Scene index of each segment, in order."""
        return [i for i, scene in enumerate(self.scenes) for _ in scene.segments]

    def paragraphs(self) -> list[str]:
        """One paragraph per segment, ``<start_scene>`` before a scene's first segment and
        ``<end_scene>`` after its last (the reference's scene-transition markers)."""
        scenes = self.segment_scenes()
        texts = [t for scene in self.scenes for t in scene.segments]
        out = []
        for i, text in enumerate(texts):
            if i == 0 or scenes[i - 1] != scenes[i]:
                text = f"{START_SCENE} {text}"
            if i == len(texts) - 1 or scenes[i + 1] != scenes[i]:
                text = f"{text} {END_SCENE}"
            out.append(text)
        return out

    def negative_paragraphs(self) -> list[str]:
        """The negative prompt of each segment: its scene's, else the global one, else ""."""
        return [self.scenes[i].negative_prompt if self.scenes[i].negative_prompt is not None
                else self.negative_prompt for i in self.segment_scenes()]

    def first_seconds(self, seconds: int) -> Storyboard:
        """The storyboard cut to its first ``seconds`` (a positive multiple of 3, at most its length)."""
        if not isinstance(seconds, int) or seconds < SEGMENT_SECONDS or seconds % SEGMENT_SECONDS:
            raise StoryboardError(
                f"seconds must be a positive multiple of {SEGMENT_SECONDS} (one segment is {SEGMENT_SECONDS} s), "
                f"got {seconds!r}; e.g. --seconds {max(SEGMENT_SECONDS, (int(seconds) // 3) * 3 or 3)}"
            )
        keep = seconds // SEGMENT_SECONDS
        if keep > self.num_segments:
            raise StoryboardError(
                f"{self.source} has {self.num_segments} segments ({self.seconds} s of video); {seconds} s needs "
                f"{keep}. Add {keep - self.num_segments} segment paragraph(s) or pass --seconds {self.seconds}"
            )
        scenes, left = [], keep
        for scene in self.scenes:
            if left <= 0:
                break
            scenes.append(Scene(scene.segments[:left], scene.name, scene.negative_prompt))
            left -= len(scene.segments)
        return Storyboard(tuple(scenes), self.title, self.negative_prompt, self.source, self.segment_lines[:keep])

    def prompt_fingerprint(self) -> str:
        """sha256 of what conditions generation (paragraphs with markers and negative prompts)."""
        data = json.dumps([self.paragraphs(), self.negative_paragraphs()], ensure_ascii=False)
        return hashlib.sha256(data.encode()).hexdigest()


def bundled_storyboard(name: str = "one_minute") -> Path:
    """Path of a storyboard shipped with tttgraph: ``one_minute`` (63 s, 21 segments, 6 scenes, for
    CogVideoX) or ``world_one_minute`` (a 63 s held-out world story: 4 characters, 8 scenes, each
    character's attributes stated only where it first appears; the world base model's default)."""
    if name not in BUNDLED:
        raise StoryboardError(f"no bundled storyboard {name!r}; bundled: {sorted(BUNDLED)}")
    return Path(__file__).resolve().parent / "stories" / BUNDLED[name]


def count_sentences(text: str) -> int:
    """Sentences in ``text``: runs of . ! ? before whitespace or the end; a final fragment counts."""
    ends = list(_SENTENCE_END.finditer(text.strip()))
    tail = text.strip()[ends[-1].end():].strip() if ends else text.strip()
    return len(ends) + (1 if tail else 0)


def load_storyboard(path: str | Path) -> Storyboard:
    """Read and validate a storyboard file (format from the suffix: .toml, .json, .yaml, .yml)."""
    from tttgraph.safe_read import read_text

    path = Path(path)
    if not path.exists():
        raise StoryboardError(
            f"storyboard {path} does not exist; pass an existing .toml/.json/.yaml file, or leave --storyboard "
            f"out for the bundled example ({bundled_storyboard()})"
        )
    fix = (f"save the storyboard as UTF-8 .toml/.json/.yaml text with a scenes list, or leave --storyboard out for "
           f"the bundled example ({bundled_storyboard()})")
    text = read_text(path, "storyboard", fix, error=StoryboardError)
    return parse_storyboard(text, _format_of(path), source=str(path))


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}
    if suffix not in formats:
        raise StoryboardError(f"{path}: unknown storyboard format {suffix!r}; use .toml, .json, .yaml or .yml")
    return formats[suffix]


def parse_storyboard(text: str, fmt: str = "toml", source: str = "<string>") -> Storyboard:
    """Parse and validate storyboard ``text`` in ``fmt`` ("toml", "json" or "yaml")."""
    parsers = {"toml": _parse_toml, "json": _parse_json, "yaml": _parse_yaml}
    if fmt not in parsers:
        raise StoryboardError(f"unknown storyboard format {fmt!r}; use one of {sorted(parsers)}")
    data, lines = parsers[fmt](text, source)
    return _validate(data, lines, source)


# ---------------------------------------------------------------------------------------------
# parsing: each parser returns the data and a map from a field path (tuple) to its 1-based line
# ---------------------------------------------------------------------------------------------

Lines = dict[tuple, int]


def _parse_toml(text: str, source: str) -> tuple[Any, Lines]:
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib's message ends with "(at line L, column C)"; lift the line to the front.
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        if match:
            where = f"{source}:{match.group(1)}"
        else:  # "(at end of document)": an unclosed bracket or string; its end is the last line
            where = f"{source}:{max(1, len(text.splitlines()))}"
        raise StoryboardError(f"{where}: invalid TOML: {err}. Check the quoting and brackets on that line") from None
    return data, _toml_lines(text)


def _toml_lines(text: str) -> Lines:
    """Lines of the storyboard fields in TOML text: top-level keys, ``[[scenes]]`` tables, their
    keys and each string of a ``segments = [...]`` array (a small lexer: strings, comments, brackets)."""
    lines: Lines = {}
    scene = -1
    pos, n = 0, len(text)
    line_of = _line_index(text)
    while pos < n:
        end = text.find("\n", pos)
        end = n if end < 0 else end
        raw = text[pos:end]
        stripped = raw.strip()
        if stripped.startswith("[[") and stripped[2:].split("]]")[0].strip() == "scenes":
            scene += 1
            lines[("scenes", scene)] = line_of(pos)
        key = re.match(r"\s*([A-Za-z0-9_\-]+)\s*=", raw)
        if key and not stripped.startswith("["):
            path = ("scenes", scene, key.group(1)) if scene >= 0 else (key.group(1),)
            lines[path] = line_of(pos)
            if key.group(1) == "segments":
                end = _toml_array_strings(text, pos + key.end(), path, lines, line_of)
        pos = end + 1
    return lines


def _toml_array_strings(text: str, pos: int, path: tuple, lines: Lines, line_of) -> int:
    """Record the line of each string in the array starting after ``pos``; return the end offset of its line."""
    n, item, depth = len(text), 0, 0
    while pos < n:
        c = text[pos]
        if c == "#":
            pos = text.find("\n", pos)
            pos = n if pos < 0 else pos
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth <= 0:
                stop = text.find("\n", pos)
                return n if stop < 0 else stop
        elif c in "\"'":
            quote = text[pos:pos + 3] if text[pos:pos + 3] in ('"""', "'''") else c
            if depth == 1:
                lines[(*path, item)] = line_of(pos)
                item += 1
            pos = _skip_string(text, pos, quote)
            continue
        elif c != "\n" and not c.isspace() and c != "," and depth == 1:
            lines[(*path, item)] = line_of(pos)  # a non-string element (reported as a type error)
            item += 1
            while pos < n and text[pos] not in ",]\n":
                pos += 1
            continue
        pos += 1
    return n


def _skip_string(text: str, pos: int, quote: str) -> int:
    """Offset just past the TOML string opening at ``pos`` with delimiter ``quote``."""
    i = pos + len(quote)
    escapes = quote[0] == '"'
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text.startswith(quote, i):
            return i + len(quote)
        i += 1
    return len(text)


def _line_index(text: str):
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def line_of(offset: int) -> int:
        import bisect

        return bisect.bisect_right(starts, offset)

    return line_of


def _parse_json(text: str, source: str) -> tuple[Any, Lines]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoryboardError(
            f"{source}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno}); check commas, quotes and brackets"
        ) from None
    lines: Lines = {}
    _json_positions(text, 0, (), lines, _line_index(text))
    return data, lines


def _json_positions(text: str, pos: int, path: tuple, lines: Lines, line_of) -> int:
    """Walk the (already validated) JSON value at ``pos``, recording the line of every value; return its end."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, pos)
    lines[path] = line_of(pos)
    if text[pos] == "{":
        pos = _skip_ws(text, pos + 1)
        while text[pos] != "}":
            key, pos = json.decoder.scanstring(text, pos + 1)
            pos = _skip_ws(text, pos)  # at ':'
            pos = _json_positions(text, pos + 1, (*path, key), lines, line_of)
            pos = _skip_ws(text, pos)
            if text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
        return pos + 1
    if text[pos] == "[":
        pos, index = _skip_ws(text, pos + 1), 0
        while text[pos] != "]":
            pos = _json_positions(text, pos, (*path, index), lines, line_of)
            pos, index = _skip_ws(text, pos), index + 1
            if text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
        return pos + 1
    _, end = decoder.raw_decode(text, pos)
    return end


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_yaml(text: str, source: str) -> tuple[Any, Lines]:
    try:
        import yaml
    except ImportError:
        raise StoryboardError(
            f"{source}: YAML storyboards need PyYAML (pip install pyyaml); or write the storyboard as TOML/JSON"
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else "?"
        raise StoryboardError(f"{source}:{line}: invalid YAML: {err.problem}; check the indentation there") from None
    except yaml.YAMLError as err:
        raise StoryboardError(f"{source}: invalid YAML: {err}") from None
    lines: Lines = {}
    if node is not None:
        _yaml_positions(node, (), lines)
    return data, lines


def _yaml_positions(node, path: tuple, lines: Lines) -> None:
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _yaml_positions(value, (*path, key.value), lines)
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _yaml_positions(value, (*path, i), lines)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _where(source: str, lines: Lines, path: tuple) -> str:
    """``file:line: field`` for ``path``, falling back to the nearest enclosing field with a line."""
    probe = path
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe)
    name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))
    return f"{source}:{line}: {name}" if line else f"{source}: {name or 'top level'}"


def _check_keys(obj: dict, allowed: set[str], source: str, lines: Lines, path: tuple) -> None:
    import difflib

    for key in obj:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {sorted(allowed)}"
            raise StoryboardError(f"{_where(source, lines, (*path, key))}: unknown key {key!r}; {hint}")


def _optional_str(obj: dict, key: str, source: str, lines: Lines, path: tuple) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise StoryboardError(
            f"{_where(source, lines, (*path, key))}: must be a string, got {type(value).__name__} {value!r}; "
            'quote it: key = "..."'
        )
    return value


def _validate(data: Any, lines: Lines, source: str) -> Storyboard:
    if isinstance(data, dict) and data.get("format") == "tttgraph-world-story":
        return _world_story(data, source)
    if not isinstance(data, dict):
        raise StoryboardError(
            f"{source}: a storyboard is a table/object with a 'scenes' list, got {type(data).__name__}"
        )
    _check_keys(data, _TOP_KEYS, source, lines, ())
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise StoryboardError(
            f"{_where(source, lines, ('version',))}: storyboard format version {version!r} is not supported; "
            f"this tttgraph reads version {FORMAT_VERSION}"
        )
    title = _optional_str(data, "title", source, lines, ()) or ""
    negative = _optional_str(data, "negative_prompt", source, lines, ()) or ""
    scenes_data = data.get("scenes")
    if not isinstance(scenes_data, list) or not scenes_data:
        raise StoryboardError(
            f"{_where(source, lines, ('scenes',))}: needs a non-empty list of scenes, got {scenes_data!r}; "
            "add [[scenes]] tables (TOML) or a \"scenes\": [...] list (JSON/YAML), each with segments"
        )
    scenes, segment_lines = [], []
    for i, scene in enumerate(scenes_data):
        path = ("scenes", i)
        if not isinstance(scene, dict):
            raise StoryboardError(f"{_where(source, lines, path)}: a scene must be a table/object with 'segments'")
        _check_keys(scene, _SCENE_KEYS, source, lines, path)
        name = _optional_str(scene, "name", source, lines, path) or ""
        scene_negative = _optional_str(scene, "negative_prompt", source, lines, path)
        segments = scene.get("segments")
        if not isinstance(segments, list) or not segments:
            raise StoryboardError(
                f"{_where(source, lines, (*path, 'segments'))}: scene {i}{f' ({name!r})' if name else ''} needs a "
                f"non-empty list of segment paragraphs (one per {SEGMENT_SECONDS} s), got {segments!r}"
            )
        for j, text in enumerate(segments):
            _check_segment(text, source, lines, (*path, "segments", j))
            segment_lines.append(lines.get((*path, "segments", j)))
        scenes.append(Scene(tuple(s.strip() for s in segments), name, scene_negative))
    return Storyboard(tuple(scenes), title, negative, source, tuple(segment_lines))


def _check_segment(text: Any, source: str, lines: Lines, path: tuple) -> None:
    where = _where(source, lines, path)
    if not isinstance(text, str):
        raise StoryboardError(f"{where}: a segment is one paragraph (a string), got {type(text).__name__} {text!r}")
    if not text.strip():
        raise StoryboardError(f"{where}: empty segment; describe the {SEGMENT_SECONDS} seconds in 3-5 sentences")
    for marker in (START_SCENE, END_SCENE):
        if marker in text:
            raise StoryboardError(
                f"{where}: contains {marker!r}; scene markers are added automatically at scene boundaries, "
                "remove it and start a new [[scenes]] entry instead"
            )
    sentences = count_sentences(text)
    if not MIN_SENTENCES <= sentences <= MAX_SENTENCES:
        fix = "add detail" if sentences < MIN_SENTENCES else "shorten it or move the rest to the next segment"
        raise StoryboardError(
            f"{where}: has {sentences} sentence(s); a segment paragraph describes {SEGMENT_SECONDS} s of video in "
            f"{MIN_SENTENCES}-{MAX_SENTENCES} sentences ({fix})"
        )


def _world_story(data: dict, source: str) -> Storyboard:
    """The storyboard of a world story JSON (``tttgraph.data.world.Story.to_json``): one scene per
    story scene, its segments' paragraphs (the scene markers are added by :meth:`Storyboard.paragraphs`)."""
    from tttgraph.data.world import Story

    try:
        story = Story.from_dict(data)
    except TTTGraphError as err:
        raise StoryboardError(f"{source}: {err}") from None
    scenes: list[list[str]] = []
    for i, seg in enumerate(story.segments):
        if i == 0 or seg.scene != story.segments[i - 1].scene:
            scenes.append([])
        scenes[-1].append(seg.text)
    return Storyboard(tuple(Scene(tuple(texts)) for texts in scenes), f"world story {story.seed} ({story.split})",
                      source=source)
