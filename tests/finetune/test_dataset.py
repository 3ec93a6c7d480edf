"""Raw dataset checks, clip planning and the resumable precompute."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from tttgraph.finetune.dataset import (
    DatasetError,
    PrecomputedClips,
    plan_clips,
    read_manifest,
    scan_raw,
)
from tttgraph.finetune.precompute import _clip_pixels, main, precompute
from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS, encode_text, encode_video


def _copy(raw, tmp_path):
    return shutil.copytree(raw, tmp_path / "raw")


def test_scan_and_plan_clips(raw_dataset):
    samples = scan_raw(raw_dataset)
    assert [s.name for s in samples] == ["sample_00000", "sample_00001", "sample_00002"]
    assert all(s.kind == "video" and s.shape == (96, 32, 48, 3) and s.segments == 2 for s in samples)
    assert [c.name for c in plan_clips(samples, 1)][:3] == ["sample_00000@0+1", "sample_00000@1+1", "sample_00001@0+1"]
    assert len(plan_clips(samples, 2)) == 3 and len(plan_clips(samples, 1, stride=2)) == 3
    with pytest.raises(DatasetError, match="no sample holds 3 segment\\(s\\) \\(9 s\\); the longest has 2 \\(6 s\\)"):
        plan_clips(samples, 3)


def test_raw_dataset_errors_name_the_sample_and_the_fix(raw_dataset, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_raw(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no samples"):
        scan_raw(tmp_path / "empty")
    raw = _copy(raw_dataset, tmp_path)
    (raw / "sample_00001.json").unlink()
    with pytest.raises(DatasetError, match="'sample_00001' .* has a .safetensors file but no .json file"):
        scan_raw(raw)
    (raw / "sample_00001.json").write_text("{not json")
    with pytest.raises(DatasetError, match="sample_00001.json is not valid JSON.*; write the sample again"):
        scan_raw(raw)
    (raw / "sample_00001.json").write_text(json.dumps({"paragraphs": ["one", "two", "three"]}))
    with pytest.raises(DatasetError, match="3 paragraph\\(s\\) but the video has 96 frames = 2 segment"):
        scan_raw(raw)
    (raw / "sample_00001.json").write_text(json.dumps({"paragraphs": ["one", "two"]}))
    save_file({"video": np.zeros((96, 32, 48, 3), np.float32)}, str(raw / "sample_00001.safetensors"))
    with pytest.raises(DatasetError, match="video must be uint8"):
        scan_raw(raw)
    (raw / "sample_00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable safetensors file"):
        scan_raw(raw)


def test_clip_pixels_take_the_next_frame_or_repeat_the_last():
    video = np.arange(96)[:, None, None, None].repeat(2, 1).astype(np.uint8)
    first = _clip_pixels(video, 0, 1)
    assert first.shape[0] == 49 and first[-1, 0, 0, 0] == 48  # the next segment's first frame
    last = _clip_pixels(video, 1, 1)
    assert last.shape[0] == 49 and last[0, 0, 0, 0] == 48 and last[-1, 0, 0, 0] == last[-2, 0, 0, 0] == 95


def test_precompute_writes_the_documented_format(clips_3s, raw_dataset, bundle):
    m = read_manifest(clips_3s)
    assert m["complete"] and m["clip_seconds"] == 3 and m["latent_frames"] == 13 and m["latent_shape"] == [4, 4, 6]
    assert [s["clips"] for s in m["shards"]] == [4, 2]
    data = PrecomputedClips(clips_3s)
    assert len(data) == 6 and data.null_text.shape == (TINY_TEXT_TOKENS, 16)
    latents, text = data[3]  # sample_00001, second segment
    samples = scan_raw(raw_dataset)
    from safetensors.numpy import load_file

    video = load_file(str(samples[1].tensor_file))["video"]
    # Clips are encoded in VAE batches: equal to one-by-one encoding up to float rounding.
    torch.testing.assert_close(latents, encode_video(bundle, _clip_pixels(video, 1, 1)), rtol=1e-4, atol=1e-4)
    assert torch.equal(text, encode_text(bundle, [samples[1].paragraphs[1]]).flatten(0, 1))
    data.check_model(latent_channels=4, text_dim=16, text_tokens=TINY_TEXT_TOKENS)
    with pytest.raises(DatasetError, match="does not fit this model.*latent channels 4 vs the model's 16"):
        data.check_model(latent_channels=16, text_dim=16, text_tokens=TINY_TEXT_TOKENS)


def test_precompute_resumes_after_an_interruption(clips_3s, raw_dataset, bundle, tmp_path):
    out = shutil.copytree(clips_3s, tmp_path / "clips")
    manifest = json.loads((out / "manifest.json").read_text())
    # As if killed after the first shard: the manifest lists one shard and is not complete.
    manifest["shards"], manifest["complete"] = manifest["shards"][:1], False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(DatasetError, match="unfinished precompute"):
        PrecomputedClips(out)
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    precompute(bundle, raw_dataset, out, 3, shard_size=4, progress=False)
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first  # kept, not redone
    assert read_manifest(out) == read_manifest(clips_3s)
    a, b = PrecomputedClips(out), PrecomputedClips(clips_3s)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(len(a)))
    with pytest.raises(DatasetError, match="different clip_seconds"):
        precompute(bundle, raw_dataset, out, 6, shard_size=4, progress=False)


def test_precompute_of_latent_samples_cuts_the_same_frames(raw_dataset, bundle, tmp_path):
    raw = tmp_path / "latent_raw"
    raw.mkdir()
    latents = torch.randn(25, 4, 4, 6)
    from safetensors.torch import save_file as save_torch

    save_torch({"latents": latents}, str(raw / "a.safetensors"))
    (raw / "a.json").write_text(json.dumps({"paragraphs": ["<start_scene> The red circle.", "Blue. <end_scene>"]}))
    out = precompute(bundle, raw, tmp_path / "clips", 3, progress=False)
    data = PrecomputedClips(out)
    assert len(data) == 2 and torch.equal(data[1][0], latents[12:25])


def test_precompute_command_reports_bad_input(raw_dataset, tmp_path, capsys):
    assert main(["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--seconds", "3"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--dataset", str(raw_dataset), "--out", str(tmp_path / "o"), "--seconds", "4"]) == 2
    assert "multiple of 3" in capsys.readouterr().err
