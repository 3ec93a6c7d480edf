"""The CogVideoX bundle: tiny build, text/video encoders, tiled decode, inputs, save/load."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tttgraph.data.synthetic import make_clip
from tttgraph.models.cogvideox_bundle import (
    SCHEDULER_CONFIG,
    BundleError,
    decode_latents,
    encode_text,
    encode_video,
    load_pretrained,
    save_bundle,
    tiny_bundle,
    transformer_inputs,
)
from tttgraph.models.cogvideox_bundle import (
    TINY_TEXT_TOKENS as TEXT,
)


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle(seed=0)


@pytest.fixture(scope="module")
def clip():
    c = make_clip(3, seconds=3)
    # 48 frames per 3 s segment; CogVideoX's VAE takes 4k+1, so the last frame is repeated once.
    return c, np.concatenate([c.video, c.video[-1:]])


def test_tiny_bundle_is_seeded_and_leaves_the_global_rng_alone(bundle):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = tiny_bundle(seed=0)
    assert torch.equal(torch.rand(3), expected)
    for a, b in ((bundle.transformer, again.transformer), (bundle.vae, again.vae),
                 (bundle.text_encoder, again.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = tiny_bundle(seed=1)
    assert not torch.equal(other.transformer.proj_out.weight, bundle.transformer.proj_out.weight)
    assert bundle.source == "tiny" and bundle.text_tokens_per_segment == TEXT
    assert bundle.text_encoder.config.d_model == bundle.transformer.config.text_embed_dim
    assert bundle.vae.config.latent_channels == bundle.transformer.config.in_channels
    cfg = bundle.scheduler_config
    assert cfg["prediction_type"] == "v_prediction" and cfg["rescale_betas_zero_snr"] is True
    assert (cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"]) == (0.00085, 0.012, 1000)


def test_scheduler_config_builds_the_diffusers_schedulers(bundle):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    for cls in (CogVideoXDPMScheduler, CogVideoXDDIMScheduler):
        sched = cls.from_config(bundle.scheduler_config)
        assert sched.config.prediction_type == "v_prediction"
        # Zero terminal SNR: the last training step is pure noise.
        assert float(sched.alphas_cumprod[-1]) < 1e-6


def test_tokenizer_keeps_scene_markers_and_pads_to_the_segment_length(bundle, clip):
    paragraphs = clip[0].storyboard.paragraphs()
    ids = bundle.tokenizer(paragraphs, padding="max_length", max_length=40, truncation=True)["input_ids"]
    tokens = bundle.tokenizer.convert_ids_to_tokens(ids[0])
    assert tokens[0] == "<start_scene>" and "<unk>" not in tokens
    assert tokens[1:5] == ["the", "scene", "takes", "place"]
    short = bundle.tokenizer(["The red circle."], padding="max_length", max_length=8)["input_ids"][0]
    assert bundle.tokenizer.convert_ids_to_tokens(short) == ["the", "red", "circle", ".", "</s>"] + ["<pad>"] * 3


def test_encode_text_one_row_per_paragraph(bundle):
    text = ["<start_scene> The red circle bounces up and down.", "The blue square hides. <end_scene>",
            " ".join(["The green triangle chases the yellow diamond."] * 10)]
    emb = encode_text(bundle, text)
    assert emb.shape == (3, TEXT, bundle.transformer.config.text_embed_dim)
    assert torch.isfinite(emb).all()
    assert torch.equal(encode_text(bundle, text[:1])[0], emb[0])  # rows are independent
    with pytest.raises(BundleError, match="list of strings"):
        encode_text(bundle, "one string")


def test_encode_video_shapes_and_errors(bundle, clip):
    _, video = clip
    latents = encode_video(bundle, video)
    assert latents.shape == (13, 4, 4, 6)  # (49 - 1) / 4 + 1 frames, 32x48 / 8
    assert torch.equal(latents, encode_video(bundle, torch.from_numpy(video)))  # deterministic (posterior mean)
    with pytest.raises(BundleError, match="4k\\+1 frames"):
        encode_video(bundle, video[:48])
    with pytest.raises(BundleError, match="multiples of 16"):
        encode_video(bundle, video[:, :24])
    with pytest.raises(BundleError, match="uint8"):
        encode_video(bundle, video.astype(np.float32))


@pytest.mark.parametrize("tile_frames", [2, 8])
def test_decode_in_tiles_equals_the_whole_decode(bundle, tile_frames):
    latents = torch.randn(15, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    out = decode_latents(bundle, latents, tile_frames=tile_frames)
    assert out.shape == (57, 32, 48, 3) and out.dtype == np.uint8
    vae = bundle.vae
    with torch.no_grad():
        whole = vae.decode(latents.transpose(0, 1)[None] / vae.config.scaling_factor).sample
    ref = ((whole[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(out, ref)


def test_decode_rejects_wrong_latents(bundle):
    with pytest.raises(BundleError, match="latents must be"):
        decode_latents(bundle, torch.zeros(3, 16, 4, 6))
    with pytest.raises(BundleError, match="tile_frames"):
        decode_latents(bundle, torch.zeros(3, 4, 4, 6), tile_frames=1)


def test_transformer_inputs_run_the_model_and_a_tttgraph_transform(bundle, clip):
    import tttgraph

    c, video = clip
    latents = encode_video(bundle, video)[None]
    text = encode_text(bundle, c.storyboard.paragraphs()).reshape(1, -1, 16)
    inputs = transformer_inputs(bundle, latents, text, torch.tensor([500]))
    cos, sin = inputs["image_rotary_emb"]
    assert cos.shape == sin.shape == (13 * 2 * 3, 16)
    with torch.no_grad():
        out = bundle.transformer(**inputs, return_dict=False)[0]
    assert out.shape == latents.shape
    cfg = tttgraph.TTTConfig(segment_latent_frames=12, segment_overlap_frames=1, text_tokens_per_segment=TEXT,
                             mini_batch_size=16, backend="reference")
    tm = tttgraph.transform(copy.deepcopy(bundle.transformer), cfg, inputs, progress=False)
    with torch.no_grad():
        assert tm(**inputs, return_dict=False)[0].shape == latents.shape
    with pytest.raises(BundleError, match="multiple of text_tokens_per_segment"):
        transformer_inputs(bundle, latents, text[:, :10], torch.tensor([500]))


def test_save_and_load_pretrained_round_trip(bundle, tmp_path, clip):
    save_bundle(bundle, tmp_path / "model")
    loaded = load_pretrained(tmp_path / "model", dtype=torch.float32)
    assert loaded.source == str(tmp_path / "model") and loaded.text_tokens_per_segment == TEXT
    assert loaded.scheduler_config == {**SCHEDULER_CONFIG, **bundle.scheduler_config}
    paragraphs = clip[0].storyboard.paragraphs()
    assert torch.equal(encode_text(loaded, paragraphs), encode_text(bundle, paragraphs))
    assert torch.equal(encode_video(loaded, clip[1]), encode_video(bundle, clip[1]))
    assert torch.equal(loaded.transformer.proj_out.weight, bundle.transformer.proj_out.weight)
    bf16 = load_pretrained(tmp_path / "model")
    assert next(bf16.transformer.parameters()).dtype == torch.bfloat16


def test_load_pretrained_names_what_is_missing(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        load_pretrained(tmp_path / "nowhere")
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        (tmp_path / name).mkdir()
    with pytest.raises(BundleError, match="lacks the subfolder\\(s\\) scheduler"):
        load_pretrained(tmp_path)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    with pytest.raises(BundleError, match="v_prediction"):
        load_pretrained(tmp_path)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG))
    with pytest.raises(BundleError, match="could not load .*transformer"):
        load_pretrained(tmp_path)


def test_bundle_module_imports_no_diffusers():
    code = ("import sys, tttgraph.models.cogvideox_bundle\n"
            "print([m for m in ('diffusers', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
