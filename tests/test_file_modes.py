"""Files tttgraph writes get the mode a plain open() gives (0o666 minus the umask), not mkstemp's 0o600.

Every writer goes through a temporary file renamed into place; each is run under two umasks (set with
os.umask and restored afterwards), neither of which gives 0o600 by itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

UMASKS = (0o022, 0o007)


@pytest.fixture(params=UMASKS, ids=[f"umask{m:03o}" for m in UMASKS])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def assert_modes(root: Path, mask: int, expected_files: int) -> None:
    found = modes(root)
    assert len(found) >= expected_files, found
    want = 0o666 & ~mask
    assert found == dict.fromkeys(found, want), {k: oct(v) for k, v in found.items()}


def test_file_mode_follows_the_umask(umask):
    from tttgraph.config import file_mode

    assert file_mode() == 0o666 & ~umask


def test_atomic_writers(umask, tmp_path):
    from tttgraph.config import TTTConfig, atomic_path, write_atomic
    from tttgraph.finetune.plot import loss_curve_png

    write_atomic(tmp_path / "a.txt", "text")
    write_atomic(tmp_path / "b.bin", b"bytes")
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"named")
    TTTConfig().save(tmp_path / "config.json")
    loss_curve_png([1, 2, 3], [1.0, 0.5, 0.25], tmp_path / "loss.png")
    assert_modes(tmp_path, umask, 5)


def test_save_checkpoint_resume_file_and_dataset(umask, tmp_path):
    from tttgraph import save
    from tttgraph.config import TTTConfig
    from tttgraph.data.synthetic import write_dataset
    from tttgraph.finetune.checkpointing import save_checkpoint
    from tttgraph.finetune.distributed import DistContext
    from tttgraph.generate.sampler import LatentCheckpoint, SamplerSettings, job_fingerprint
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.rewrite import transform

    model = build_tiny("cogvideox", seed=0)
    cfg = TTTConfig(mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    save(transform(model, cfg, example_inputs(model, 5, text_tokens=8), progress=False), tmp_path / "ttt")
    assert_modes(tmp_path / "ttt", umask, 2)

    params = {"w": torch.nn.Parameter(torch.ones(2, 2))}
    opt = torch.optim.AdamW(list(params.values()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    save_checkpoint(tmp_path / "checkpoints", 1, params=params, optimizer=opt, scheduler=sched, ctx=DistContext(),
                    extra={}, keep=1)
    assert_modes(tmp_path / "checkpoints", umask, 4)

    LatentCheckpoint(tmp_path / "gen" / "v.resume.safetensors", job_fingerprint(SamplerSettings(), (1, 2))).save(
        1, torch.zeros(1, 2), None)
    assert_modes(tmp_path / "gen", umask, 1)

    write_dataset(tmp_path / "raw", samples=1, seconds=3)
    assert_modes(tmp_path / "raw", umask, 2)


def test_pretrained_directory(umask, tmp_path):
    from tttgraph.models.cogvideox_bundle import save_bundle, tiny_bundle

    save_bundle(tiny_bundle(0), tmp_path / "model")
    assert_modes(tmp_path / "model", umask, 8)
