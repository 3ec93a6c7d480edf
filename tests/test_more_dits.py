"""Video transformers beyond the eight tiny families (issue #20, in progress): tiny random builds.

Each entry of ``tttgraph.models.tiny.MORE_DITS``: a diffusers class, a tiny config and its forward inputs at F
latent frames. With gates at 0 and no segments the transformed model reproduces the untouched one; with segments
it runs at another frame count and the first segment stays blind to the last one's frames (gates at 0).
``benchmarks/survey_video_dits.py`` runs diffusers' own test configs of all 32 classes, and these builds for the
classes without a working one.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

import tttgraph  # noqa: E402
from tttgraph.config import TTTConfig  # noqa: E402
from tttgraph.models.tiny import MORE_DITS, build_more_dit  # noqa: E402

# Classes whose text is one prompt for every segment: their segment test transforms at one segment (2 frames).
_ONE_PROMPT = ("ConsisIDTransformer3DModel", "HunyuanVideo15Transformer3DModel", "WanAnimate2Transformer3DModel")
# Classes whose sequence packs several grids or streams (tttgraph/adapters/_packed.py): no time axis to segment.
_PACKED = ("JoyImageEditPlusTransformer3DModel", "HunyuanVideoFramepackTransformer3DModel", "HeliosTransformer3DModel",
           "MiniMaxH3Transformer3DModel", "SanaWMLTX2RefinerTransformer3DModel")


def _out(model, inputs):
    out = model(**inputs, return_dict=False)
    out = out if isinstance(out, torch.Tensor) else out[0]  # Kandinsky 5 returns its tensor bare
    out = out.sample if hasattr(out, "sample") else out
    return out[0][None] if isinstance(out, list) else out  # Wan-Animate 2: a list of unbatched samples


def _cloned(video):
    return [v.clone() for v in video] if isinstance(video, list) else video.clone()


@pytest.mark.parametrize("name", list(MORE_DITS))
def test_gates_at_zero_reproduce_the_model_and_add_ttt_layers(name):
    model, make = build_more_dit(name)
    inputs = make(3, 0)
    with torch.no_grad():
        ref = _out(model, inputs)
    before = {n for n, _ in model.named_parameters()}
    tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), inputs, progress=False)
    added = [n for n, _ in tm.named_parameters() if n not in before]
    assert added and all(".gated_ttt." in n for n in added)
    with torch.no_grad():
        assert (_out(tm, inputs) - ref).abs().max() <= 1e-5
    assert str(tttgraph.inspect(copy.deepcopy(build_more_dit(name)[0]), TTTConfig(), inputs)).startswith(
        f"tttgraph plan for {name}")


@pytest.mark.parametrize("name", [name for name in MORE_DITS if name not in _PACKED])
def test_segments_run_at_another_frame_count_and_keep_the_first_segment_blind(name):
    model, make = build_more_dit(name)
    # No overlap: with overlapping windows the shared frames relay information one segment per layer.
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=8, segment_latent_frames=2, segment_overlap_frames=0)
    # One prompt serves every segment (ConsisID, HunyuanVideo 1.5): the example holds one segment (2 frames).
    tm = tttgraph.transform(model, cfg, make(2 if name in _ONE_PROMPT else 4, 0), progress=False)
    inputs = make(7, 1)
    other = {**inputs, "hidden_states": _cloned(inputs["hidden_states"])}
    frames = _frames(name, other["hidden_states"])
    frames[-2:] += 1.0  # the last segment's frames
    with torch.no_grad():
        a, b = _out(tm, inputs), _out(tm, other)
    assert _frames(name, a).shape[0] == 7 and torch.isfinite(a).all()
    assert not torch.equal(a, b)
    if name == "TransformerTemporalModel":
        return  # its input GroupNorm normalises over all frames at once: every frame sees the others there
    if name == "LTX2VideoTransformer3DModel":
        return  # its audio stream attends to every frame and every frame to it (left global)
    if name == "SanaVideoTransformer3DModel":  # its linear self-attention is not SDPA and stays global
        plan = tttgraph.plan_of(tm)
        linear = [site for site in plan.sites if site.module_path.endswith("attn1")]
        assert linear and all(site.ttt and not site.segment for site in linear)
        assert all(site.segment for site in plan.sites if site.module_path.endswith("attn2"))
        return
    if name == "SanaWMTransformer3DModel":  # its gated-delta-net recurrences are not SDPA and stay global
        plan = tttgraph.plan_of(tm)
        blocks = [site for site in plan.sites if site.module_path in ("blocks.0.attn", "blocks.1.attn")]
        assert len(blocks) == 2 and all(site.ttt and not site.segment for site in blocks)
        # The softmax block's main and camera SDPA calls are segment-local, with no TTT layer of their own.
        inner = [site for site in plan.sites if site.module_path.startswith("blocks.1.attn.")]
        assert len(inner) == 2 and all(site.segment and not site.ttt for site in inner)
        return
    if name == "WanAnimateTransformer3DModel":
        # Its cross-attention reads the CLIP image tokens and the prompt in one SDPA: no text chunk per segment
        # can be cut from it, so it stays global (every segment reads the whole prompt); the face adapter's
        # attention has the frames in its batch, local already.
        plan = tttgraph.plan_of(tm)
        assert all(site.segment for site in plan.sites if site.module_path.endswith("attn1"))
        assert not any(site.segment for site in plan.sites if site.module_path.endswith("attn2"))
    if name == "AnyFlowFARTransformer3DModel":  # its chunk-causal FlexAttention is not SDPA and stays as it is
        plan = tttgraph.plan_of(tm)
        flex = [site for site in plan.sites if site.module_path.endswith("attn1")]
        assert len(flex) == 2 and all(site.ttt and not site.segment for site in flex)
        assert all(site.segment for site in plan.sites if site.module_path.endswith("attn2"))
    if name == "Kandinsky6SRTransformer3DModel":  # NABLA FlexAttention, not SDPA: nothing is segment-local
        plan = tttgraph.plan_of(tm)
        assert len(plan.sites) == 2 and all(site.ttt and not site.segment for site in plan.sites)
        # Its tokens sit in 8x8 blocks within a frame: the TTT layers get no (row-major) RoPE.
        assert all("no RoPE" in site.note for site in plan.sites)
        assert all(block.self_attention.gated_ttt.rope_grid is None for block in tm.visual_transformer_blocks)
        return
    if name == "Kandinsky6Transformer3DModel":  # likewise; without its audio stream the video is segment-local
        del inputs["audio_hidden_states"], other["audio_hidden_states"]
        with torch.no_grad():
            a, b = _out(tm, inputs), _out(tm, other)
    # The first segment's frames (window [0, 2)) see nothing of frames 5-6 through attention.
    assert torch.equal(_frames(name, a)[:2], _frames(name, b)[:2])


def _frames(name: str, video) -> torch.Tensor:
    """A view of ``video`` (the model's input or output layout) with the frames first."""
    if isinstance(video, list):  # Wan-Animate 2's unbatched [C, F, H, W] latents
        return video[0].movedim(1, 0)
    if name == "TransformerTemporalModel":  # [F, C, H, W]: the frames are the batch (of one video)
        return video
    if name == "LTX2VideoTransformer3DModel":  # packed [1, F * 16, C]
        return video[0].unflatten(0, (-1, 16))
    frames_first = name in ("AnyFlowTransformer3DModel", "AnyFlowFARTransformer3DModel",  # [B, F, C, H, W]
                            "ConsisIDTransformer3DModel",
                            "Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel",  # [B, F, H, W, C]
                            "Kandinsky6SRTransformer3DModel")
    return video[0].movedim(0 if frames_first else 1, 0)  # [F, ...]


def test_hunyuan15_two_blocks_reproduce_other_paddings_frame_counts_and_the_image_branch():
    """Captured on text-to-video inputs (its ``if is_t2v:`` takes that branch in the graph), the edited model
    runs the model's own forward: other paddings, another frame count and image-to-video reproduce too."""
    import diffusers

    config, make = MORE_DITS["HunyuanVideo15Transformer3DModel"]
    torch.manual_seed(0)
    model = diffusers.HunyuanVideo15Transformer3DModel(**{**config, "num_layers": 2}).eval()
    base = copy.deepcopy(model)
    tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), make(3, 0), progress=False)
    i2v = make(5, 1, image=True)
    i2v["encoder_attention_mask"][0, 2:] = 0  # another padding than the example's
    for inputs in (make(3, 0), i2v):
        with torch.no_grad():
            assert (_out(tm, inputs) - _out(base, inputs)).abs().max() <= 1e-5


