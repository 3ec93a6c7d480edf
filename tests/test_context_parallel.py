"""Context parallelism over segments (issue #25): 2 and 4 CPU processes over gloo equal one process.

A tiny CogVideoX (4 heads of 16, two blocks) is transformed with 2-frame segments + 1 overlap frame
and a TTT mini-batch of 16 tokens: a segment is 8 text + 2 x 16 video tokens, so mini-batches
straddle segment and rank boundaries and the inner TTT state crosses ranks in both directions.
Each rank holds whole segments; the reference is the same model, seeded the same way, in the test
process. Compared: the output, the loss and every parameter gradient of a training step (summed
over the context group), with and without activation checkpointing, a unidirectional model, and
the latents of a short CFG denoising loop (generation).
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tttgraph
from tttgraph.layout import SequenceLayout
from tttgraph.parallel import ContextError, ContextGroup, all_reduce_gradients, plan_shard, shard_context
from tttgraph.parallel.context import unshard_context

TINY = dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            max_text_seq_length=8, use_rotary_positional_embeddings=True)
TEXT = 8  # tokens per segment


def _model(bidirectional: bool = True, frames: int = 9):
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.models.tiny import _cogvideox_inputs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = CogVideoXTransformer3DModel(**TINY).eval()
        base._tttgraph_family = "cogvideox"
        segments = SequenceLayout(TEXT, 16, 2, 1).num_segments(frames)
        inputs = _cogvideox_inputs(base, frames, 8, 8, TEXT * segments, 2, torch.Generator().manual_seed(1))
        cfg = tttgraph.TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16,
                                 text_tokens_per_segment=TEXT, bidirectional=bidirectional, gate_init=0.5,
                                 backend="reference")
        model = tttgraph.transform(base, cfg, inputs, progress=False, verify=False)
    return model, inputs


def _step(model, inputs, checkpointing: bool = False):
    """One training step's output, loss and gradients (by parameter name)."""
    model.train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    loss = (out - 0.1).square().mean()
    loss.backward()
    return out.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _denoise(model, inputs):
    """Latents of a 2-step CFG denoising loop (batch 2 = uncond | cond) with the model as predictor."""
    from tttgraph.generate.sampler import SamplerSettings, denoise
    from tttgraph.models.cogvideox_bundle import SCHEDULER_CONFIG

    model.eval()

    def predict(x, t):
        return model(**{**inputs, "hidden_states": x.to(inputs["hidden_states"].dtype), "timestep": t},
                     return_dict=False)[0]

    with torch.no_grad():
        return denoise(predict, (1, *inputs["hidden_states"].shape[1:]), SamplerSettings(2, 6.0, 0, 0),
                       SCHEDULER_CONFIG, progress=False)


def _cases(world: int):
    """{name: (model, run)} of every check, computed the same way in one process and in ``world``."""
    model, inputs = _model()
    cases = {
        "train": (model, lambda: _step(model, inputs)),
        "checkpointed": (model, lambda: _step(model, inputs, checkpointing=True)),
        "generate": (model, lambda: _denoise(model, inputs)),
    }
    if world == 2:
        one_way, inputs1 = _model(bidirectional=False, frames=8)  # 4 segments, a short last one
        cases["unidirectional"] = (one_way, lambda: _step(one_way, inputs1))
    return cases


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cp = ContextGroup.of()
        cases = _cases(world)
        for model in {id(m): m for m, _ in cases.values()}.values():
            shard_context(model, cp)
        results = {}
        for name, (model, run) in cases.items():
            result = results[name] = run()
            if isinstance(result, tuple):  # each rank holds its tokens' share of every gradient
                all_reduce_gradients(model.parameters(), cp.group)
        if rank == 0:
            torch.save(results, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare(name, got, want):
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
        return
    out, loss, grads = got
    ref_out, ref_loss, ref_grads = want
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5, msg=f"{name}: output")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7, msg=f"{name}: loss")
    assert grads.keys() == ref_grads.keys(), name
    for key in ref_grads:
        torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-6, msg=f"{name}: grad {key}")


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_equals_one_process(world):
    torch.set_num_threads(1)
    reference = {}
    for name, (_, run) in _cases(world).items():
        result = run()
        reference[name] = result if not isinstance(result, tuple) else (result[0], result[1], dict(result[2]))
    assert any(".gated_ttt.ttt.w1" in k for k in reference["train"][2])  # the inner TTT weights get gradients
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.spawn(_worker, args=(world, _free_port(), out), nprocs=world, join=True)
        results = torch.load(out, weights_only=True)
    assert results.keys() == reference.keys()
    for name in reference:
        _compare(name, results[name], reference[name])


