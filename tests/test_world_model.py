"""The world base model (issue #21, part 3): pixel autoencoder, parts, weights, training command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tttgraph.errors import TTTGraphError
from tttgraph.models.pixel_autoencoder import PixelAutoencoder
from tttgraph.models.world_model import WORLD_AUTOENCODER, save_world_weights, weights_available, world_bundle


def _video(frames: int = 9, height: int = 16, width: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((2, 3, frames, height, width), generator=g) * 2 - 1


def test_pixel_autoencoder_keeps_every_fourth_frame_exactly_and_holds_it():
    ae = PixelAutoencoder(**WORLD_AUTOENCODER)
    x = _video()
    z = ae.encode(x).latent_dist.mode()
    assert z.shape == (2, 48, 3, 4, 6)
    assert torch.equal(ae.encode(x).latent_dist.sample(), z)
    y = ae.decode(z).sample
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :, ::4], x[:, :, ::4], rtol=0, atol=1e-6)  # the kept frames, exactly
    for held in range(1, 9):  # frames 4j-3 .. 4j show latent frame j
        torch.testing.assert_close(y[:, :, held], x[:, :, 4 * ((held + 3) // 4)], rtol=0, atol=1e-6)
    torch.testing.assert_close(ae.encode_frames(x[:, :, ::4]), z)


def test_pixel_autoencoder_refuses_shapes_the_cogvideox_vae_would():
    ae = PixelAutoencoder(**WORLD_AUTOENCODER)
    with pytest.raises(TTTGraphError, match="4k\\+1 frames"):
        ae.encode(_video(frames=8))
    with pytest.raises(TTTGraphError, match="multiples of 4"):
        ae.encode(_video(height=18))
    with pytest.raises(TTTGraphError, match="latents must be \\[N, 48"):
        ae.decode(torch.zeros(1, 16, 2, 2, 3))
    with pytest.raises(TTTGraphError, match="latent_channels=16"):
        PixelAutoencoder(latent_channels=16)
    with pytest.raises(TTTGraphError, match="spatial factor of 8"):
        PixelAutoencoder(block_out_channels=(3, 3, 3, 3))


def test_pixel_autoencoder_saves_and_loads_as_a_diffusers_model(tmp_path):
    ae = PixelAutoencoder(**WORLD_AUTOENCODER)
    ae.save_pretrained(tmp_path / "vae")
    back = PixelAutoencoder.from_pretrained(tmp_path / "vae")
    assert back.config.scaling_factor == WORLD_AUTOENCODER["scaling_factor"]
    x = _video(seed=3)
    torch.testing.assert_close(back.encode(x).latent_dist.mode(), ae.encode(x).latent_dist.mode())


def test_world_bundle_runs_a_world_clip_through_every_part():
    from tttgraph.data.world import make_story
    from tttgraph.models.cogvideox_bundle import decode_latents, encode_text, encode_video, transformer_inputs
    from tttgraph.models.train_world import clip_frames

    bundle = world_bundle(require_weights=False)
    assert bundle.spatial_compression == 4 and bundle.pixel_multiple == 4
    story = make_story(5, 1)
    ids = bundle.tokenizer(story.paragraphs()[0])["input_ids"]
    assert 2 not in ids  # no <unk>: the tokenizer knows every word of the world
    kept = clip_frames(story)
    assert kept.shape == (13, 32, 48, 3)
    video = np.repeat(kept, 4, axis=0)[3:]  # 49 frames whose every 4th frame is kept[j]
    z = encode_video(bundle, video)
    assert z.shape == (13, 48, 8, 12)
    assert np.array_equal(decode_latents(bundle, z)[::4], kept)
    text = encode_text(bundle, story.paragraphs())
    out = bundle.transformer(**transformer_inputs(bundle, z[None], text, torch.tensor([500])), return_dict=False)[0]
    assert out.shape == (1, 13, 48, 8, 12) and torch.isfinite(out).all()


def test_world_weights_round_trip_and_refusals(tmp_path):
    bundle = world_bundle(require_weights=False)
    with pytest.raises(TTTGraphError, match="no world base model weights"):
        world_bundle(tmp_path / "none")
    assert not weights_available(tmp_path)
    save_world_weights(bundle.transformer, bundle.text_encoder, tmp_path)
    assert weights_available(tmp_path)
    back = world_bundle(tmp_path)
    for a, b in zip(bundle.transformer.parameters(), back.transformer.parameters(), strict=True):
        torch.testing.assert_close(b, a.to(torch.bfloat16).float(), rtol=0, atol=0)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "text_encoder.safetensors"))
    with pytest.raises(TTTGraphError, match="text_encoder.safetensors does not fit"):
        world_bundle(tmp_path)


def test_learning_rate_decays_over_the_time_budget():
    from tttgraph.models.train_world import WorldTraining, lr_factor, progress_fraction

    cfg = WorldTraining(steps=1000, warmup_steps=10, minutes=1.0)
    assert lr_factor(0, 0.0, cfg) == pytest.approx(0.1)
    assert progress_fraction(100, 30.0, cfg) == pytest.approx(0.5)  # time ahead of steps
    assert progress_fraction(900, 6.0, cfg) == pytest.approx(0.9)  # steps ahead of time
    assert lr_factor(500, 1.0, cfg) == pytest.approx(0.05)
    assert lr_factor(20, 0.01, cfg) == pytest.approx(1.0)
    with pytest.raises(TTTGraphError, match="batch_size"):
        WorldTraining(batch_size=0)


def test_train_world_writes_weights_report_and_resumes(tmp_path):
    from tttgraph.models.train_world import WorldTraining, cached_pool, render_pool, train

    cfg = WorldTraining(steps=3, batch_size=2, pool=6, warmup_steps=1, checkpoint_every=2, eval_stories=1,
                        eval_steps=2)
    lines: list[str] = []
    report = train(cfg, tmp_path, device="cpu", progress=False, log=lines.append)
    assert report["steps_done"] == 3
    assert (tmp_path / "checkpoint.pt").exists()
    assert weights_available(tmp_path / "weights")
    saved = json.loads((tmp_path / "report.json").read_text())
    held = saved["held_out_3s"]
    assert held["stories"] == 1 and 0 <= held["detection"] <= 1 and 0 <= held["attribute_accuracy"] <= 1
    assert (tmp_path / "held_out_samples.png").stat().st_size > 0
    first = world_bundle(tmp_path / "weights").transformer.state_dict()
    frames, texts = render_pool(6, cfg.seed, progress=False)
    cached_frames, cached_texts = cached_pool(tmp_path, 6, cfg.seed)  # what the resumed run below reads
    assert np.array_equal(cached_frames, frames) and cached_texts == texts

    longer = WorldTraining(**{**cfg.__dict__, "steps": 5, "eval_stories": 0})
    train(longer, tmp_path, device="cpu", progress=False, log=lines.append)
    assert any("resumed from" in line and "step 3" in line for line in lines)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,seconds" and rows[-1].startswith("5,")
    second = world_bundle(tmp_path / "weights").transformer.state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # two more steps changed the EMA

    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TTTGraphError, match="checkpoint.pt can't be read as a training checkpoint.*delete"):
        train(longer, tmp_path, device="cpu", progress=False, log=lines.append)


def test_an_interrupted_training_run_says_how_to_continue(tmp_path):
    import argparse

    from tttgraph.models.train_world import WorldTraining, add_arguments, interrupted, train

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path)])
    command = ["tttgraph", "train-world", "--out", str(tmp_path)]
    assert "no training checkpoint was written" in interrupted(args, command)
    train(WorldTraining(steps=1, batch_size=1, pool=2, warmup_steps=1, eval_stories=0), tmp_path, device="cpu",
          progress=False, log=lambda *a: None)
    message = interrupted(args, command)
    assert f"saved the checkpoint {tmp_path / 'checkpoint.pt'}" in message and message.endswith(str(tmp_path))


def test_diffusers_cogvideox_pipeline_runs_the_world_model():
    """The world's parts drop into diffusers' own CogVideoXPipeline (its VAE factors come from the configs)."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    b = world_bundle(require_weights=False)
    pipe = CogVideoXPipeline(tokenizer=b.tokenizer, text_encoder=b.text_encoder, vae=b.vae,
                             transformer=b.transformer, scheduler=CogVideoXDPMScheduler.from_config(b.scheduler_config))
    assert pipe.vae_scale_factor_spatial == 4 and pipe.vae_scale_factor_temporal == 4
    frames = pipe(prompt="The scene takes place in a night sky. Bo, a big red circle, is on the left.", height=32,
                  width=48, num_frames=49, num_inference_steps=2, guidance_scale=6.0, output_type="np",
                  max_sequence_length=64, generator=torch.Generator().manual_seed(0)).frames[0]
    assert frames.shape == (49, 32, 48, 3) and np.isfinite(frames).all()
