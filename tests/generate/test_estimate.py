"""The pre-run estimates: parameter counts exact against built models, FLOPs consistent."""

from __future__ import annotations

import torch

from tttgraph.generate.estimate import base_parameters, estimate, human, ttt_parameters
from tttgraph.layout import SequenceLayout

COGVIDEOX_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    max_text_seq_length=226, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)


def test_parameter_counts_match_the_built_models():
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.layers import GatedBidirectionalTTT
    from tttgraph.models.cogvideox_bundle import TINY_TRANSFORMER

    for config in (TINY_TRANSFORMER, COGVIDEOX_5B):
        with torch.device("meta"):
            model = CogVideoXTransformer3DModel(**config)
            width = config["num_attention_heads"] * config["attention_head_dim"]
            layer = GatedBidirectionalTTT(width, config["num_attention_heads"], SequenceLayout(16, 6, 12, 1))
        assert base_parameters(config) == sum(p.numel() for p in model.parameters())
        assert ttt_parameters(config) == config["num_layers"] * sum(p.numel() for p in layer.parameters())
    # docs/DESIGN.md: CogVideoX-5B has 5.57B parameters; the TTT layers add 1.66B (39.5M per layer).
    assert round(base_parameters(COGVIDEOX_5B) / 1e9, 2) == 5.57
    assert round(ttt_parameters(COGVIDEOX_5B) / 1e9, 2) == 1.66


def test_one_minute_estimate_counts_tokens_and_prefers_segments():
    e = estimate(COGVIDEOX_5B, 253, (60, 90), SequenceLayout(226, 1, 12, 1), batch=2)
    assert (e.segments, e.video_tokens, e.text_tokens) == (21, 253 * 1350, 21 * 226)
    assert e.tokens == 346_296  # ~351k in docs/DESIGN.md §4 counts the shared frames twice
    # Attention FLOPs: 21 windows of 226 + 13 * 1350 tokens (the last one 12 frames).
    window = 226 + 13 * 1350
    last = 226 + 13 * 1350
    assert e.attention_flops == 4 * 2 * 48 * 64 * (20 * window**2 + last**2) * 42
    assert e.full_attention_flops_per_step / e.flops_per_step > 5
    assert human(1.8e16, "FLOP") == "18PFLOP" and human(3 * 2**30, "B") == "3.0 GiB"
