"""The per-GPU memory plan (issue #25): hand-computed cases, the 63 s stage, the refusal and the --plan flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tttgraph.errors import TTTGraphError
from tttgraph.finetune.stages import StageConfig, StageConfigError
from tttgraph.layout import SequenceLayout
from tttgraph.parallel.memory_plan import (
    BACKWARD_WORKING_PER_TOKEN,
    COGVIDEOX_5B,
    EXCHANGE_PER_TOKEN,
    GIB,
    Architecture,
    MemoryPlanError,
    Settings,
    Workload,
    fitting_settings,
    generation_plan,
    require_fit,
    saved_per_token,
    training_plan,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = Architecture(layers=2, width=8, heads=2, params=1000, block_params=300, trainable=400, block_trainable=150)
# 2 segments of 2 frames + 1 overlap, 4 text tokens each, 6 tokens per frame: 5 frames, 8 + 30 = 38 tokens.
WORK = Workload(SequenceLayout(4, 6, 2, 1), 5)
H100 = 80 * GIB * 0.9


def test_training_plan_by_hand_with_context_fsdp_and_checkpointing():
    plan = training_plan(SMALL, WORK, Settings(gpus=4, context=2, batch=1))
    # Rank 1 holds the larger share: segment 1's text (4) and frames 2..4 (3 x 6 = 18) = 22 tokens.
    assert WORK.tokens == 38 and plan.rank_tokens == 22
    s = saved_per_token()
    assert plan["parameters (fp32)"] == 1000 * 4 / 4
    assert plan["gradients (fp32)"] == 400 * 4 / 4
    assert plan["optimizer state (AdamW)"] == 2 * 400 * 4 / 4
    assert plan["unsharded blocks (FSDP)"] == (2 * 300 + 150) * 4
    assert plan["saved activations"] == 2 * 22 * 8 * 2 + 38 * 8 * 2  # blocks' bf16 inputs + block 0's unsplit one
    assert plan["largest transient"] == pytest.approx((s + BACKWARD_WORKING_PER_TOKEN + EXCHANGE_PER_TOKEN) * 8 * 22)
    assert plan.total == pytest.approx(sum(b for _, b in plan.items))


def test_training_plan_by_hand_without_checkpointing_or_sharding():
    plan = training_plan(SMALL, WORK, Settings(gpus=1, context=1, batch=2, activation_checkpointing=False,
                                               fsdp=False))
    n = 2 * 38
    assert plan["parameters (fp32)"] == 4000 and plan["unsharded blocks (FSDP)"] == 0
    assert plan["saved activations"] == pytest.approx(2 * saved_per_token() * 8 * n)
    assert plan["largest transient"] == pytest.approx(BACKWARD_WORKING_PER_TOKEN * 8 * n)


def test_generation_plan_by_hand():
    plan = generation_plan(SMALL, WORK, Settings(gpus=2, context=2, batch=2, fsdp=False))
    assert plan["weights"] == 1000 * 2
    assert plan["activations"] == 12 * (2 * 22) * 8 * 2


def test_cogvideox_5b_architecture_counts():
    arch = Architecture.cogvideox(COGVIDEOX_5B, "ttt_attention")
    w = 3072
    ttt_layer = 4 * (w * w + w) + (w * 48 + 48) + 2 * w + 2 * 48 * 64 + 48 * 64 * 256 * 2 + 48 * 256 + 48 * 64 + 4 * w
    attention = 4 * (w * w + w) + 4 * 64
    assert arch.block_trainable == ttt_layer + attention
    assert arch.trainable == 42 * (ttt_layer + attention)
    assert arch.params - Architecture.cogvideox(COGVIDEOX_5B, "all").params == 0
    assert 1.6e9 < 42 * ttt_layer < 1.7e9  # "adding 1.66B parameters" (README)
    with pytest.raises(TTTGraphError, match="trainable must be"):
        Architecture.cogvideox(COGVIDEOX_5B, "some")


def test_63s_stage_fits_8_gpus_with_context_8_and_lists_16_and_32_gpu_settings():
    arch = Architecture.cogvideox(COGVIDEOX_5B)
    work = Workload.cogvideox(63)
    assert work.tokens == 346_296
    assert not training_plan(arch, work, Settings(8, 1, 1), H100).fits  # data parallel alone: 83 GiB of inputs
    plan = training_plan(arch, work, Settings(8, 8, 1), H100)
    assert plan.fits and plan.rank_tokens == 3 * 226 + 36 * 1350
    assert 40 * GIB < plan.total < 60 * GIB
    on16 = {(p.settings.data, p.settings.context) for p in fitting_settings(arch, work, 16, H100)}
    assert (2, 8) in on16 and (1, 16) in on16  # 2 samples per micro-step with context 8
    on32 = {(p.settings.data, p.settings.context, p.settings.batch) for p in fitting_settings(arch, work, 32, H100,
                                                                                              batch=2)}
    assert (2, 16, 2) in on32  # 4 samples per micro-step


def test_refusal_lists_settings_that_fit():
    arch = Architecture.cogvideox(COGVIDEOX_5B)
    work = Workload.cogvideox(63)
    plan = training_plan(arch, work, Settings(8, 1, 1), H100)
    with pytest.raises(MemoryPlanError, match=r"(?s)more than the 72.0 GiB.*8 GPU\(s\) = 1 data x 8 context"):
        require_fit(plan, arch, work)
    plan = training_plan(arch, Workload.cogvideox(63), Settings(1, 1, 1), H100)
    with pytest.raises(MemoryPlanError, match="none on 1 GPU"):
        require_fit(plan, arch, work)
    require_fit(training_plan(arch, work, Settings(8, 8, 1), H100), arch, work)  # fits: no error


def test_bad_settings_are_named():
    arch = Architecture.cogvideox(COGVIDEOX_5B)
    with pytest.raises(TTTGraphError, match="12 GPUs can't be grouped into context groups of 8"):
        training_plan(arch, Workload.cogvideox(63), Settings(12, 8, 1))
    with pytest.raises(TTTGraphError, match="48 heads can't be split over a context group of 5"):
        training_plan(arch, Workload.cogvideox(63), Settings(5, 5, 1))
    with pytest.raises(StageConfigError, match="parallel.context must be >= 1"):
        StageConfig.from_dict({"parallel": {"context": 0}})
    with pytest.raises(StageConfigError, match=r"parallel.context=3 is more than the 2 segment\(s\) of a 6 s clip"):
        StageConfig.from_dict({"clip_seconds": 6, "parallel": {"context": 3}})


def _cli(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "tttgraph", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_plan_flags_print_the_plan_and_stop():
    out = _cli("finetune", "--config", "examples/configs/finetune/stage_63s.json", "--plan", "--gpus", "8")
    assert "8 GPU(s) = 1 data x 8 context" in out and ": fits" in out
    assert "fits on 16 GPUs: parallel.context=8, train.batch_size=1" in out
    assert "fits on 32 GPUs:" in out
    out = _cli("generate", "--plan", "--gpus", "2", "--context-parallel")
    assert "memory plan (generation, per rank): 2 GPU(s) = 1 data x 2 context" in out
