"""tttgraph.native.transform_in_place (issue #19 prototype): the user's CogVideoX model, edited in place.

The graph form (``tttgraph.transform`` of a copy, with the same TTT weights) is the oracle.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

pytest.importorskip("diffusers")

from tttgraph.config import TTTConfig  # noqa: E402
from tttgraph.layers import GatedBidirectionalTTT  # noqa: E402
from tttgraph.models import build_tiny, example_inputs  # noqa: E402
from tttgraph.native import (  # noqa: E402
    CogVideoXSegmentTTTProcessor,
    load_ttt_state_dict,
    transform_in_place,
    ttt_state_dict,
)
from tttgraph.rewrite import transform  # noqa: E402

CHUNK = 4  # text tokens per segment
CFG = TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16)


def _segments(frames: int) -> int:
    return max(1, -(-(frames - 1) // 2))  # ceil((F - O) / S), S = 2, O = 1


def _inputs(frames: int, seed: int = 0, chunks: int | None = None) -> dict:
    """Forward kwargs with one text chunk per segment (or ``chunks`` chunks)."""
    return example_inputs(build_tiny("cogvideox"), frames, text_tokens=CHUNK * (chunks or _segments(frames)), seed=seed)


def _out(model, inputs):
    return model(**inputs, return_dict=False)[0]


@pytest.fixture(scope="module")
def pair():
    """(base copy, in-place transformed model) built once; tests must not modify them."""
    base = build_tiny("cogvideox")
    model = transform_in_place(copy.deepcopy(base), CFG, _inputs(5))
    return base, model


def _graph_oracle(base, model, cfg=CFG):
    """tttgraph.transform of a copy of the base, with the in-place model's TTT weights loaded."""
    tm = transform(copy.deepcopy(base), cfg, _inputs(5), progress=False)
    tm.load_state_dict(model.state_dict(), strict=True)
    return tm


def test_returns_the_same_object_with_ttt_submodules_and_pretrained_tensors_untouched():
    model = build_tiny("cogvideox")
    before = {n: p for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in before.items()}
    got = transform_in_place(model, CFG, _inputs(5))
    assert got is model and type(got).__name__ == "CogVideoXTransformer3DModel"
    attns = [b.attn1 for b in model.transformer_blocks]
    assert all(isinstance(a.gated_ttt, GatedBidirectionalTTT) for a in attns)
    assert all(isinstance(a.processor, CogVideoXSegmentTTTProcessor) for a in attns)
    after = dict(model.named_parameters())
    for n, p in before.items():
        assert after[n] is p and torch.equal(p, values[n]), n
    new = set(after) - set(before)
    assert new == set(ttt_state_dict(model)) and all(".attn1.gated_ttt." in n for n in new)
    assert len(new) == 22 * 2  # the tensors of a bidirectional layer with text gates, 2 blocks


def test_outputs_equal_the_graph_form_at_two_frame_counts(pair):
    base, model = pair
    tm = _graph_oracle(base, model)
    with torch.no_grad():
        for frames in (5, 7):
            inputs = _inputs(frames, seed=frames)
            got, expected = _out(model, inputs), _out(tm, inputs)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
            assert (got - _out(base, inputs)).abs().max() > 1e-3  # the TTT and the segments really act


def test_gates_at_zero_without_segments_give_the_original_model_exactly():
    base = build_tiny("cogvideox")
    inputs = _inputs(5, chunks=1)
    model = transform_in_place(copy.deepcopy(base), TTTConfig(gate_init=0.0, mini_batch_size=16), inputs)
    with torch.no_grad():
        assert torch.equal(_out(model, inputs), _out(base, inputs))


def test_a_single_text_chunk_is_repeated_per_segment_and_its_outputs_averaged(pair):
    _, model = pair
    attn = model.transformer_blocks[0].attn1
    inputs = _inputs(5, chunks=1)
    gen = torch.Generator().manual_seed(0)
    video, text = torch.randn(1, 5 * 16, 32, generator=gen), torch.randn(1, CHUNK, 32, generator=gen)
    rope = inputs["image_rotary_emb"]
    with torch.no_grad():
        v1, t1 = attn(hidden_states=video, encoder_hidden_states=text, image_rotary_emb=rope)
        # 5 frames are 2 segments: the same text given explicitly as 2 equal chunks
        v2, t2 = attn(hidden_states=video, encoder_hidden_states=text.repeat(1, 2, 1), image_rotary_emb=rope)
    assert t1.shape == text.shape and t2.shape == (1, 2 * CHUNK, 32)
    torch.testing.assert_close(v1, v2, rtol=0, atol=1e-6)
    torch.testing.assert_close(t1, t2.unflatten(1, (2, CHUNK)).mean(1), rtol=0, atol=1e-6)
    assert (t2[:, :CHUNK] - t2[:, CHUNK:]).abs().max() > 1e-4  # the chunks did see different segments
    with torch.no_grad():
        out = _out(model, inputs)  # the whole model runs with one chunk
    assert out.shape == inputs["hidden_states"].shape and torch.isfinite(out).all()


