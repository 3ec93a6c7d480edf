"""examples/custom_dit.py: a DiT written from scratch, its adapter registered, transformed in place."""

from __future__ import annotations

import copy

import torch

import tttgraph
from examples.custom_dit import TinyDiTAdapter, TinyVideoDiT, main


def _inputs(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    segments = max(1, -(-(frames - 1) // 2))
    return {"latents": torch.randn(1, frames, 8, 8, 4, generator=g), "text": torch.randn(1, 4 * segments, 16,
                                                                                       generator=g)}


def test_the_example_runs_and_transforms_both_blocks():
    lines = []
    result = main(out=lines.append)
    assert result == {"ttt_modules": ["blocks.0.attn.gated_ttt", "blocks.1.attn.gated_ttt"], "shape": (1, 9, 8, 8, 4)}
    assert lines[0].startswith("tttgraph plan for TinyVideoDiT (adapter tiny-dit)")


def test_gates_at_zero_reproduce_it_and_segments_keep_the_first_segment_blind():
    tttgraph.register_adapter(TinyDiTAdapter.name, TinyDiTAdapter(), overwrite=True)
    torch.manual_seed(0)
    base = TinyVideoDiT().eval()
    zero = tttgraph.TTTConfig(gate_init=0.0, mini_batch_size=16)
    model = tttgraph.transform(copy.deepcopy(base), zero, _inputs(1), progress=False)
    with torch.no_grad():
        assert torch.equal(model(**_inputs(1)), base(**_inputs(1)))
    cfg = tttgraph.TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    seg = tttgraph.transform(copy.deepcopy(base), cfg, _inputs(5), progress=False)
    inputs = _inputs(7, seed=1)
    late = {**inputs, "latents": inputs["latents"].clone()}
    late["latents"][:, -2:] += 1.0  # frames 5-6: only the last window [4, 7) holds them
    with torch.no_grad():
        a, b = seg(**inputs), seg(**late)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.equal(a, b)  # 2 blocks: frame 4 relays to 2, not 0
