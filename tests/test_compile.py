"""A transformed model trains under ``torch.compile`` (Inductor) exactly as it does eagerly.

Training needs the op's fake kernels to describe the real strides (tests/kernels/test_ttt_mlp_strides.py);
here the whole transformed tiny CogVideoX is compiled and trained at two frame counts.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

import tttgraph  # noqa: E402
from tttgraph.models import build_tiny, example_inputs  # noqa: E402

CFG = tttgraph.TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16)


def _inputs(frames: int) -> dict:
    segments = -(-(frames - 1) // 2)  # ceil((F - O) / S) with S = 2, O = 1
    return example_inputs(build_tiny("cogvideox", seed=0), frames, text_tokens=4 * segments)


@pytest.mark.slow
def test_compiled_transformed_model_matches_eager_outputs_and_gradients_at_two_frame_counts():
    model = build_tiny("cogvideox", seed=0)
    tm = tttgraph.transform(copy.deepcopy(model), CFG, example_inputs=_inputs(5), progress=False).train()
    params = [p for p in tm.parameters() if p.requires_grad]
    torch._dynamo.reset()
    compiled = torch.compile(tm, dynamic=False)
    for frames in (5, 7):
        inputs = _inputs(frames)
        eager = tm(**inputs, return_dict=False)[0]
        eager_grads = torch.autograd.grad(eager.square().mean(), params)
        out = compiled(**inputs, return_dict=False)[0]
        grads = torch.autograd.grad(out.square().mean(), params)
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
        for g, e in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
        assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2  # real gradients, not zeros
