"""Stage config files: the reference recipe's values, strict parsing, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tttgraph.finetune.stages import StageConfig, StageConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs" / "finetune"


def test_stage_files_hold_the_reference_recipe():
    stages = {s: StageConfig.load(CONFIGS / f"stage_{s}s.json") for s in (3, 9, 18, 30, 63)}
    assert {s: c.train.steps for s, c in stages.items()} == {3: 5000, 9: 5000, 18: 1000, 30: 1000, 63: 250}
    first = stages[3]
    assert first.init_from is None and first.train.trainable == "all"
    assert (first.train.lr, first.train.lr_ttt, first.train.lr_ttt_end) == (1e-5, 1e-4, 1e-5)
    ttt = first.ttt_config()
    assert (ttt.segment_latent_frames, ttt.segment_overlap_frames, ttt.text_tokens_per_segment,
            ttt.mini_batch_size) == (12, 1, 226, 64)
    previous = 3
    for s in (9, 18, 30, 63):
        c = stages[s]
        assert c.init_from == f"runs/cogvideox_{previous}s/ttt" and c.clip_seconds == s
        assert c.train.trainable == "ttt_attention" and c.train.lr == c.train.lr_ttt == c.train.lr_ttt_end == 1e-5
        previous = s
    for c in stages.values():
        t = c.train
        assert (t.betas, t.eps, t.weight_decay, t.grad_clip, t.text_dropout) == ((0.9, 0.95), 1e-8, 1e-4, 0.1, 0.1)
        assert t.activation_checkpointing and c.model.kind == "pretrained" and c.parallel.mixed_precision == "bf16"
        assert 0.02 <= t.warmup_steps / t.steps <= 0.1


def test_round_trip_and_defaults():
    cfg = StageConfig()
    assert cfg.model.kind == "tiny" and cfg.data.dataset == "synthetic" and cfg.segments == 1
    assert StageConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("data, message", [
    ({"trian": {}}, r"unknown key\(s\) \['trian'\]; valid keys are \['checkpoint', 'clip_seconds'"),
    ({"train": {"stepz": 3}}, r"unknown key\(s\) \['stepz'\] in section train; valid keys are"),
    ({"train": {"steps": "10"}}, r"train.steps must be int, got '10'"),
    ({"train": {"betas": [0.9]}}, r"train.betas must be tuple"),
    ({"train": {"trainable": "attention"}}, r"train.trainable must be one of"),
    ({"clip_seconds": 10}, r"clip_seconds must be a positive multiple of 3"),
    ({"ttt": {"segment_frames": 12}}, r"section ttt: unknown TTTConfig key\(s\) \['segment_frames'\]"),
    ({"data": []}, r"data must be a JSON object"),
    ({"parallel": {"fsdp": "yes"}}, r"parallel.fsdp must be 'auto', 'on' or 'off'"),
], ids=["top", "train-key", "type", "betas", "trainable", "seconds", "ttt", "section", "fsdp"])
def test_bad_configs_are_refused_with_the_key_and_the_fix(data, message):
    with pytest.raises(StageConfigError, match=message):
        StageConfig.from_dict(data)


def test_load_errors(tmp_path):
    with pytest.raises(StageConfigError, match="is not a file"):
        StageConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(StageConfigError, match="is not valid JSON"):
        StageConfig.load(tmp_path / "bad.json")
