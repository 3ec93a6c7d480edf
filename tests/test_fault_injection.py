"""kill -9 during a write leaves every file old or new, never torn, and the run resumes.

``tests/fault_injection_child.py`` sets up one writer, then SIGKILLs it at 25 random points of its
write each (0 to 1.3 times the measured write time after it starts): ``tttgraph.save`` of a tiny
transformed model, a fine-tuning checkpoint, the generation resume file. After every kill it reads
each file back with tttgraph's readers (old or new version, intact); afterwards this test reads the
final state itself and resumes from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 25


def run_child(kind: str, root: Path, seed: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                                                  os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tests.fault_injection_child", kind, str(root), str(TRIALS),
                           str(seed)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    errors = [r for r in rows if "error" in r]
    assert done.returncode == 0 and not errors, (errors, done.stderr[-3000:])
    trials = [r for r in rows if "trial" in r]
    assert len(trials) == TRIALS
    # Some kills must have landed inside the write (else nothing was tested); say how they fell.
    outcomes = {(r["outcome"], r["finished"]) for r in trials}
    assert ("old", False) in outcomes, trials
    final = rows[-1]
    assert final["leftovers"] == [], final  # the next write cleared what the kills left
    return rows


@pytest.mark.slow
def test_kill_during_tttgraph_save(tmp_path):
    from tests.fault_injection_child import tensors_of
    from tttgraph import restore
    from tttgraph.models import build_tiny

    final = run_child("save", tmp_path / "ttt", seed=1)[-1]["final"]
    restored = restore(build_tiny("cogvideox", seed=0), tmp_path / "ttt", progress=False)
    params = {n: p for n, p in restored.named_parameters() if ".gated_ttt." in n}
    expected = tensors_of(final, {n: tuple(p.shape) for n, p in params.items()})
    assert all(torch.equal(params[n].detach(), expected[n]) for n in params)


@pytest.mark.slow
def test_kill_during_a_fine_tuning_checkpoint_write(tmp_path):
    from tttgraph.finetune.checkpointing import newest_intact, read_trainer_state

    final = run_child("checkpoint", tmp_path / "checkpoints", seed=2)[-1]["final"]
    directory, skipped = newest_intact(tmp_path / "checkpoints")
    assert skipped == [] and read_trainer_state(directory)["step"] == final
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


@pytest.mark.slow
def test_kill_during_the_generation_resume_file_write(tmp_path):
    from tests.fault_injection_child import tensors_of
    from tttgraph.generate.sampler import LatentCheckpoint, SamplerSettings, job_fingerprint

    final = run_child("resume", tmp_path / "gen", seed=3)[-1]["final"]
    shape = (1, 13, 16, 60, 90)
    step, latents, _ = LatentCheckpoint(tmp_path / "gen" / "v.resume.safetensors",
                                        job_fingerprint(SamplerSettings(steps=1000), shape)).load()
    assert step == final and torch.equal(latents, tensors_of(final, {"latents": shape, "old_pred": shape})["latents"])
