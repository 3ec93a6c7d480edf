"""Video transformers beyond the eight tiny families (issue #20, in progress): tiny random builds.

Each entry: a diffusers class, a tiny config and its forward inputs at F latent frames. With gates at
0 and no segments the transformed model reproduces the untouched one; with segments it runs at
another frame count and the first segment stays blind to the last one's frames (gates at 0).
``benchmarks/survey_video_dits.py`` runs diffusers' own test configs of all 32 classes.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

import tttgraph  # noqa: E402
from tttgraph.config import TTTConfig  # noqa: E402

_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _text(f, g, dim=16):
    """One text chunk of 4 tokens per segment of 2 frames: a storyboard."""
    return torch.randn(1, 4 * max(1, -(-f // 2)), dim, generator=g)


def _wan_inputs(f, seed, channels=4):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, channels, f, 8, 8, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([500])}


def _vace_inputs(f, seed):
    inputs = _wan_inputs(f, seed)
    inputs["control_hidden_states"] = torch.randn(1, 12, f, 8, 8, generator=_g(seed + 1))
    return inputs


def _anyflow_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, f, 4, 8, 8, generator=g),
            "timestep": torch.full((1, f), 500.0), "r_timestep": torch.full((1, f), 250.0),
            "encoder_hidden_states": _text(f, g)}


def _easyanimate_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "timestep": torch.tensor([500]),
            "encoder_hidden_states": _text(f, g)}


def _ltx2_inputs(f, seed):
    """LTX-2: packed video [B, F*h*w, C] with its grid as ints, and an audio stream of 9 frames."""
    g = _g(seed)
    text = _text(f, g)
    return {"hidden_states": torch.randn(1, f * 4 * 4, 4, generator=g), "audio_hidden_states": torch.randn(1, 9, 4),
            "encoder_hidden_states": text, "audio_encoder_hidden_states": torch.randn(1, text.shape[1], 16),
            "timestep": torch.tensor([500.0]), "encoder_attention_mask": torch.ones(1, text.shape[1]).bool(),
            "num_frames": f, "height": 4, "width": 4, "audio_num_frames": 9, "fps": 25.0}


def _consisid_inputs(f, seed):
    """ConsisID (CogVideoX 1.0 with identity conditioning): [B, F, C, H, W]; its sincos table takes exactly
    max_text_seq_length text tokens, so the prompt is one chunk that every segment reads."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, f, 4, 8, 8, generator=g), "encoder_hidden_states": torch.randn(1, 8, 8),
            "timestep": torch.tensor([500]), "id_vit_hidden": [torch.ones(1, 2, 2)], "id_cond": torch.ones(1, 2)}


def _motif_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 33, f, 4, 4, generator=g), "encoder_hidden_states": _text(f, g, 32),
            "timestep": torch.tensor([500])}


def _hunyuan15_inputs(f, seed, image=False):
    """HunyuanVideo 1.5, batch 2: prompts padded as the pipeline pads them (each sample's own valid length), a
    ByT5 stream and the image stream (zero for text-to-video). One prompt for all segments."""
    g = _g(seed)
    mask, mask_2 = torch.ones(2, 6), torch.ones(2, 4)
    mask[0, 4:], mask[1, 5:], mask_2[1, 2:] = 0, 0, 0
    return {"hidden_states": torch.randn(2, 4, f, 4, 4, generator=g), "timestep": torch.tensor([500.0, 500.0]),
            "encoder_hidden_states": torch.randn(2, 6, 16, generator=g), "encoder_attention_mask": mask,
            "encoder_hidden_states_2": torch.randn(2, 4, 8, generator=g), "encoder_attention_mask_2": mask_2,
            "image_embeds": torch.randn(2, 3, 12, generator=g) if image else torch.zeros(2, 3, 12)}


def _cosmos_inputs(f, seed):
    """Cosmos: [B, C, F, H, W], a text padding mask [B, L] and fps as a Python number."""
    g = _g(seed)
    text = _text(f, g)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "timestep": torch.tensor([500]),
            "encoder_hidden_states": text, "attention_mask": torch.ones(1, text.shape[1]), "fps": 30}


def _kandinsky5_inputs(f, seed):
    """Kandinsky 5: channels-last [B, F, H, W, C] latents with their RoPE positions as inputs."""
    g = _g(seed)
    text = _text(f, g)
    return {"hidden_states": torch.randn(1, f, 8, 8, 4, generator=g), "encoder_hidden_states": text,
            "timestep": torch.tensor([500.0]), "pooled_projections": torch.randn(1, 8, generator=g),
            "visual_rope_pos": [torch.arange(f), torch.arange(4), torch.arange(4)],
            "text_rope_pos": torch.arange(text.shape[1])}