def test_module_attention_refuses_a_module_whose_output_is_not_the_video():
    """``ModelAdapter.module_attention`` lists self-attentions over the video; any other module is refused by name."""
    from tttgraph.adapters import get_adapter
    from tttgraph.analysis import module_attention_sites
    from tttgraph.capture import capture
    from tttgraph.errors import LayoutInferenceError

    model, make = build_more_dit("SanaVideoTransformer3DModel")
    inputs = make(3, 0)
    gm = capture(model, inputs, progress=False)
    layout = get_adapter(model).layout(model, inputs)
    assert len(module_attention_sites(gm, model, layout, ("transformer_blocks.*.attn1",))) == 2
    with pytest.raises(LayoutInferenceError, match="caption_projection .* has 8 tokens where the video has 48"):
        module_attention_sites(gm, model, layout, ("caption_projection",))


def test_anyflow_far_keeps_its_parameters_trainable_and_refuses_compressed_chunks():
    """The capture freezes the parameters for FlexAttention's sake only; a call whose oldest chunks would be
    patchified at ``compressed_patch_size`` (more chunks than ``full_chunk_limit``) is refused, naming the chunks."""
    from tttgraph.errors import LayoutInferenceError

    model, make = build_more_dit("AnyFlowFARTransformer3DModel")
    tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), make(4, 0), progress=False)
    assert all(p.requires_grad for p in tm.parameters())
    with pytest.raises(LayoutInferenceError, match=r"chunk_partition=\[1, 1, 1, 1, 1\] \(5 chunks.*at most 4 chunks"):
        tm(**{**make(5, 0), "chunk_partition": [1] * 5})