def test_bfloat16_after_transform_runs_and_stays_close_to_float32(pair):
    _, model = pair
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    inputs = _inputs(5)
    low_inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
                  for k, v in inputs.items()}
    with torch.no_grad():
        got, ref = _out(low, low_inputs), _out(model, inputs)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert (got.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_deepcopy_and_pickle_round_trip(pair):
    _, model = pair
    inputs = _inputs(5)
    with torch.no_grad():
        ref = _out(model, inputs)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert isinstance(clone.transformer_blocks[0].attn1.processor, CogVideoXSegmentTTTProcessor)
            assert torch.equal(_out(clone, inputs), ref)


def test_peft_lora_trains_only_lora_and_disabling_adapters_restores_the_output(pair):
    peft = pytest.importorskip("peft")
    _, model = pair
    model = copy.deepcopy(model)
    inputs = _inputs(5)
    with torch.no_grad():
        ref = _out(model, inputs)
    lora = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                           init_lora_weights=False)  # random B: the adapter changes the output
    model.add_adapter(lora)  # diffusers' PeftAdapterMixin: peft.inject_adapter_in_model + adapter bookkeeping
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len([n for n in trainable if ".attn1." in n]) == 2 * 4 * 2  # 2 blocks x 4 targets x (A, B)
    out = _out(model.train(), inputs)
    out.square().mean().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    assert not torch.allclose(out.detach(), ref, atol=1e-4)
    model.eval().disable_adapters()
    with torch.no_grad():
        assert torch.equal(_out(model, inputs), ref)
    model.enable_adapters()
    with torch.no_grad():
        torch.testing.assert_close(_out(model, inputs), out.detach(), rtol=0, atol=1e-6)


def test_save_pretrained_then_from_pretrained_and_transform_again_gives_identical_outputs(pair, tmp_path):
    from diffusers import CogVideoXTransformer3DModel
    from safetensors.torch import load_file

    _, model = pair
    model.save_pretrained(tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and any(".gated_ttt." in k for k in load_file(files[0]))
    fresh, info = CogVideoXTransformer3DModel.from_pretrained(tmp_path, output_loading_info=True)
    # from_pretrained builds the stock class and drops the TTT tensors (reported as unexpected keys).
    assert set(info["unexpected_keys"]) == set(ttt_state_dict(model)) and not info["missing_keys"]
    assert not any("gated_ttt" in n for n, _ in fresh.named_modules())
    fresh._tttgraph_family = "cogvideox"
    transform_in_place(fresh.eval(), CFG, _inputs(5))
    load_ttt_state_dict(fresh, load_file(files[0]))
    inputs = _inputs(7, seed=7)
    with torch.no_grad():
        assert torch.equal(_out(fresh, inputs), _out(model, inputs))


def _block_inputs(frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rope = _inputs(frames)["image_rotary_emb"]
    video = torch.randn(1, frames * 16, 32, generator=gen, requires_grad=True)
    text = torch.randn(1, CHUNK * _segments(frames), 32, generator=gen, requires_grad=True)
    return video, text, torch.randn(1, 16, generator=gen), rope


def test_torch_compile_of_one_block_fullgraph_matches_eager_forward_and_backward(pair):
    _, model = pair
    block = copy.deepcopy(model.transformer_blocks[0]).train()
    params = [p for p in block.parameters() if p.requires_grad]
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    video, text, temb, rope = _block_inputs(5)
    eager = block(video, text, temb, image_rotary_emb=rope)
    eager_grads = torch.autograd.grad(sum(o.square().mean() for o in eager), [video, text, *params])
    got = compiled(video, text, temb, image_rotary_emb=rope)
    grads = torch.autograd.grad(sum(o.square().mean() for o in got), [video, text, *params])
    for g, e in zip(got, eager, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


@pytest.mark.parametrize("guidance", [6.0, 1.0], ids=["cfg", "no-cfg"])
def test_cogvideox_pipeline_runs_with_the_in_place_transformer(guidance):
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    from tttgraph.models.cogvideox_bundle import tiny_bundle

    b = tiny_bundle()
    latent_frames = 5  # num_frames 17 -> 5 latent frames -> 2 segments
    transformer = b.transformer
    example = example_inputs(transformer, latent_frames, height=4, width=6, text_tokens=2 * CHUNK)
    transformer = transform_in_place(transformer, CFG, example)
    pipe = CogVideoXPipeline(tokenizer=b.tokenizer, text_encoder=b.text_encoder, vae=b.vae, transformer=transformer,
                             scheduler=CogVideoXDPMScheduler.from_config(b.scheduler_config))
    assert pipe.transformer is transformer
    calls = []
    for module in transformer.modules():
        if isinstance(module, GatedBidirectionalTTT):
            module.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape))
    latents = pipe(prompt="a red ball rolls", num_frames=17, height=32, width=48, num_inference_steps=2,
                   guidance_scale=guidance, max_sequence_length=CHUNK, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).frames
    assert latents.shape == (1, latent_frames, 4, 4, 6) and torch.isfinite(latents).all()
    batch = 2 if guidance > 1 else 1
    # The pipeline passes one chunk; each TTT reads it once per segment: 2 chunks + 5 frames x 6 tokens.
    assert calls == [torch.Size([batch, 2 * CHUNK + latent_frames * 6, 32])] * (2 * 2)
