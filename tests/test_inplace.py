"""tttgraph.transform edits the user's own model in place (tiny CogVideoX, CPU).

Each test is one thing a diffusers or PEFT user does with the transformed model. The graph form
(``tttgraph.transform_graph`` of a copy, with the same TTT weights) is the oracle where numbers are
compared.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

pytest.importorskip("diffusers")

import tttgraph  # noqa: E402
from tttgraph.config import TTTConfig  # noqa: E402
from tttgraph.errors import TTTGraphError  # noqa: E402
from tttgraph.layers import GatedBidirectionalTTT  # noqa: E402
from tttgraph.models import build_tiny, example_inputs  # noqa: E402
from tttgraph.rewrite import plan_of, transform, transform_graph  # noqa: E402

CHUNK = 4  # text tokens per segment
CFG = TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16)


def _segments(frames: int) -> int:
    return max(1, -(-(frames - 1) // 2))  # ceil((F - O) / S), S = 2, O = 1


def _inputs(frames: int, seed: int = 0, chunks: int | None = None, text: int = CHUNK, **kw) -> dict:
    """Forward kwargs with one text chunk of ``text`` tokens per segment (or ``chunks`` chunks)."""
    return example_inputs(build_tiny("cogvideox"), frames, text_tokens=text * (chunks or _segments(frames)),
                          seed=seed, **kw)


def _out(model, inputs):
    return model(**inputs, return_dict=False)[0]


def _ttt_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".gated_ttt." in k}


@pytest.fixture(scope="module")
def pair():
    """(base copy, transformed model) built once; tests must not modify them."""
    base = build_tiny("cogvideox")
    model = transform(copy.deepcopy(base), CFG, _inputs(5), progress=False)
    return base, model


def _graph_oracle(base, model, cfg=CFG, example=None):
    """The graph form of a copy of the base, with ``model``'s TTT weights loaded."""
    tm = transform_graph(copy.deepcopy(base), cfg, example or _inputs(5), progress=False)
    tm.load_state_dict(model.state_dict(), strict=True)
    return tm


def test_returns_the_same_object_with_ttt_submodules_and_pretrained_modules_untouched():
    model = build_tiny("cogvideox")
    before = dict(model.named_parameters())
    values = {n: p.detach().clone() for n, p in before.items()}
    modules = {n: m for n, m in model.named_modules()}
    processors = {n: type(p) for n, p in model.attn_processors.items()}
    got = transform(model, CFG, _inputs(5), progress=False)
    assert got is model and type(got).__name__ == "CogVideoXTransformer3DModel"
    assert all(isinstance(b.attn1.gated_ttt, GatedBidirectionalTTT) for b in model.transformer_blocks)
    after = dict(model.named_parameters())
    for n, p in before.items():
        assert after[n] is p and torch.equal(p, values[n]), n
    for n, m in modules.items():  # same module objects at the same names (to_q is still an nn.Linear)
        assert model.get_submodule(n) is m
    assert type(model.transformer_blocks[0].attn1.to_q) is torch.nn.Linear
    # diffusers' own processors stay: segment attention is installed around them, not instead of them
    assert {n: type(p) for n, p in model.attn_processors.items()} == processors
    new = set(after) - set(before)
    assert new == set(_ttt_state(model)) and all(".attn1.gated_ttt." in n for n in new)
    assert len(plan_of(model).ttt_modules) == 2
    assert model.config["_tttgraph"]["ttt_modules"] == plan_of(model).ttt_modules


def test_outputs_equal_the_graph_form_and_the_ttt_and_segments_act(pair):
    base, model = pair
    tm = _graph_oracle(base, model)
    with torch.no_grad():
        for frames in (5, 7):
            inputs = _inputs(frames, seed=frames)
            got, expected = _out(model, inputs), _out(tm, inputs)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
            assert (got - _out(base, inputs)).abs().max() > 1e-3


def test_three_frame_counts_with_matching_text_lengths_in_one_object(pair):
    _, model = pair
    with torch.no_grad():
        for frames in (3, 5, 9):
            inputs = _inputs(frames, seed=frames)
            assert inputs["encoder_hidden_states"].shape[1] == CHUNK * _segments(frames)
            out = _out(model, inputs)
            assert out.shape == inputs["hidden_states"].shape and torch.isfinite(out).all()