@pytest.mark.parametrize("name", _PACKED)
def test_packed_sequences_refuse_segments_naming_why(name):
    """A sequence of several grids or streams has no time axis to cut: segments are refused before the capture."""
    model, make = build_more_dit(name)
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=8, segment_latent_frames=2)
    with pytest.raises(tttgraph.TTTGraphError, match=rf"segment_latent_frames=2: {name} has no segments, as .+; "
                                                     "transform it with segment_latent_frames=None"):
        tttgraph.transform(model, cfg, make(3, 0), progress=False)
    assert not any(".gated_ttt." in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name", ["HunyuanVideoFramepackTransformer3DModel", "HeliosTransformer3DModel"])
def test_history_models_reproduce_with_another_history_and_section_length(name):
    """The packed length is read per call: a section with more history and more frames reproduces at gates 0."""
    model, make = build_more_dit(name)
    base = copy.deepcopy(model)
    tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), make(3, 0), progress=False)
    inputs = make(5, 1)
    newest = "latents_clean" if "Framepack" in name else "latents_history_short"
    for key in (newest, f"indices_{newest}"):  # twice the frames of the newest history: more packed tokens
        inputs[key] = torch.cat([inputs[key]] * 2, dim=2 if key == newest else -1)
    with torch.no_grad():
        assert (_out(tm, inputs) - _out(base, inputs)).abs().max() <= 1e-5


def test_wan_animate2_both_passes_reproduce_and_the_example_cache_stays_empty():
    """Transformed on the reference pass (its KV cache object bound in the capture), the edited model runs the
    reference pass and a denoising step through the cache (FlexAttention) as the model does, gates at 0."""
    model, make = build_more_dit("WanAnimate2Transformer3DModel")
    base = copy.deepcopy(model)
    example = make(3, 0)
    tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), example, progress=False)
    assert example["kv_cache"].get(0).key is None  # the transform wrote into its own copy
    assert "kv_cache" not in tttgraph.rewrite.example_inputs_of(tm)  # a recipe records no cache object

    def two_passes(m):
        extract = make(2, 1)
        step = {**make(3, 2), "kv_cache": extract["kv_cache"], "kv_cache_mode": "cached",
                "reference_grid_sizes": extract["offset_grid_sizes"], "origin_len": 8, "origin_area": [32, 32]}
        del step["offset_grid_sizes"]
        with torch.no_grad():
            return _out(m, extract), _out(m, step)

    for got, want in zip(two_passes(tm), two_passes(base), strict=True):
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-5


def test_sana_wm_refiner_segments_with_the_grid_given_by_a_registered_adapter():
    """Its packed tokens carry no grid; registered with the grid, the refiner segments like any video model."""
    from tttgraph.adapters import ADAPTERS
    from tttgraph.adapters.sana_wm_refiner import SanaWMRefinerAdapter

    tttgraph.register_adapter("sana-wm-refiner-4x4", SanaWMRefinerAdapter(grid=(4, 4)))
    try:
        model, make = build_more_dit("SanaWMLTX2RefinerTransformer3DModel")
        cfg = TTTConfig(gate_init=0.0, mini_batch_size=8, segment_latent_frames=2, segment_overlap_frames=0)
        tm = tttgraph.transform(model, cfg, make(4, 0), progress=False)
        assert tttgraph.plan_of(tm).layout.grid == (4, 4)
        inputs = make(7, 1)
        other = {**inputs, "hidden_states": inputs["hidden_states"].clone()}
        other["hidden_states"][:, 5 * 16:] += 1.0  # the last segment's frames
        with torch.no_grad():
            a, b = _out(tm, inputs), _out(tm, other)
        assert not torch.equal(a, b) and torch.equal(a[:, : 2 * 16], b[:, : 2 * 16])
    finally:
        ADAPTERS.pop("sana-wm-refiner-4x4")
