"""End to end with the tiny bundle: MP4 frame count/size/fps, reproducibility, resume, --ttt, CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tttgraph.generate.pipeline import GenerateError, GenerateOptions, generate, load_models, plan
from tttgraph.generate.video_io import read_mp4, read_png
from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS as TEXT

SECONDS, STEPS = 6, 3  # 2 segments (2 scenes' worth of markers are tested in test_storyboard), 25 latent frames


def _options(tmp_path, name="v", **kw):
    base = dict(tiny=True, seconds=SECONDS, steps=STEPS, out=tmp_path / f"{name}.mp4", progress=False, ttt="none")
    return GenerateOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    job = plan(_options(tmp_path_factory.mktemp("m")))
    return load_models(job, options=_options(tmp_path_factory.mktemp("m")))


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """One uninterrupted run (seed 0), shared by the tests that compare against it."""
    tmp = tmp_path_factory.mktemp("ref")
    result = generate(_options(tmp), models=models, out=lambda _: None)
    return result, read_mp4(result.video)


def test_multi_segment_video_has_the_right_frames_size_and_fps(reference):
    result, (frames, fps) = reference
    # 6 s at 16 fps: 4 * 6 + 1 = 25 latent frames -> 4 * 24 + 1 = 97 video frames of 48x32 pixels.
    assert result.latents.shape == (1, 25, 4, 4, 6)
    assert frames.shape == (97, 32, 48, 3) and fps == 16.0
    assert result.frames == 97 and result.size == (32, 48)
    sheet = read_png(result.contact_sheet)
    # One 3x-upscaled 96x144 tile per segment, labelled under it (tests/generate/test_contact_sheet.py).
    assert sheet.shape[1] == 2 * 144 + 3 * 4 and sheet.shape[0] > 96 + 2 * 4
    assert not result.video.with_suffix(".resume.safetensors").exists()  # removed after success
    assert frames.std() > 1  # not a blank video


def test_same_seed_gives_identical_video_other_seed_does_not(models, reference, tmp_path):
    result, (frames, _) = reference
    again = generate(_options(tmp_path, "again"), models=models, out=lambda _: None)
    assert torch.equal(again.latents, result.latents)
    assert again.video.read_bytes() == result.video.read_bytes()
    assert np.array_equal(read_mp4(again.video)[0], frames)
    other = generate(_options(tmp_path, "other", seed=1), models=models, out=lambda _: None)
    assert not torch.equal(other.latents, result.latents)


class Interrupt(Exception):
    pass


def test_interrupted_generation_resumes_to_the_same_video(models, reference, tmp_path):
    result, (frames, _) = reference
    options = _options(tmp_path, checkpoint_every=1)

    def stop(done, _latents):
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate(options, models=models, callback=stop, out=lambda _: None)
    assert (tmp_path / "v.resume.safetensors").is_file() and not (tmp_path / "v.mp4").exists()
    lines = []
    resumed = generate(options, models=models, out=lines.append)
    assert resumed.resumed_from == 2 and any("resuming from" in line for line in lines)
    assert torch.equal(resumed.latents, result.latents)
    assert np.array_equal(read_mp4(resumed.video)[0], frames)
    # Another job (different seed) refuses this job's checkpoint instead of mixing it in.
    with pytest.raises(Interrupt):
        generate(options, models=models, callback=stop, out=lambda _: None)
    with pytest.raises(ValueError, match=r"belongs to a different generation \(differs in: seed\)"):
        generate(_options(tmp_path, checkpoint_every=1, seed=5), models=models, out=lambda _: None)


def test_trained_ttt_weights_are_restored_and_picked_up_by_default(models, reference, tmp_path, monkeypatch):
    import tttgraph
    from tttgraph.models.cogvideox_bundle import tiny_bundle, transformer_inputs

    # A stand-in for the fine-tuning example's output: the tiny base transformed, TTT gates changed, saved.
    bundle = tiny_bundle(0)
    example = transformer_inputs(bundle, torch.zeros(1, 25, 4, 4, 6), torch.zeros(1, 2 * TEXT, 16), torch.tensor([999]))
    tm = tttgraph.transform(copy.deepcopy(bundle.transformer),
                            tttgraph.presets.cogvideox_5b(6, text_tokens_per_segment=TEXT), example, progress=False)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.endswith("_gate_video"):
                p.fill_(0.5)
    tttgraph.save(tm, tmp_path / "ttt")

    trained = generate(_options(tmp_path, "trained", ttt=tmp_path / "ttt"), out=lambda _: None)
    assert not torch.equal(trained.latents, reference[0].latents)
    monkeypatch.setenv("TTTGRAPH_TTT_DIR", str(tmp_path / "ttt"))
    job = plan(_options(tmp_path, "auto", ttt=None))
    assert job.ttt_dir == tmp_path / "ttt" and "trained: " in job.summary()
    with pytest.raises(GenerateError, match="no such directory"):
        plan(_options(tmp_path, ttt=tmp_path / "missing"))


def test_dry_run_summary_and_cli_errors(tmp_path, capsys):
    from tttgraph.cli import main

    assert main(["generate", "--tiny", "--dry-run", "--seconds", "9", "--steps", "10"]) == 0
    text = capsys.readouterr().out
    tokens = 3 * TEXT + 37 * 6  # 3 text chunks + 37 latent frames of 2x3 patches
    for expected in ("3 segment(s) of 3 s", "9 s = 145 frames at 16 fps, 48x32 px", "latents 37 x 4 x 4 x 6",
                     f"{tokens} per sample", "batch 2 (CFG)", "10 steps", "FLOP per step", "transformer weights"):
        assert expected in text, (expected, text)

    bad = tmp_path / "bad.toml"
    bad.write_text('[[scenes]]\nsegments = [\n  "Only one sentence here.",\n]\n')
    assert main(["generate", "--storyboard", str(bad), "--dry-run"]) == 1  # a failed command (2: bad usage)
    assert f"{bad}:3: scenes[0].segments[0]: has 1 sentence(s)" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "v.avi"), "--dry-run"]) == 1
    assert "give a path ending in .mp4" in capsys.readouterr().err
    assert main(["generate", "--seconds", "66", "--dry-run"]) == 1
    assert "pass --seconds 63" in capsys.readouterr().err


def test_a_default_finetune_output_that_does_not_fit_is_skipped_with_a_note(tmp_path, monkeypatch):
    import tttgraph
    from tttgraph.models.cogvideox_bundle import tiny_bundle, transformer_inputs

    other = tiny_bundle(seed=1)  # not the base the default run uses (seed 0)
    example = transformer_inputs(other, torch.zeros(1, 13, 4, 4, 6), torch.zeros(1, TEXT, 16), torch.tensor([999]))
    tm = tttgraph.transform(copy.deepcopy(other.transformer),
                            tttgraph.presets.cogvideox_5b(3, text_tokens_per_segment=TEXT), example, progress=False)
    tttgraph.save(tm, tmp_path / "runs" / "finetune" / "ttt")
    monkeypatch.chdir(tmp_path)  # ./runs/finetune/ttt is the default fine-tuning output
    monkeypatch.delenv("TTTGRAPH_TTT_DIR", raising=False)
    options = _options(tmp_path, ttt=None, seconds=3, steps=1)
    job = plan(options)
    assert job.ttt_auto and job.ttt_dir.resolve() == (tmp_path / "runs" / "finetune" / "ttt").resolve()
    lines = []
    models = load_models(job, options=options, out=lines.append)
    assert models.ttt_dir is None and models.ttt_digest == "fresh"
    assert any("not using the fine-tuning output" in line and "not the one this save was made on" in line
               for line in lines), lines
    # An explicit --ttt of the wrong base is an error, not a fallback.
    with pytest.raises(ValueError, match="not the one this save was made on"):
        load_models(plan(_options(tmp_path, ttt=tmp_path / "runs" / "finetune" / "ttt", seconds=3)))


def test_pretrained_directory_is_loaded_from_local_files(tmp_path):
    from tttgraph.models.cogvideox_bundle import save_bundle, tiny_bundle

    save_bundle(tiny_bundle(0), tmp_path / "model")  # a diffusers-format directory
    options = _options(tmp_path, tiny=False, pretrained=tmp_path / "model", seconds=3, steps=1, device="cpu",
                       dtype="float32")
    job = plan(options)
    assert job.source == str(tmp_path / "model") and (job.height, job.width) == (32, 48)
    assert job.text_tokens_per_segment == TEXT and job.ttt_dir is None  # no default pick-up with --pretrained
    result = generate(options, out=lambda _: None)
    assert read_mp4(result.video)[0].shape == (49, 32, 48, 3)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "killed.mp4"
    flags = ["--tiny", "--seconds", "3", "--steps", "50", "--ttt", "none", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "examples.one_minute_video", *flags], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out.with_suffix(".resume.safetensors")
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: no chance to clean up
    proc.wait()
    assert ckpt.exists() and not out.exists(), "the run was not interrupted between two checkpoints"

    options = _options(tmp_path, "killed", seconds=3, steps=50)
    models = load_models(plan(options), options=options)
    resumed = generate(options, models=models, out=lambda _: None)
    assert 5 <= resumed.resumed_from < 50 and resumed.resumed_from % 5 == 0  # from the last checkpoint written
    fresh = generate(_options(tmp_path, "fresh", seconds=3, steps=50), models=models, out=lambda _: None)
    assert torch.equal(resumed.latents, fresh.latents)
    assert np.array_equal(read_mp4(resumed.video)[0], read_mp4(fresh.video)[0])