def test_gates_at_zero_without_segments_give_the_original_model_exactly():
    base = build_tiny("cogvideox")
    inputs = _inputs(5, chunks=1)
    model = transform(copy.deepcopy(base), TTTConfig(gate_init=0.0, mini_batch_size=16), inputs, progress=False)
    with torch.no_grad():
        for frames in (5, 3):
            other = _inputs(frames, seed=frames, chunks=1)
            assert torch.equal(_out(model, other), _out(base, other))


def test_a_single_text_chunk_is_repeated_per_segment_and_its_outputs_averaged(pair):
    _, model = pair
    attn = model.transformer_blocks[0].attn1
    gen = torch.Generator().manual_seed(0)
    video, text = torch.randn(1, 5 * 16, 32, generator=gen), torch.randn(1, CHUNK, 32, generator=gen)
    rope = _inputs(5)["image_rotary_emb"]
    with torch.no_grad():
        v1, t1 = attn(hidden_states=video, encoder_hidden_states=text, image_rotary_emb=rope)
        # 5 frames are 2 segments: the same text given explicitly as 2 equal chunks
        v2, t2 = attn(hidden_states=video, encoder_hidden_states=text.repeat(1, 2, 1), image_rotary_emb=rope)
    assert t1.shape == text.shape and t2.shape == (1, 2 * CHUNK, 32)
    torch.testing.assert_close(v1, v2, rtol=0, atol=1e-6)
    torch.testing.assert_close(t1, t2.unflatten(1, (2, CHUNK)).mean(1), rtol=0, atol=1e-6)
    assert (t2[:, :CHUNK] - t2[:, CHUNK:]).abs().max() > 1e-4  # the chunks did see different segments


def test_another_resolution_equals_a_model_transformed_at_that_resolution(pair):
    base, model = pair
    wide = dict(height=8, width=12)
    other = transform(copy.deepcopy(base), CFG, _inputs(5, **wide), progress=False, verify=False)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for frames in (5, 7):
            inputs = _inputs(frames, seed=1, **wide)
            torch.testing.assert_close(_out(model, inputs), _out(other, inputs), rtol=0, atol=1e-6)
        out = _out(model, _inputs(5))  # and back to the transform's resolution
    torch.testing.assert_close(out, _out(other, _inputs(5)), rtol=0, atol=1e-6)


def test_a_prompt_of_another_length_serves_every_segment_as_one_chunk(pair):
    base, model = pair
    long_text = 6  # not the transform's 4 tokens per segment: taken as one chunk for all segments
    other = transform(copy.deepcopy(base), CFG, _inputs(5, text=long_text), progress=False, verify=False)
    other.load_state_dict(model.state_dict())
    inputs = _inputs(5, chunks=1, text=long_text)
    with torch.no_grad():
        torch.testing.assert_close(_out(model, inputs), _out(other, inputs), rtol=0, atol=1e-6)


def test_batch_size_dtype_and_mode_follow_the_call(pair):
    _, model = pair
    two = _inputs(5, batch_size=2)
    with torch.no_grad():
        out = _out(model, two)
        single = _out(model, {k: v[:1] if torch.is_tensor(v) and v.dim() and k != "image_rotary_emb" else v
                              for k, v in two.items()})
    torch.testing.assert_close(out[:1], single, rtol=0, atol=1e-5)
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    low_inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
                  for k, v in _inputs(5).items()}
    with torch.no_grad():
        got, ref = _out(low, low_inputs), _out(model, _inputs(5))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert (got.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_dropout_follows_train_and_eval():
    base = build_tiny("cogvideox")
    base.register_to_config(dropout=0.5)
    for block in base.transformer_blocks:
        block.attn1.to_out[1].p = 0.5
    model = transform(base, CFG, _inputs(5), progress=False)
    inputs = _inputs(5)
    with torch.no_grad():
        model.eval()
        assert torch.equal(_out(model, inputs), _out(model, inputs))
        model.train()
        assert not torch.equal(_out(model, inputs), _out(model, inputs))
        model.eval()
        assert torch.equal(_out(model, inputs), _out(model, inputs))


def test_deepcopy_and_pickle_round_trip(pair):
    _, model = pair
    inputs = _inputs(7, seed=7)
    with torch.no_grad():
        ref = _out(model, inputs)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(
                _saved(model), weights_only=False)):
            assert clone is not model and plan_of(clone).ttt_modules == plan_of(model).ttt_modules
            attn = clone.transformer_blocks[0].attn1
            assert attn.forward.module is attn  # the edit points at its own copy, not the original
            assert torch.equal(_out(clone, inputs), ref)


