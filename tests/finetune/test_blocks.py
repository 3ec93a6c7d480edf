"""Outlining the transformer blocks of a transformed model: same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch

import tttgraph
from tttgraph.finetune.blocks import Block, block_modules, original_name, outline_blocks
from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS, transformer_inputs


@pytest.fixture(scope="module")
def transformed(bundle):
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 13, 4, 4, 6, generator=g), torch.randn(2, TINY_TEXT_TOKENS, 16, generator=g)
    inputs = transformer_inputs(bundle, latents, text, torch.tensor([500, 20]))
    cfg = tttgraph.TTTConfig(segment_latent_frames=12, segment_overlap_frames=1,
                             text_tokens_per_segment=TINY_TEXT_TOKENS, mini_batch_size=16, backend="reference")
    return tttgraph.transform(bundle.transformer, cfg, inputs, progress=False).train(), inputs


def _grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    out.square().mean().backward()
    return out.detach(), {original_name(n): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_outlined_model_matches_the_transformed_one(transformed, checkpointing):
    tm, inputs = transformed
    model = outline_blocks(tm, checkpointing=checkpointing, copy_modules=True)
    blocks = block_modules(model)
    assert len(blocks) == 2 and all(isinstance(b, Block) and b.checkpointing == checkpointing for b in blocks)
    # Every block's ops, its TTT layer included, now run inside its Block.
    assert not any(n.op == "call_module" and "gated_ttt" in str(n.target) for n in model.graph_module.graph.nodes)
    assert {original_name(n) for n, _ in model.named_parameters()} == {n for n, _ in tm.named_parameters()}
    ref_out, ref_grads = _grads(tm, inputs)
    out, grads = _grads(model, inputs)
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_shared_parameters_without_copy(transformed):
    tm, _ = transformed
    model = outline_blocks(tm)
    own = dict(tm.named_parameters())
    assert all(p is own[original_name(n)] for n, p in model.named_parameters())
    copied = outline_blocks(tm, copy_modules=True)
    ttt = [n for n, _ in copied.named_parameters() if ".gated_ttt." in n]
    assert ttt and all(copied.get_parameter(n) is not own[original_name(n)] for n in ttt)


def test_a_graph_without_blocks_is_refused(transformed):
    tm, _ = transformed
    with pytest.raises(tttgraph.TTTGraphError, match="no layers.<i> blocks"):
        outline_blocks(tm, container="layers")
