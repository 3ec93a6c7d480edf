"""Generating a world story with the world base model, then scoring it with the world's scorer."""

from __future__ import annotations

import json

import pytest

from tttgraph.data.world import make_story
from tttgraph.generate.pipeline import GenerateError, GenerateOptions, generate, plan
from tttgraph.generate.storyboard import StoryboardError, load_storyboard


@pytest.fixture(scope="module")
def world_weights(tmp_path_factory):
    from tttgraph.models.world_model import save_world_weights, world_bundle

    bundle = world_bundle(require_weights=False)
    return save_world_weights(bundle.transformer, bundle.text_encoder, tmp_path_factory.mktemp("world"))


def test_a_world_story_file_is_a_storyboard(tmp_path):
    story = make_story(3, 7, "held_out")
    path = tmp_path / "story.json"
    path.write_text(story.to_json())
    board = load_storyboard(path)
    assert board.num_segments == 7 and board.paragraphs() == story.paragraphs()
    assert len(board.scenes) == len({s.scene for s in story.segments})
    data = json.loads(story.to_json())
    data["characters"][0]["colour"] = "purple"
    path.write_text(json.dumps(data))
    with pytest.raises(StoryboardError, match="story.json: character .* outside the palette"):
        load_storyboard(path)


def test_generate_a_world_story_and_score_it(world_weights, tmp_path):
    from tttgraph.data.evaluate import evaluate

    story = make_story(1, 2, "held_out")
    board = tmp_path / "s.story.json"
    board.write_text(story.to_json())
    options = GenerateOptions(storyboard=board, world=world_weights, steps=2, out=tmp_path / "s.mp4",
                              checkpoint_every=0, progress=False, backend="reference")
    job = plan(options)
    assert job.source == f"world:{world_weights}" and job.latent_shape == (1, 25, 48, 8, 12)
    assert (job.height, job.width) == (32, 48)
    result = generate(options, out=lambda *a: None)
    assert result.frames == 97 and result.size == (32, 48) and result.video.exists()
    scores, summary = evaluate([(result.video, board)])
    assert scores[0].segments == 2 and 0 <= summary["detection"] <= 1
    assert summary["ceiling_detection"] == 1.0


def test_world_without_weights_or_with_pretrained_is_refused(world_weights, tmp_path):
    with pytest.raises(GenerateError, match="holds no world base model weights; train them"):
        plan(GenerateOptions(world=tmp_path, out=tmp_path / "v.mp4"))
    with pytest.raises(GenerateError, match="--world and --pretrained name two base models"):
        plan(GenerateOptions(world=world_weights, pretrained=tmp_path, out=tmp_path / "v.mp4"))


def _world_results():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "world_results.py"
    spec = importlib.util.spec_from_file_location("world_results", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_world_results_generates_scores_and_resumes(world_weights, tmp_path):
    run = _world_results().run
    argv = ["--world", str(world_weights), "--seconds", "6", "--stories", "2", "--steps", "1", "--device", "cpu",
            "--backend", "reference", "--out", str(tmp_path / "res")]
    summary = run(argv)
    assert summary["stories"] == 2 and summary["ceiling_detection"] == 1.0 and 0 <= summary["detection"] <= 1
    assert sorted(p.name for p in (tmp_path / "res").glob("*.mp4")) == ["story_00000.mp4", "story_00001.mp4"]
    first = (tmp_path / "res" / "story_00000.mp4").stat().st_mtime_ns
    again = run(argv)  # every video exists: nothing is generated again, the same scores
    assert (tmp_path / "res" / "story_00000.mp4").stat().st_mtime_ns == first
    assert again["detection"] == summary["detection"]
