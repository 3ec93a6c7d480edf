"""The training stage: schedule, parameter groups, input checks, a run, its save, the next stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tttgraph
from tttgraph.finetune import trainer
from tttgraph.finetune.checkpointing import TrainingCheckpointError, list_checkpoints
from tttgraph.finetune.dataset import DatasetError
from tttgraph.finetune.stages import StageConfig, StageConfigError
from tttgraph.finetune.trainer import build_optimizer, lr_factors, read_metrics, run_stage, trainable_name

from .conftest import write_config


def test_lr_schedule_warms_up_then_constant_and_cosine():
    cfg = StageConfig.from_dict({"train": {"steps": 100, "warmup_steps": 10, "lr_ttt": 1e-4, "lr_ttt_end": 1e-5}})
    constant, cosine = lr_factors(cfg, 100)
    assert [constant(s) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert cosine(0) == 0.1 and cosine(10) == 1.0
    assert math.isclose(cosine(99), 0.1) and math.isclose(cosine(round(10 + 89 / 2)), 0.55, rel_tol=0.02)


def test_optimizer_groups_trainable_sets_and_decay():
    assert trainable_name("transformer_blocks.0.attn1.gated_ttt.ttt.w1", "ttt")
    assert trainable_name("transformer_blocks.0.attn1.to_q.weight", "ttt_attention")
    assert trainable_name("transformer_blocks.0.attn1.norm_k.bias", "ttt_attention")
    assert not trainable_name("transformer_blocks.0.ff.net.0.proj.weight", "ttt_attention")
    assert not trainable_name("transformer_blocks.0.attn1.to_q.weight", "ttt")
    named = {
        "blocks.0.attn1.gated_ttt.ttt.wq.weight": torch.nn.Parameter(torch.zeros(4, 4)),
        "blocks.0.attn1.gated_ttt.ttt.b1": torch.nn.Parameter(torch.zeros(2, 8)),
        "blocks.0.attn1.gated_ttt.ttt.ttt_norm_weight": torch.nn.Parameter(torch.zeros(2, 4)),
        "blocks.0.attn1.gated_ttt.forward_gate_video": torch.nn.Parameter(torch.zeros(4)),
        "blocks.0.attn1.to_q.weight": torch.nn.Parameter(torch.zeros(4, 4)),
        "blocks.0.attn1.to_q.bias": torch.nn.Parameter(torch.zeros(4)),
    }
    cfg = StageConfig.from_dict({"train": {"lr": 1e-5, "lr_ttt": 1e-4, "weight_decay": 1e-4, "betas": [0.9, 0.95]}})
    opt, _ = build_optimizer(cfg, named, 10)
    groups = {g["name"]: g for g in opt.param_groups}
    assert {k: len(g["params"]) for k, g in groups.items()} == {
        "pretrained/decay": 1, "pretrained/no_decay": 1, "ttt/decay": 1, "ttt/no_decay": 3}
    assert groups["ttt/no_decay"]["weight_decay"] == 0 and groups["ttt/decay"]["weight_decay"] == 1e-4
    assert groups["pretrained/decay"]["initial_lr"] == 1e-5 and groups["ttt/decay"]["initial_lr"] == 1e-4
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a model would be built: errors must come before any compute."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error was found")
    monkeypatch.setattr(trainer, "_load_bundle", refuse)


def test_high_noise_fraction_draws_that_share_of_timesteps_from_the_noisy_end(clips_3s):
    from tttgraph.finetune.dataset import PrecomputedClips

    data = PrecomputedClips(clips_3s)
    positions = list(range(400))

    def steps(**extra):
        return trainer.sample_batch(data, positions, seed=0, data_seed=0, text_dropout=0.0, num_train_timesteps=1000,
                                    **extra)[3]

    uniform = steps()
    assert torch.equal(uniform, steps(high_noise_fraction=0.0, high_noise_from=900))  # off: the same draws
    assert 0.05 < (uniform >= 900).float().mean() < 0.16
    assert bool((steps(high_noise_fraction=1.0, high_noise_from=900) >= 900).all())
    half = (steps(high_noise_fraction=0.5, high_noise_from=900) >= 900).float().mean()
    assert 0.45 < half < 0.65  # half drawn from [900, 1000), a tenth of the rest lands there too
    with pytest.raises(StageConfigError, match="high_noise_fraction"):
        StageConfig.from_dict({"train": {"high_noise_fraction": 1.5}})


def test_bad_inputs_fail_before_any_compute(no_compute, clips_3s, tmp_path):
    base = StageConfig.from_dict({"data": {"precomputed": str(clips_3s)}})
    out = tmp_path / "out"
    with pytest.raises(StageConfigError, match="starts from init_from=.*not a finished stage.*Run the previous stage"):
        run_stage(base.replace(init_from=str(tmp_path / "stage_3s" / "ttt")), out)
    with pytest.raises(StageConfigError, match="pass --pretrained DIR"):
        run_stage(StageConfig.from_dict({"model": {"kind": "pretrained"}}), out)
    with pytest.raises(tttgraph.TTTGraphError, match="lacks the subfolder"):
        (tmp_path / "ckpt" / "transformer").mkdir(parents=True)
        run_stage(base, out, pretrained=str(tmp_path / "ckpt"))
    with pytest.raises(DatasetError, match="does not exist"):
        run_stage(StageConfig.from_dict({"data": {"dataset": str(tmp_path / "none")}}), out)
    with pytest.raises(DatasetError, match="holds 3 s clips, stage .* trains on 6 s"):
        run_stage(base.replace(clip_seconds=6), out)
    with pytest.raises(TrainingCheckpointError, match="holds no checkpoint; start without --resume"):
        run_stage(base, out, resume=True)
    (out / "checkpoints" / "step-000004").mkdir(parents=True)
    (out / "checkpoints" / "step-000004" / "trainer.json").write_text("{}")
    with pytest.raises(TrainingCheckpointError, match="already holds a run .* pass --resume"):
        run_stage(base, out)


def test_cli_reports_errors_with_exit_code_1(tmp_path, capsys):
    from tttgraph.cli import main

    (tmp_path / "c.json").write_text(json.dumps({"train": {"lr_sched": "cosine"}}))
    assert main(["finetune", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tttgraph finetune: error: ") and len(err.splitlines()) == 1
    assert "unknown key(s) ['lr_sched'] in section train" in err


def test_a_stage_trains_saves_and_the_next_stage_starts_from_it(clips_3s, raw_dataset, bundle, tmp_path):
    out = tmp_path / "stage1"
    cfg = StageConfig.load(write_config(tmp_path / "s1.json", clips_3s))
    summary = run_stage(cfg, out, progress=False, log=lambda *a: None)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(trainer.COLUMNS) <= set(rows[0]) and all(np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["lr"] == 0.5e-3 and rows[2]["lr"] == 1e-3  # warm-up over 2 steps, then constant
    assert summary["first_loss"] == rows[0]["loss"] and summary["trained_parameters"] == summary["total_parameters"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [4, 6]  # keep=2

    # The stage's save restores onto a fresh base with exactly the trained weights.
    from tttgraph.models.cogvideox_bundle import tiny_bundle

    final = load_file(str(out / "checkpoints" / "step-000006" / "model-rank00000.safetensors"))
    example = trainer._example_inputs(bundle, trainer.PrecomputedClips(clips_3s), 2)
    restored = tttgraph.restore(tiny_bundle(0).transformer, out / "ttt", example, progress=False)
    state = restored.state_dict()
    assert all(torch.equal(state[n], t) for n, t in final.items())

    # Stage 2 on 6 s clips starts from it and trains only TTT + attention.
    from tttgraph.finetune.precompute import precompute

    clips_6s = precompute(bundle, raw_dataset, tmp_path / "clips6", 6, progress=False)
    cfg2 = StageConfig.from_dict({"clip_seconds": 6, "init_from": str(out / "ttt"),
                                  "data": {"precomputed": str(clips_6s)},
                                  "train": {"steps": 2, "batch_size": 1, "trainable": "ttt_attention", "lr": 1e-3},
                                  "checkpoint": {"every": 0}})
    summary2 = run_stage(cfg2, tmp_path / "stage2", progress=False, log=lambda *a: None)
    assert 0 < summary2["trained_parameters"] < summary2["total_parameters"]
    after = tttgraph.restore(tiny_bundle(0).transformer, tmp_path / "stage2" / "ttt",
                             trainer._example_inputs(bundle, trainer.PrecomputedClips(clips_6s), 1),
                             progress=False).state_dict()
    changed = {n for n in state if not torch.equal(state[n], after[n])}
    assert any(".gated_ttt." in n for n in changed) and any(".attn1.to_q." in n for n in changed)
    assert all(trainable_name(n, "ttt_attention") for n in changed)


def test_default_command_trains_the_tiny_synthetic_run(tmp_path, capsys):
    from tttgraph.cli import main

    assert main(["finetune", "--tiny", "--out", str(tmp_path / "run"), "--max-steps", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "tiny-synthetic-3s" in text and "24 clips" in text and str(tmp_path / "run" / "ttt") in text
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "data" / "synthetic" / "sample_00023.json").is_file()


def test_pretrained_directory_is_loaded_from_local_files(bundle, clips_3s, tmp_path, capsys):
    from tttgraph.cli import main
    from tttgraph.models.cogvideox_bundle import save_bundle

    model_dir = save_bundle(bundle, tmp_path / "CogVideoX-tiny")
    config = write_config(tmp_path / "c.json", clips_3s, steps=1)
    args = ["finetune", "--config", str(config), "--pretrained", str(model_dir), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert f"model {model_dir} + TTT" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1]
    assert tttgraph.checkpoint.read_recipe(tmp_path / "run" / "ttt")["model_class"] == "CogVideoXTransformer3DModel"
