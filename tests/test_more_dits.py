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
}


def _build(name):
    import diffusers

    config, inputs = CLASSES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(diffusers, name)(**config).eval()
    return model, inputs


def _out(model, inputs):
    out = model(**inputs, return_dict=False)[0]
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
    # ConsisID's one prompt serves every segment: its example holds one segment (2 frames).
    tm = tttgraph.transform(model, cfg, make(2 if name == "ConsisIDTransformer3DModel" else 4, 0), progress=False)
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
    # The first segment's frames (window [0, 2)) see nothing of frames 5-6 through attention.
    assert torch.equal(_frames(name, a)[:2], _frames(name, b)[:2])


def _frames(name: str, video: torch.Tensor) -> torch.Tensor:
    """A view of ``video`` (the model's input or output layout) with the frames first."""
    if name == "TransformerTemporalModel":  # [F, C, H, W]: the frames are the batch (of one video)
        return video
    if name == "LTX2VideoTransformer3DModel":  # packed [1, F * 16, C]
        return video[0].unflatten(0, (-1, 16))
    frames_first = name in ("AnyFlowTransformer3DModel", "ConsisIDTransformer3DModel")  # [B, F, C, H, W]
    return video[0].movedim(0 if frames_first else 1, 0)  # [F, ...]
