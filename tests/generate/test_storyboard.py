"""Storyboards: the bundled story, the three formats, and errors that point at the bad line."""

from __future__ import annotations

import json

import pytest

from tttgraph.generate.storyboard import (
    END_SCENE,
    START_SCENE,
    StoryboardError,
    bundled_storyboard,
    count_sentences,
    load_storyboard,
    parse_storyboard,
)

GOOD = "The red circle runs. The blue square hides. The camera does not move."
TWO = "The red circle runs. The blue square hides."


def test_bundled_story_is_63_seconds_of_21_segments_in_6_scenes():
    board = load_storyboard(bundled_storyboard())
    assert (board.num_segments, board.seconds, len(board.scenes)) == (21, 63, 6)
    paragraphs = board.paragraphs()
    starts = [i for i, p in enumerate(paragraphs) if p.startswith(START_SCENE)]
    ends = [i for i, p in enumerate(paragraphs) if p.endswith(END_SCENE)]
    assert starts == [0, 4, 7, 11, 15, 18]
    assert ends == [3, 6, 10, 14, 17, 20]
    negatives = board.negative_paragraphs()
    assert negatives[0] == "blurry, distorted shapes, flickering, low quality"  # the global one
    assert negatives[4] == "daylight, bright sun, blurry, low quality"  # scene 2's own
    assert all(3 <= count_sentences(t) <= 5 for s in board.scenes for t in s.segments)


def test_first_seconds_cuts_segments_and_closes_the_last_scene():
    board = load_storyboard(bundled_storyboard()).first_seconds(15)
    assert board.num_segments == 5 and len(board.scenes) == 2
    assert board.paragraphs()[4].startswith(START_SCENE) and board.paragraphs()[4].endswith(END_SCENE)
    with pytest.raises(StoryboardError, match=r"has 21 segments \(63 s of video\); 66 s needs 22"):
        load_storyboard(bundled_storyboard()).first_seconds(66)
    with pytest.raises(StoryboardError, match="positive multiple of 3"):
        load_storyboard(bundled_storyboard()).first_seconds(10)


def _docs(segments_a, segments_b, negative="ugly"):
    data = {"title": "t", "negative_prompt": negative,
            "scenes": [{"name": "a", "segments": segments_a}, {"segments": segments_b, "negative_prompt": "dark"}]}
    toml = (f'title = "t"\nnegative_prompt = "{negative}"\n\n[[scenes]]\nname = "a"\nsegments = [\n'
            + "".join(f'    "{s}",\n' for s in segments_a) + "]\n\n[[scenes]]\nnegative_prompt = \"dark\"\n"
            + "segments = [\n" + "".join(f"    '''{s}''',\n" for s in segments_b) + "]\n")
    yaml = (f"title: t\nnegative_prompt: {negative}\nscenes:\n  - name: a\n    segments:\n"
            + "".join(f'      - "{s}"\n' for s in segments_a) + "  - negative_prompt: dark\n    segments:\n"
            + "".join(f'      - "{s}"\n' for s in segments_b))
    return {"json": json.dumps(data, indent=2), "toml": toml, "yaml": yaml}


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
def test_the_three_formats_parse_to_the_same_storyboard(fmt):
    docs = _docs([GOOD, GOOD], [GOOD])
    board = parse_storyboard(docs[fmt], fmt, source=f"story.{fmt}")
    assert board == parse_storyboard(docs["toml"], "toml", source=f"story.{fmt}")
    assert board.num_segments == 3 and board.negative_paragraphs() == ["ugly", "ugly", "dark"]
    assert board.paragraphs()[1] == f"{GOOD} {END_SCENE}"


# The second scene's first segment has 2 sentences; each format reports the line it is on.
@pytest.mark.parametrize("fmt,line", [("toml", 14), ("json", 14), ("yaml", 10)])
def test_a_short_segment_is_reported_at_its_line(fmt, line, tmp_path):
    path = tmp_path / f"story.{fmt}"
    path.write_text(_docs([GOOD, GOOD], [TWO])[fmt])
    with pytest.raises(StoryboardError) as err:
        load_storyboard(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: scenes[1].segments[0]: has 2 sentence(s)"), message
    assert "3-5 sentences" in message


@pytest.mark.parametrize(
    "text,fmt,expected",
    [
        ('title = "x"\n[[scenes]]\nsegments = ["a", \n', "toml", r"story:\d+: invalid TOML"),
        ('{"scenes": [\n  {"segments": ["a"],}\n]}', "json", r"story:2: invalid JSON"),
        ("scenes:\n  - segments: [a\n  - b", "yaml", r"story:\d+: invalid YAML"),
        (f'[[scenes]]\nsegmnts = ["{GOOD}"]\n', "toml", r"story:2: scenes\[0\]\.segmnts: unknown key 'segmnts'; "
                                                        r"did you mean 'segments'\?"),
        (f'[[scenes]]\nsegments = [\n  "{GOOD}",\n  42,\n]\n', "toml",
         r"story:4: scenes\[0\]\.segments\[1\]: a segment is one paragraph \(a string\), got int 42"),
        (f'[[scenes]]\nsegments = ["{START_SCENE} {GOOD}"]\n', "toml",
         r"story:2: scenes\[0\]\.segments\[0\]: contains '<start_scene>'; scene markers are added automatically"),
        ('title = "x"\n', "toml", r"story: scenes: needs a non-empty list of scenes"),
        ('[[scenes]]\nname = "empty"\nsegments = []\n', "toml",
         r"story:3: scenes\[0\]\.segments: scene 0 \('empty'\) needs a non-empty list"),
        ('version = 2\n[[scenes]]\nsegments = ["a. b. c."]\n', "toml",
         r"story:1: version: .*version 2 is not supported"),
        (f'negative_prompt = 3\n[[scenes]]\nsegments = ["{GOOD}"]\n', "toml",
         r"story:1: negative_prompt: must be a string"),
        ('[[scenes]]\nsegments = ["One. Two. Three. Four. Five. Six."]\n', "toml",
         r"story:2: scenes\[0\]\.segments\[0\]: has 6 sentence\(s\).*move the rest to the next segment"),
    ],
    ids=["toml-syntax", "json-syntax", "yaml-syntax", "typo-key", "not-a-string", "marker", "no-scenes",
         "empty-scene", "version", "negative-type", "too-long"],
)
def test_malformed_storyboards_get_clear_errors(text, fmt, expected):
    with pytest.raises(StoryboardError, match=expected):
        parse_storyboard(text, fmt, source="story")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(StoryboardError, match="does not exist; pass an existing"):
        load_storyboard(tmp_path / "nope.toml")
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(StoryboardError, match=r"unknown storyboard format '\.txt'"):
        load_storyboard(tmp_path / "s.txt")


def test_sentence_counting():
    assert count_sentences("One. Two! Three?") == 3
    assert count_sentences('He said "stop." Then he left. And a fragment') == 3
    assert count_sentences("Pi is 3.14 exactly. Yes.") == 2  # a dot inside a number ends nothing