def _kandinsky6_inputs(f, seed):
    """Kandinsky 6: channels-last [B, F, H, W, C] latents and an audio stream [B, 9, C]."""
    g = _g(seed)
    return {"hidden_states": torch.randn(1, f, 8, 8, 4, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([500.0]), "pooled_projections": torch.randn(1, 8, generator=g),
            "audio_hidden_states": torch.randn(1, 9, 4, generator=g)}


def _sana_video_inputs(f, seed):
    g = _g(seed)
    return {"hidden_states": torch.randn(1, 4, f, 8, 8, generator=g), "encoder_hidden_states": _text(f, g),
            "timestep": torch.tensor([500])}


def _temporal_inputs(f, seed):
    return {"hidden_states": torch.randn(f, 4, 4, 4, generator=_g(seed)), "num_frames": f}


CLASSES = {
    "SkyReelsV2Transformer3DModel": (_WAN, _wan_inputs),
    "WanVACETransformer3DModel": ({**_WAN, "num_layers": 4, "vace_layers": [0, 2], "vace_in_channels": 12},
                                  _vace_inputs),
    "ChronoEditTransformer3DModel": ({**_WAN, "rope_temporal_skip_len": 8}, _wan_inputs),
    "AnyFlowTransformer3DModel": ({k: v for k, v in _WAN.items() if k != "qk_norm"} | {"gate_value": 0.25,
                                  "deltatime_type": "r"}, _anyflow_inputs),
    "EasyAnimateTransformer3DModel": (dict(attention_head_dim=16, num_attention_heads=2, in_channels=4,
                                           mmdit_layers=2, num_layers=2, out_channels=4, patch_size=2,
                                           sample_height=16, sample_width=16, text_embed_dim=16, time_embed_dim=8,
                                           time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
                                      _easyanimate_inputs),
    "TransformerTemporalModel": (dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                      norm_num_groups=1), _temporal_inputs),
    "ConsisIDTransformer3DModel": (dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                        time_embed_dim=2, text_embed_dim=8, num_layers=1, sample_width=8,
                                        sample_height=8, sample_frames=8, patch_size=2, temporal_compression_ratio=4,
                                        max_text_seq_length=8, cross_attn_interval=1, is_kps=False,
                                        is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1,
                                        LFE_id_dim=2, LFE_vit_dim=2, LFE_depth=5, LFE_dim_head=8, LFE_num_heads=2,
                                        LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=10, LFE_ff_mult=1,
                                        LFE_num_scale=1), _consisid_inputs),
    "MotifVideoTransformer3DModel": (dict(in_channels=33, out_channels=16, num_attention_heads=2,
                                          attention_head_dim=12, num_layers=1, num_single_layers=1,
                                          num_decoder_layers=0, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
                                          qk_norm="rms_norm", norm_type="layer_norm", text_embed_dim=32,
                                          image_embed_dim=4, rope_theta=256.0, rope_axes_dim=(4, 4, 4),
                                          enable_text_cross_attention_dual=False,
                                          enable_text_cross_attention_single=False), _motif_inputs),
    "LTX2VideoTransformer3DModel": (dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                         num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                         audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
                                         audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
                                         qk_norm="rms_norm_across_heads", caption_channels=16,
                                         rope_double_precision=False), _ltx2_inputs),
    "HunyuanVideo15Transformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2,
                                              attention_head_dim=8, num_layers=1, num_refiner_layers=1,
                                              mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
                                              text_embed_2_dim=8,
                                              image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16,
                                              task_type="t2v"), _hunyuan15_inputs),
    "CosmosTransformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
                                      num_layers=2, mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4,
                                      max_size=(8, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
                                      concat_padding_mask=False, extra_pos_embed_type="learnable"), _cosmos_inputs),
    "Kandinsky5Transformer3DModel": (dict(in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
                                          out_visual_dim=4, patch_size=(1, 2, 2), model_dim=32, ff_dim=32,
                                          num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6)),
                                     _kandinsky5_inputs),
    "Kandinsky6Transformer3DModel": (dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8,
                                          time_dim=16, patch_size=(1, 2, 2), model_dim=32, ff_dim=32,
                                          num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
                                          visual_cond=False, in_audio_dim=4, out_audio_dim=4, model_dim_a=16,
                                          axes_dims_a=(8,)), _kandinsky6_inputs),
    "SanaVideoTransformer3DModel": (dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
                                         num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=12,
                                         cross_attention_dim=24, caption_channels=16, mlp_ratio=2.5,
                                         attention_bias=False, sample_size=8, patch_size=(1, 2, 2),
                                         norm_elementwise_affine=False, norm_eps=1e-6,
                                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32), _sana_video_inputs),
}