def test_shard_geometry_and_errors():
    layout = SequenceLayout(226, 1350, 12, 1)
    shard = plan_shard(layout, 253, 7)  # 63 s: 21 segments, 3 per rank
    assert shard.frame_ranges[0] == (0, 36) and shard.frame_ranges[-1] == (216, 253)
    assert shard.counts[0] == 3 * 226 + 36 * 1350 and shard.counts[-1] == 3 * 226 + 37 * 1350
    assert sum(shard.counts) == layout.total_tokens(253) == 346_296
    assert shard.halo == 1350
    shard = plan_shard(layout, 253, 8)  # 21 segments over 8: 3, 3, 3, 3, 3, 2, 2, 2
    assert [b - a for a, b in shard.segment_ranges] == [3] * 5 + [2] * 3
    assert shard.frame_ranges[5] == (180, 204) and shard.frame_ranges[-1] == (228, 253)
    assert sum(shard.counts) == 346_296 and max(shard.counts) == 3 * 226 + 36 * 1350
    with pytest.raises(ContextError, match=r"3 segment\(s\) .* context group of 4 .* at most 3"):
        plan_shard(layout, 37, 4)
    with pytest.raises(ContextError, match="overlap"):
        plan_shard(SequenceLayout(8, 16, 2, 3), 11, 1)
    with pytest.raises(ContextError, match="segment_latent_frames"):
        plan_shard(SequenceLayout(8, 16, None, 0), 5, 1)


def test_shard_context_refuses_untransformed_model_and_restores():
    from diffusers import CogVideoXTransformer3DModel

    with pytest.raises(ContextError, match="not a transformed model"):
        shard_context(CogVideoXTransformer3DModel(**TINY), ContextGroup(None, 0, 1))
    model, inputs = _model()
    with torch.no_grad():
        before = model(**inputs, return_dict=False)[0]
    sharding = shard_context(model, ContextGroup(None, 0, 1))
    assert (sharding.attentions, sharding.ttt_layers) == (2, 2)
    with pytest.raises(ContextError, match="already context-parallel"):
        shard_context(model, ContextGroup(None, 0, 1))
    unshard_context(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs, return_dict=False)[0], before)


def test_finetune_with_context_parallel_and_fsdp2_gives_the_losses_of_one_process(tmp_path):
    """``tttgraph finetune`` under torchrun: 2 processes, FSDP2 on the data x context mesh, checkpointing on."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tttgraph.finetune.stages import StageConfig
    from tttgraph.finetune.trainer import read_metrics, run_stage

    base = {"name": "cp-6s", "clip_seconds": 6, "data": {"synthetic_samples": 1, "synthetic_seconds": 6},
            "train": {"steps": 2, "batch_size": 1, "warmup_steps": 1}, "checkpoint": {"every": 0}}
    run_stage(StageConfig.from_dict(base), tmp_path / "one", progress=False, log=lambda *a: None)
    two = {**base, "data": {"precomputed": str(tmp_path / "one" / "data" / "clips_6s")},
           "parallel": {"fsdp": "on", "context": 2}}
    (tmp_path / "two.json").write_text(json.dumps(two))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tttgraph",
           "finetune", "--config", str(tmp_path / "two.json"), "--out", str(tmp_path / "two"), "--no-progress",
           "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FSDP2, context parallel over 2" in done.stdout and "memory plan (training, per rank)" in done.stdout
    one_losses, two_losses = ([r["loss"] for r in read_metrics(tmp_path / n)] for n in ("one", "two"))
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-5, atol=1e-6)
    one, two = (load_file(str(tmp_path / n / "ttt" / "tttgraph_weights.safetensors")) for n in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
