"""Resuming a fine-tuning run: past a damaged newest checkpoint, and in a copied or moved run directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tttgraph.finetune.checkpointing import TrainingCheckpointError, check_checkpoint, list_checkpoints
from tttgraph.finetune.stages import StageConfig
from tttgraph.finetune.trainer import read_metrics, run_stage

from .conftest import write_config


@pytest.fixture(scope="module")
def reference(clips_3s, tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at steps 4 and 6 kept): its config and directory."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "c.json", clips_3s)
    run_stage(StageConfig.load(config), root / "out", progress=False, log=lambda *a: None)
    assert [s for s, _ in list_checkpoints(root / "out" / "checkpoints")] == [4, 6]
    return config, root / "out"


def _same_save(a, b) -> None:
    one, two = (load_file(str(d / "ttt" / "tttgraph_weights.safetensors")) for d in (a, b))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_resume_skips_a_truncated_newest_checkpoint_and_repeats_the_run(reference, tmp_path):
    config, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)  # the same run, as a deterministic re-run would leave it
    shutil.rmtree(out / "ttt")
    model = out / "checkpoints" / "step-000006" / "model-rank00000.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # torn by a disk fault, say

    lines: list[str] = []
    summary = run_stage(StageConfig.load(config), out, resume=True, progress=False, log=lines.append)

    skipped = [line for line in lines if line.startswith("skipping damaged checkpoint")]
    assert len(skipped) == 1 and "step-000006 (step 6)" in skipped[0] and str(model) in skipped[0], lines
    assert "truncated" in skipped[0] and "\n" not in skipped[0]
    assert any(line == f"resumed from {out / 'checkpoints' / 'step-000004'} (step 4)" for line in lines), lines
    assert summary["start_step"] == 4
    assert [r["loss"] for r in read_metrics(out)] == [r["loss"] for r in read_metrics(ref)]  # exactly
    _same_save(out, ref)
    check_checkpoint(out / "checkpoints" / "step-000006")  # written again, intact


def test_resume_with_no_intact_checkpoint_says_why_for_each(reference, tmp_path):
    config, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref / "checkpoints", out / "checkpoints")
    (out / "checkpoints" / "step-000006" / "trainer.json").write_text("[]")
    (out / "checkpoints" / "step-000004" / "rng-rank00000.safetensors").write_bytes(b"")
    with pytest.raises(TrainingCheckpointError) as info:
        run_stage(StageConfig.load(config), out, resume=True, progress=False, log=lambda *a: None)
    message = str(info.value)
    assert "no checkpoint in" in message and "is intact" in message
    assert "step-000006 (step 6)" in message and "holds a JSON list, not a JSON object" in message
    assert "step-000004 (step 4)" in message and "rng-rank00000.safetensors is not a readable safetensors file: " \
        "it is empty" in message
    assert "start again without --resume" in message


def test_a_copied_run_directory_resumes_where_it_was_copied(tmp_path):
    """The default synthetic data lives in OUT/data: its precompute manifest names it relative to itself."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": {"synthetic_samples": 4}, "train": {"steps": 3, "batch_size": 2},
                                  "checkpoint": {"every": 1, "keep": 3}}))
    first = tmp_path / "first"
    run_stage(StageConfig.load(config), first, progress=False, log=lambda *a: None)
    manifest = json.loads((first / "data" / "clips_3s" / "manifest.json").read_text())
    assert manifest["dataset"] == "../synthetic"

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, copy)
    first.rename(tmp_path / "moved")  # nothing may still point into the original directory
    shutil.rmtree(copy / "checkpoints" / "step-000003")  # step 3 must be trained again, in the copy
    lines: list[str] = []
    summary = run_stage(StageConfig.load(config), copy, resume=True, progress=False, log=lines.append)
    assert summary["start_step"] == 2
    assert f"resumed from {copy / 'checkpoints' / 'step-000002'} (step 2)" in lines
    assert any(f"from {copy / 'data' / 'clips_3s'}" in line for line in lines), lines
    assert [r["loss"] for r in read_metrics(copy)] == [r["loss"] for r in read_metrics(tmp_path / "moved")]
    _same_save(copy, tmp_path / "moved")


def test_precompute_reads_manifests_with_relative_and_old_absolute_dataset_paths(raw_dataset, clips_3s, bundle,
                                                                                  tmp_path):
    from tttgraph.finetune.dataset import DatasetError, read_manifest
    from tttgraph.finetune.precompute import precompute

    # Written before relative entries (and for a dataset outside the run): an absolute path, still accepted.
    old = tmp_path / "old" / "3s"
    shutil.copytree(clips_3s, old)
    assert read_manifest(old)["dataset"] == str(raw_dataset.resolve())
    before = {p.name: p.stat().st_mtime_ns for p in old.iterdir()}
    precompute(bundle, raw_dataset, old, 3, shard_size=4, progress=False)  # complete: nothing re-encoded
    assert {p.name: p.stat().st_mtime_ns for p in old.iterdir() if p.name != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    # A different dataset is still refused.
    other = tmp_path / "other"
    shutil.copytree(raw_dataset, other)
    with pytest.raises(DatasetError, match="already holds a precompute with a different dataset"):
        precompute(bundle, other, old, 3, shard_size=4, progress=False)


def test_a_new_checkpoint_prunes_the_damaged_ones_a_resume_skipped(tmp_path):
    """With keep=1, pruning by count alone would delete the new intact checkpoint and keep a damaged one."""
    from tttgraph.finetune.checkpointing import newest_intact, save_checkpoint
    from tttgraph.finetune.distributed import DistContext

    params = {"w": torch.nn.Parameter(torch.ones(2, 2))}
    opt = torch.optim.AdamW(list(params.values()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(root, step, params=params, optimizer=opt, scheduler=sched, ctx=DistContext(), extra={},
                        keep=3)
    (root / "step-000006" / "optim-rank00000.safetensors").write_bytes(b"\0" * 100)
    resume_from, skipped = newest_intact(root)
    assert resume_from == root / "step-000004" and len(skipped) == 1 and "step-000006" in skipped[0]
    save_checkpoint(root, 5, params=params, optimizer=opt, scheduler=sched, ctx=DistContext(), extra={}, keep=1)
    assert [s for s, _ in list_checkpoints(root)] == [5]
    assert newest_intact(root) == (root / "step-000005", [])
