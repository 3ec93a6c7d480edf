"""Blocks of a transformed model: checkpointing keeps gradients, FSDP finds the blocks."""

from __future__ import annotations

import copy

import pytest
import torch

import tttgraph
from tttgraph.errors import TTTGraphError
from tttgraph.finetune.blocks import block_modules, enable_checkpointing
from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS, transformer_inputs


@pytest.fixture(scope="module")
def transformed(bundle):
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 13, 4, 4, 6, generator=g), torch.randn(2, TINY_TEXT_TOKENS, 16, generator=g)
    inputs = transformer_inputs(bundle, latents, text, torch.tensor([500, 20]))
    cfg = tttgraph.TTTConfig(segment_latent_frames=12, segment_overlap_frames=1,
                             text_tokens_per_segment=TINY_TEXT_TOKENS, mini_batch_size=16, backend="reference")
    model = copy.deepcopy(bundle.transformer)  # the bundle is shared by the package's tests
    return tttgraph.transform(model, cfg, inputs, progress=False).train(), inputs


def _grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointed_blocks_give_the_same_outputs_and_gradients(transformed):
    tm, inputs = transformed
    out, grads = _grads(copy.deepcopy(tm), inputs)
    model = copy.deepcopy(tm)
    enable_checkpointing(model)
    assert model.gradient_checkpointing
    got, got_grads = _grads(model, inputs)
    torch.testing.assert_close(got, out, rtol=0, atol=1e-6)
    assert got_grads.keys() == grads.keys() and any(".gated_ttt." in n for n in grads)
    for n, g in grads.items():
        torch.testing.assert_close(got_grads[n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_block_modules_are_the_models_own_blocks(transformed):
    tm, _ = transformed
    blocks = block_modules(tm)
    assert blocks == list(tm.transformer_blocks)
    assert all(hasattr(b.attn1, "gated_ttt") for b in blocks)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(TTTGraphError, match="no block list"):
        block_modules(torch.nn.Linear(2, 2))
    with pytest.raises(TTTGraphError, match="does not support gradient checkpointing"):
        enable_checkpointing(torch.nn.Linear(2, 2))
