"""The world's stages: the world base model fine-tuned on world stories, through the normal stage runner."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tttgraph.finetune.stages import StageConfig, StageConfigError
from tttgraph.finetune.trainer import read_metrics, run_stage

from ..benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def world_weights(tmp_path_factory):
    """Freshly initialised world weights in a directory (no trained weights ship yet)."""
    from tttgraph.models.world_model import save_world_weights, world_bundle

    bundle = world_bundle(require_weights=False)
    return save_world_weights(bundle.transformer, bundle.text_encoder, tmp_path_factory.mktemp("world_weights"))


def _stage(weights, seconds: int, **extra) -> StageConfig:
    data = json.loads(open(f"examples/configs/world/stage_{seconds}s.json").read())
    data["model"]["pretrained"] = str(weights)
    data["data"].update(synthetic_samples=2, shard_size=2)
    data["train"].update(steps=2, batch_size=1, warmup_steps=1)
    data["checkpoint"] = {"every": 0, "keep": 1}
    data.pop("init_from", None)
    if "ttt" not in data:
        data["ttt"] = json.loads(open("examples/configs/world/stage_3s.json").read())["ttt"]
    data["ttt"]["backend"] = "reference"
    data.update(extra)
    return StageConfig.from_dict(data)


def test_world_stage_without_weights_names_the_fix(world_weights, tmp_path):
    from tttgraph.finetune.trainer import check_inputs

    cfg = _stage(tmp_path / "empty", 3)
    with pytest.raises(StageConfigError, match="holds no weights of it; train them with `tttgraph train-world"):
        run_stage(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    # --pretrained names the weights when the stage file does not (benchmarks/world_recipe.sh does so).
    found = check_inputs(cfg, tmp_path / "run", pretrained=str(world_weights), resume=False)
    assert found.pretrained == world_weights


@pytest.mark.parametrize("seconds", [3, 9, 18, 63])
def test_world_stage_files_load_and_chain(seconds):
    cfg = StageConfig.load(f"examples/configs/world/stage_{seconds}s.json")
    assert cfg.model.kind == "world" and cfg.data.dataset == "world" and cfg.segments == seconds // 3
    assert (cfg.init_from is None) == (seconds == 3)


def test_the_world_baseline_trains_on_world_stories_with_its_gates_held_at_zero(world_weights, tmp_path):
    """A world stage (world stories written as raw data, the world base model) run as the paper's baseline:
    the same fine-tuning with the TTT gates held at 0 (segment-local attention only)."""
    from safetensors.torch import load_file

    cfg = _stage(world_weights, 3)
    cfg = cfg.replace(clip_seconds=6, data=cfg.data.__class__(**{**cfg.data.__dict__, "synthetic_seconds": 6}),
                      ttt={**cfg.ttt, "gate_init": 0.0},
                      train=cfg.train.__class__(**{**cfg.train.__dict__, "freeze_gates": True}),
                      checkpoint=cfg.checkpoint.__class__(every=1, keep=2))
    lines: list[str] = []
    run_stage(cfg, tmp_path / "run", progress=False, log=lines.append)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert any("2 segment" in line for line in lines)
    stories = sorted((tmp_path / "run" / "data" / "world").glob("*.json"))
    assert len(stories) == 2
    story = json.loads(stories[0].read_text())
    assert story["format"] == "tttgraph-world-story" and len(story["paragraphs"]) == 2
    state = load_file(str(next((tmp_path / "run" / "ttt").glob("*.safetensors"))))
    gates = {k: v for k, v in state.items() if "_gate_" in k}
    assert gates and all(float(v.abs().max()) == 0.0 for v in gates.values())
    base = StageConfig.load("examples/configs/world/baseline_3s.json")
    assert base.train.freeze_gates and base.ttt["gate_init"] == 0.0

    # The memory probe reads a run's checkpoints one by one (a curve while it trains).
    from pathlib import Path

    memory = load_benchmark("world_memory")
    curve = memory.run(["--world", str(world_weights), "--seconds", "6", "--stories", "2", "--device", "cpu",
                        "--checkpoint", str(tmp_path / "run" / "checkpoints")])
    assert [Path(r["checkpoint"]).name for r in curve] == ["step-000001", "step-000002"]
    assert all(r["stated_pairs"] > 0 for r in curve)


def test_the_full_attention_bound_trains_and_generates_over_the_whole_clip(world_weights, tmp_path):
    """The upper bound's stage (``full_*.json``: attention over every frame with each paragraph kept to its
    segment, gates held at 0) trains on a 2-segment clip, and ``generate`` runs its save the same way."""
    from tttgraph.generate.pipeline import GenerateOptions, generate, plan

    full = json.loads(open("examples/configs/world/full_3s.json").read())
    assert full["ttt"]["attention_scope"] == "video" and full["train"]["freeze_gates"]
    cfg = _stage(world_weights, 3, ttt={**full["ttt"], "backend": "reference"})
    cfg = cfg.replace(clip_seconds=6, data=cfg.data.__class__(**{**cfg.data.__dict__, "synthetic_seconds": 6}),
                      train=cfg.train.__class__(**{**cfg.train.__dict__, "freeze_gates": True}))
    run_stage(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    for chained in (9, 18):  # the later full-attention stages chain on their own runs
        assert StageConfig.load(f"examples/configs/world/full_{chained}s.json").init_from == \
            f"runs/world_full_{chained // 3 if chained == 9 else 9}s/ttt"

    board = tmp_path / "story.json"
    from tttgraph.data.world import make_story

    board.write_text(make_story(2, 2, "held_out").to_json())
    options = GenerateOptions(storyboard=board, world=world_weights, ttt=tmp_path / "run" / "ttt", steps=1,
                              out=tmp_path / "v.mp4", contact_sheet="", checkpoint_every=0, progress=False)
    job = plan(options)
    assert job.ttt_config.attention_scope == "video" and job.estimate.segments == 2
    assert job.estimate.tokens == 2 * 64 + 25 * 96
    # Each segment's queries read its paragraph and all 25 latent frames: more pairs than local attention.
    local = plan(dataclasses.replace(options, ttt="none"))
    assert job.estimate.attention_flops > 1.5 * local.estimate.attention_flops
    assert generate(options, out=lambda *a: None).frames == 97


def test_world_probe_trains_a_variant_and_reads_its_memory_checkpoint_by_checkpoint(world_weights, tmp_path):
    """benchmarks/world_probe.py end to end at toy sizes: a variant's overrides reach the stage, the memory
    probe reads the save and, with --curve, every kept checkpoint; a rerun resumes (trains nothing)."""
    probe = load_benchmark("world_probe")
    small = ("data.synthetic_samples=2,data.shard_size=2,train.batch_size=1,train.warmup_steps=1,"
             "checkpoint.every=1,checkpoint.keep=5,ttt.backend=reference")
    argv = ["--config", "examples/configs/world/stage_3s.json", "--weights", str(world_weights),
            "--variant", f"a={small},train.lr_ttt=1e-3", "--stories", "0", "--max-steps", "2",
            "--curve", "--memory-stories", "2", "--out", str(tmp_path)]
    rows = probe.run(argv)
    stage = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert stage["train"]["lr_ttt"] == 1e-3 and stage["name"] == "world-3s-a"
    assert [r["variant"] for r in rows] == ["a"] and [step for step, _ in rows[0]["curve"]] == \
        ["step-000001", "step-000002"]
    assert rows[0]["stated_colour"] is not None
    again = probe.run(argv)  # everything is there: nothing runs again
    assert again == [{**rows[0], "train_seconds_this_run": again[0]["train_seconds_this_run"]}]