def _saved(model):
    import io

    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return buf


def test_transforming_twice_is_refused(pair):
    _, model = pair
    with pytest.raises(TTTGraphError, match="already transformed"):
        transform(model, CFG, _inputs(5), progress=False)


# ----------------------------------------------------------------------------------------------- PEFT


def _lora(targets, **kw):
    peft = pytest.importorskip("peft")
    return peft.LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False, **kw)


def test_peft_lora_on_the_attention_after_transforming(pair):
    from peft import get_peft_model_state_dict

    _, model = pair
    model = copy.deepcopy(model)
    inputs = _inputs(5)
    with torch.no_grad():
        ref = _out(model, inputs)
    model.add_adapter(_lora(["to_q", "to_k", "to_v", "to_out.0"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len([n for n in trainable if ".attn1." in n]) == 2 * 4 * 2  # 2 blocks x 4 targets x (A, B)
    out = _out(model.train(), inputs)
    out.square().mean().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    assert not torch.allclose(out.detach(), ref, atol=1e-4)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_out(model, inputs), out.detach(), rtol=0, atol=1e-6)
        zero = model(**inputs, attention_kwargs={"scale": 0.0}, return_dict=False)[0]
        torch.testing.assert_close(zero, ref, rtol=0, atol=1e-6)  # LoRA scale 0: the adapter is off
        model.disable_adapters()
        assert torch.equal(_out(model, inputs), ref)
        model.enable_adapters()
        torch.testing.assert_close(_out(model, inputs), out.detach(), rtol=0, atol=1e-6)
    saved = get_peft_model_state_dict(model)
    assert len(saved) == 2 * 4 * 2 and all("lora" in k for k in saved)


def test_peft_lora_on_the_ttt_projections(pair):
    _, model = pair
    model = copy.deepcopy(model)
    model.add_adapter(_lora(["gated_ttt.ttt.wq", "gated_ttt.ttt.wk", "gated_ttt.ttt.wv", "gated_ttt.ttt.wo"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 4 * 2 and all(".gated_ttt.ttt." in n and "lora_" in n for n in trainable)
    out = _out(model.train(), _inputs(5))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)


def test_lora_added_before_transforming_stays_a_lora(pair):
    from peft import get_peft_model_state_dict

    base, _ = pair
    model = copy.deepcopy(base)
    model.add_adapter(_lora(["to_q", "to_v"]))
    inputs = _inputs(5)
    model = transform(model, TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=2,
                                       segment_overlap_frames=1), inputs, progress=False)
    with torch.no_grad():
        with_lora = _out(model, inputs)
        model.disable_adapters()
        without = _out(model, inputs)
        model.enable_adapters()
    assert (with_lora - without).abs().max() > 1e-4
    assert len(get_peft_model_state_dict(model)) == 2 * 2 * 2
    model.fuse_lora() if hasattr(model, "fuse_lora") else None
    with torch.no_grad():
        torch.testing.assert_close(_out(model, inputs), with_lora, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- saving, loading


def test_save_pretrained_then_from_pretrained_gives_identical_outputs(pair, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    _, model = pair
    model.save_pretrained(tmp_path)
    loaded = tttgraph.from_pretrained(tmp_path)
    assert type(loaded) is CogVideoXTransformer3DModel and plan_of(loaded).ttt_modules == plan_of(model).ttt_modules
    inputs = _inputs(7, seed=7)  # another frame count than the transform's
    with torch.no_grad():
        assert torch.equal(_out(loaded, inputs), _out(model, inputs))
    stock = CogVideoXTransformer3DModel.from_pretrained(tmp_path)  # the original architecture, TTT tensors ignored
    assert not any("gated_ttt" in n for n, _ in stock.named_modules())
    reapplied = tttgraph.pretrained.reapply(stock, tmp_path)
    with torch.no_grad():
        assert torch.equal(_out(reapplied, inputs), _out(model, inputs))


def test_from_pretrained_of_a_stock_model_says_what_to_do(tmp_path):
    build_tiny("cogvideox").save_pretrained(tmp_path)
    with pytest.raises(tttgraph.pretrained.PretrainedError, match="was not saved from a model transformed"):
        tttgraph.from_pretrained(tmp_path)


def test_tttgraph_save_and_restore_of_the_in_place_model(pair, tmp_path):
    base, model = pair
    tttgraph.save(model, tmp_path)
    restored = tttgraph.restore(copy.deepcopy(base), tmp_path, progress=False)
    inputs = _inputs(7, seed=3)
    with torch.no_grad():
        assert torch.equal(_out(restored, inputs), _out(model, inputs))


# --------------------------------------------------------------------------- checkpointing and compile


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_gradient_checkpointing_gives_the_same_gradients_and_saves_less(pair):
    _, model = pair
    inputs = _inputs(5)
    grads, saved = [], []
    for checkpointing in (False, True):
        m = copy.deepcopy(model).train()
        if checkpointing:
            m.enable_gradient_checkpointing()
        saved.append(_saved_bytes(lambda m=m: _out(m, inputs).square().mean().backward()))
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(".gated_ttt." in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)
    assert saved[1] < 0.7 * saved[0]


def test_gradient_checkpointing_enabled_before_transforming_stays_on(pair):
    base, model = pair
    early = copy.deepcopy(base)
    early.enable_gradient_checkpointing()
    early = transform(early, CFG, _inputs(5), progress=False, verify=False)
    early.load_state_dict(model.state_dict())
    assert early.gradient_checkpointing
    inputs = _inputs(5)
    grads = []
    for m in (copy.deepcopy(model).train(), early.train()):
        _out(m, inputs).square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def _block_inputs(frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rope = _inputs(frames)["image_rotary_emb"]
    video = torch.randn(1, frames * 16, 32, generator=gen, requires_grad=True)
    text = torch.randn(1, CHUNK * _segments(frames), 32, generator=gen, requires_grad=True)
    return video, text, torch.randn(1, 16, generator=gen), rope


def test_torch_compile_of_each_block_fullgraph_at_two_frame_counts(pair):
    _, model = pair
    model = copy.deepcopy(model).train()
    torch._dynamo.reset()
    for block in model.transformer_blocks:
        params = [p for p in block.parameters() if p.requires_grad]
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        for frames in (5, 7):
            video, text, temb, rope = _block_inputs(frames, seed=frames)
            eager = block(video, text, temb, image_rotary_emb=rope)
            eager_grads = torch.autograd.grad(sum(o.square().mean() for o in eager), [video, text, *params])
            got = compiled(video, text, temb, image_rotary_emb=rope)
            grads = torch.autograd.grad(sum(o.square().mean() for o in got), [video, text, *params])
            for g, e in zip(got, eager, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
            for g, e in zip(grads, eager_grads, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
            assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


def test_the_users_processor_choices_keep_segments_and_ttt(pair):
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    _, model = pair
    model = copy.deepcopy(model)
    inputs = _inputs(5)
    with torch.no_grad():
        ref = _out(model, inputs)
        model.set_attn_processor(CogVideoXAttnProcessor2_0())  # a fresh processor object: edits stay
        torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=1e-6)
        model.fuse_qkv_projections()  # diffusers swaps in fused projections and processors
        torch.testing.assert_close(_out(model, inputs), ref, rtol=1e-5, atol=1e-5)
        model.unfuse_qkv_projections()
        torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("example_frames", [1, 2], ids=["example-not-sample", "example-at-sample"])
def test_cogvideox_1_0_with_its_sincos_table_runs_beyond_sample_frames(example_frames):
    base = build_tiny("cogvideox")
    cfg = {**base.config, "use_rotary_positional_embeddings": False, "sample_frames": 5}  # 2 latent frames
    from diffusers import CogVideoXTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = CogVideoXTransformer3DModel.from_config(cfg).eval()
    base._tttgraph_family = "cogvideox"
    sample = example_frames  # 2 = the table's own frame count; at 1 diffusers rebuilds the table in forward
    # The table has rows for exactly max_text_seq_length text tokens: one prompt, repeated per segment.
    text = cfg["max_text_seq_length"]
    example = {k: v for k, v in _inputs(sample, chunks=1, text=text).items() if k != "image_rotary_emb"}
    model = transform(base, TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16),
                      example, progress=False)
    long = {k: v for k, v in _inputs(7, seed=2, chunks=1, text=text).items() if k != "image_rotary_emb"}  # 7 > 2
    with torch.no_grad():
        out = _out(model, long)
    assert out.shape == long["hidden_states"].shape and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------- pipelines


def _pipeline(transformer_cfg=CFG):
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    from tttgraph.models.cogvideox_bundle import tiny_bundle

    b = tiny_bundle()
    pipe = CogVideoXPipeline(tokenizer=b.tokenizer, text_encoder=b.text_encoder, vae=b.vae, transformer=b.transformer,
                             scheduler=CogVideoXDPMScheduler.from_config(b.scheduler_config))
    example = example_inputs(pipe.transformer, 5, height=4, width=6, text_tokens=2 * CHUNK)
    pipe.transformer = tttgraph.transform(pipe.transformer, transformer_cfg, example, progress=False)  # as a user does
    return pipe


def _ttt_calls(model) -> list:
    calls = []
    for module in model.modules():
        if isinstance(module, GatedBidirectionalTTT):
            module.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    return calls


@pytest.mark.parametrize("guidance", [6.0, 1.0], ids=["cfg", "no-cfg"])
def test_pipeline_with_one_prompt_makes_a_long_video_without_a_storyboard(guidance):
    pipe = _pipeline()
    calls = _ttt_calls(pipe.transformer)
    latents = pipe(prompt="a red ball rolls", num_frames=17, height=32, width=48, num_inference_steps=2,
                   guidance_scale=guidance, max_sequence_length=CHUNK, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).frames
    assert latents.shape == (1, 5, 4, 4, 6) and torch.isfinite(latents).all()
    batch = 2 if guidance > 1 else 1
    # The pipeline passes one chunk; each TTT reads it once per segment: 2 chunks + 5 frames x 6 tokens.
    assert calls == [(batch, 2 * CHUNK + 5 * 6, 32)] * (2 * 2)


def test_pipeline_with_a_prompt_list_two_resolutions_and_the_default_text_length():
    pipe = _pipeline()
    calls = _ttt_calls(pipe.transformer)
    common = dict(num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    out = pipe(prompt=["a red ball", "a blue cube"], num_frames=17, height=32, width=48, max_sequence_length=CHUNK,
               **common).frames
    assert out.shape == (2, 5, 4, 4, 6)
    out = pipe(prompt="a red ball", num_frames=25, height=48, width=48, max_sequence_length=CHUNK, **common).frames
    assert out.shape == (1, 7, 4, 6, 6)  # 7 latent frames, a 3x3 token grid
    out = pipe(prompt="a red ball", num_frames=17, height=32, width=48, **common).frames  # 226 text tokens
    assert out.shape == (1, 5, 4, 4, 6) and torch.isfinite(out).all()
    assert calls[0] == (4, 2 * CHUNK + 5 * 6, 32)  # 2 prompts x CFG
    assert calls[2] == (2, 3 * CHUNK + 7 * 9, 32)
    assert calls[-1] == (2, 2 * 226 + 5 * 6, 32)


def test_pipeline_save_pretrained_and_load_back(tmp_path):
    from diffusers import CogVideoXPipeline

    pipe = _pipeline()
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "transformer" / "config.json").exists()
    loaded = CogVideoXPipeline.from_pretrained(tmp_path)
    loaded.transformer = tttgraph.from_pretrained(tmp_path, subfolder="transformer")
    inputs = example_inputs(pipe.transformer, 5, height=4, width=6, text_tokens=2 * CHUNK)
    with torch.no_grad():
        assert torch.equal(_out(loaded.transformer, inputs), _out(pipe.transformer, inputs))