# Classes whose text is one prompt for every segment: their segment test transforms at one segment (2 frames).
_ONE_PROMPT = ("ConsisIDTransformer3DModel", "HunyuanVideo15Transformer3DModel")


# Classes that zero-initialise their modulations (adaLN-Zero): at random init their blocks would not reach the output,
# so the tests give those parameters random values.
_ZERO_INIT = ("Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel")


def _build(name):
    import diffusers

    config, inputs = CLASSES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(diffusers, name)(**config).eval()
        if name in _ZERO_INIT:
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.1)
    return model, inputs


def _out(model, inputs):
    out = model(**inputs, return_dict=False)
    out = out if isinstance(out, torch.Tensor) else out[0]  # Kandinsky 5 returns its tensor bare
    return out.sample if hasattr(out, "sample") else out


@pytest.mark.parametrize("name", list(CLASSES))
def test_gates_at_zero_reproduce_the_model_and_add_ttt_layers(name):
    model, make = _build(name)
    inputs = make(3, 0)
    with torch.no_grad():
        ref = _out(model, inputs)
    before = {n for n, _ in model.named_parameters()}
    tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), inputs, progress=False)
    added = [n for n, _ in tm.named_parameters() if n not in before]
    assert added and all(".gated_ttt." in n for n in added)
    with torch.no_grad():
        assert (_out(tm, inputs) - ref).abs().max() <= 1e-5
    assert str(tttgraph.inspect(copy.deepcopy(_build(name)[0]), TTTConfig(), inputs)).startswith(
        f"tttgraph plan for {name}")


@pytest.mark.parametrize("name", list(CLASSES))
def test_segments_run_at_another_frame_count_and_keep_the_first_segment_blind(name):
    model, make = _build(name)
    # No overlap: with overlapping windows the shared frames relay information one segment per layer.
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=8, segment_latent_frames=2, segment_overlap_frames=0)
    # One prompt serves every segment (ConsisID, HunyuanVideo 1.5): the example holds one segment (2 frames).
    tm = tttgraph.transform(model, cfg, make(2 if name in _ONE_PROMPT else 4, 0), progress=False)
    inputs = make(7, 1)
    other = {**inputs, "hidden_states": inputs["hidden_states"].clone()}
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
    if name == "Kandinsky6Transformer3DModel":  # likewise; without its audio stream the video is segment-local
        del inputs["audio_hidden_states"], other["audio_hidden_states"]
        with torch.no_grad():
            a, b = _out(tm, inputs), _out(tm, other)
    # The first segment's frames (window [0, 2)) see nothing of frames 5-6 through attention.
    assert torch.equal(_frames(name, a)[:2], _frames(name, b)[:2])


def _frames(name: str, video: torch.Tensor) -> torch.Tensor:
    """A view of ``video`` (the model's input or output layout) with the frames first."""
    if name == "TransformerTemporalModel":  # [F, C, H, W]: the frames are the batch (of one video)
        return video
    if name == "LTX2VideoTransformer3DModel":  # packed [1, F * 16, C]
        return video[0].unflatten(0, (-1, 16))
    frames_first = name in ("AnyFlowTransformer3DModel", "ConsisIDTransformer3DModel",  # [B, F, C, H, W]
                            "Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel")  # [B, F, H, W, C]
    return video[0].movedim(0 if frames_first else 1, 0)  # [F, ...]


def test_hunyuan15_two_blocks_reproduce_other_paddings_frame_counts_and_the_image_branch():
    """Captured on text-to-video inputs (its ``if is_t2v:`` takes that branch in the graph), the edited model
    runs the model's own forward: other paddings, another frame count and image-to-video reproduce too."""
    import diffusers

    config, make = CLASSES["HunyuanVideo15Transformer3DModel"]
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

    model, make = _build("SanaVideoTransformer3DModel")
    inputs = make(3, 0)
    gm = capture(model, inputs, progress=False)
    layout = get_adapter(model).layout(model, inputs)
    assert len(module_attention_sites(gm, model, layout, ("transformer_blocks.*.attn1",))) == 2
    with pytest.raises(LayoutInferenceError, match="caption_projection .* has 8 tokens where the video has 48"):
        module_attention_sites(gm, model, layout, ("caption_projection",))
