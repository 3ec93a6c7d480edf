"""Dynamic CFG, the DPM sampler loop, seeding and checkpoint/resume (a cheap stand-in model)."""

from __future__ import annotations

import math

import pytest
import torch

from tttgraph.generate.guidance import dynamic_cfg_scale, guide
from tttgraph.generate.sampler import (
    LatentCheckpoint,
    LatentCheckpointError,
    SamplerSettings,
    denoise,
    initial_noise,
    job_fingerprint,
    make_scheduler,
)
from tttgraph.models.cogvideox_bundle import SCHEDULER_CONFIG

SHAPE = (1, 5, 4, 4, 6)


def toy_predict(x, t):
    """A deterministic stand-in for the transformer: depends on the input, the timestep and the CFG half."""
    scale = torch.linspace(0.5, 1.5, x.shape[0]).view(-1, 1, 1, 1, 1)
    return torch.tanh(x * scale) * (t.view(-1, 1, 1, 1, 1).float() / 1000)


def test_dynamic_cfg_follows_the_reference_schedule():
    n, s = 50, 5.0
    scales = [dynamic_cfg_scale(i, n, s) for i in range(n)]
    assert scales[0] == 1.0
    assert all(b >= a for a, b in zip(scales, scales[1:], strict=False))  # rises monotonically
    assert scales[25] == pytest.approx(1 + s * (1 - math.cos(math.pi * 0.5**5)) / 2)
    assert scales[-1] == pytest.approx(1 + s * (1 - math.cos(math.pi * (49 / 50) ** 5)) / 2) and scales[-1] > 5.5
    assert scales[10] < 1.01  # the first fifth is essentially unguided
    with pytest.raises(ValueError, match="step must be in"):
        dynamic_cfg_scale(50, 50)
    u, c = torch.zeros(3), torch.ones(3)
    assert torch.equal(guide(u, c, 3.0), torch.full((3,), 3.0))


def test_scheduler_is_v_prediction_dpm_with_trailing_steps():
    scheduler = make_scheduler(SCHEDULER_CONFIG, 50)
    assert type(scheduler).__name__ == "CogVideoXDPMScheduler"
    assert scheduler.config.prediction_type == "v_prediction" and len(scheduler.timesteps) == 50
    assert int(scheduler.timesteps[0]) == 999 and int(scheduler.timesteps[-1]) == 19
    with pytest.raises(ValueError, match="v_prediction"):
        make_scheduler({**SCHEDULER_CONFIG, "prediction_type": "epsilon"}, 10)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="steps must be an int in"):
        SamplerSettings(steps=0)
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        SamplerSettings(guidance_scale=-1)
    assert SamplerSettings(guidance_scale=0).batch == 1 and SamplerSettings().batch == 2


def test_same_seed_same_latents_other_seed_other_latents():
    settings = SamplerSettings(steps=6, seed=3, checkpoint_every=0)
    a = denoise(toy_predict, SHAPE, settings, SCHEDULER_CONFIG, progress=False)
    b = denoise(toy_predict, SHAPE, settings, SCHEDULER_CONFIG, progress=False)
    c = denoise(toy_predict, SHAPE, SamplerSettings(steps=6, seed=4, checkpoint_every=0), SCHEDULER_CONFIG,
                progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(initial_noise(SHAPE, 3), initial_noise(SHAPE, 3))
    assert a.shape == SHAPE and torch.isfinite(a).all()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_after", [3, 4])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path, stop_after):
    settings = SamplerSettings(steps=7, seed=1, checkpoint_every=2)
    job = job_fingerprint(settings, SHAPE, storyboard="abc")
    full = denoise(toy_predict, SHAPE, settings, SCHEDULER_CONFIG, progress=False)

    ckpt = LatentCheckpoint(tmp_path / "run.resume.safetensors", job)

    def stop(done, _latents):
        if done == stop_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        denoise(toy_predict, SHAPE, settings, SCHEDULER_CONFIG, checkpoint=ckpt, callback=stop, progress=False)
    step, _, old_pred = ckpt.load()
    assert step == stop_after - stop_after % 2 and old_pred is not None  # the last multiple of 2 before the stop
    seen = []
    resumed = denoise(toy_predict, SHAPE, settings, SCHEDULER_CONFIG, checkpoint=ckpt, progress=False,
                      callback=lambda done, _: seen.append(done))
    assert seen == list(range(step + 1, 8))  # only the missing steps ran
    assert torch.equal(resumed, full)
    assert ckpt.load()[0] == 7  # the final latents are checkpointed too (a crash while decoding loses nothing)


def test_a_checkpoint_of_another_job_or_a_corrupted_one_is_refused(tmp_path):
    settings = SamplerSettings(steps=4, seed=1, checkpoint_every=2)
    path = tmp_path / "c.safetensors"
    LatentCheckpoint(path, job_fingerprint(settings, SHAPE)).save(2, torch.zeros(SHAPE), torch.zeros(SHAPE))
    other = LatentCheckpoint(path, job_fingerprint(SamplerSettings(steps=4, seed=2), SHAPE))
    with pytest.raises(LatentCheckpointError, match=r"belongs to a different generation \(differs in: seed\)"):
        other.load()
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(LatentCheckpointError, match="resume file .* is not a readable safetensors file: .*; delete it"):
        LatentCheckpoint(path, job_fingerprint(settings, SHAPE)).load()
