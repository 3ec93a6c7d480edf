"""Training checkpoints: trainable weights, optimizer, LR schedule, data position and RNG state.

Layout of ``OUT/checkpoints/step-000050/``:

- ``model-rank00000.safetensors``: each process's (local shard of the) trainable parameters;
- ``optim-rank00000.safetensors``: its optimizer state tensors, the rest of the optimizer state
  (param groups, hyper-parameters) as JSON in the file's metadata;
- ``rng-rank00000.safetensors``: its torch CPU (and CUDA) generator states;
- ``trainer.json``: step, world size, the LR schedule's state, the stage config, written last.

Every process writes into ``.step-000050.tmp/``; after a barrier the main process renames it to
``step-000050/`` (atomic on one file system) and removes the oldest beyond ``keep``. A killed run
leaves at most a ``.tmp`` directory, which is ignored and cleared. Everything is read with
safetensors and validated JSON (no pickle); a damaged file raises :class:`TrainingCheckpointError`
naming it, and a resume takes the newest checkpoint that passes :func:`check_checkpoint`, saying
which newer ones it skipped and why (:func:`newest_intact`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from tttgraph.config import atomic_path, write_atomic
from tttgraph.errors import TTTGraphError
from tttgraph.finetune.distributed import DistContext, local
from tttgraph.layers import LAYER_SEMANTICS, semantics_mismatch
from tttgraph.safe_read import check_fields, check_safetensors, damaged, load_safetensors, open_safetensors, read_json

FORMAT = "tttgraph-train-checkpoint"
VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class TrainingCheckpointError(TTTGraphError):
    """A training checkpoint is missing, incomplete or does not fit this run."""


def _rank_file(kind: str, rank: int) -> str:
    return f"{kind}-rank{rank:05d}.safetensors"


def _fix(directory: Path) -> str:
    """What to do about a damaged file of checkpoint ``directory``."""
    return (f"delete {directory} and resume (--resume) from the previous checkpoint, or start the run again "
            "without --resume")


_WHAT = "training checkpoint file"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, dir), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "trainer.json").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = local(value).detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(root: Path, step: int, *, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler, ctx: DistContext, extra: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` (every process calls this); returns its directory."""
    from safetensors.torch import save_file

    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    if ctx.main:
        for stale in root.glob(".step-*"):  # left by a run killed while writing or deleting
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()

    def write(kind: str, tensors: dict[str, torch.Tensor], **metadata: str) -> None:
        # Through atomic_path: the file gets open()'s mode (save_file's is 0o600) and is on disk
        # before the directory's rename publishes it.
        with atomic_path(tmp / _rank_file(kind, ctx.rank)) as path:
            save_file(tensors, str(path), metadata={"format": FORMAT, **metadata})

    write("model", {name: local(p).detach().cpu().contiguous() for name, p in params.items()})
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    write("optim", opt_tensors, optimizer=json.dumps(opt_meta))
    rng = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    write("rng", rng)
    ctx.barrier()
    if ctx.main:
        state = {"format": FORMAT, "version": VERSION, "layer_semantics": LAYER_SEMANTICS, "step": step,
                 "world_size": ctx.world,
                 "scheduler": scheduler.state_dict(), **extra}
        write_atomic(tmp / "trainer.json", json.dumps(state, indent=1) + "\n")
        doomed = root / f".step-{step:06d}.replaced"
        if final.exists():
            # Moved aside, not deleted in place: a deletion cut short must not leave a directory that
            # looks complete (the ".step-*" name is cleared by the next save).
            final.rename(doomed)
        tmp.rename(final)
        shutil.rmtree(doomed, ignore_errors=True)
        found = list_checkpoints(root)
        # Past ``keep`` older ones, and any newer one: a resume skipped those as damaged, and pruning by
        # count alone could delete every intact checkpoint and keep only them.
        doomed_dirs = [c for c in found if c[0] > step] + [c for c in found if c[0] <= step][:-keep]
        for old_step, old in doomed_dirs:
            # Renamed first: a deletion cut short must not leave a directory that looks complete.
            doomed = root / f".step-{old_step:06d}.old"
            old.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    ctx.barrier()
    return final


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The validated ``trainer.json`` of checkpoint ``directory``."""
    path = directory / "trainer.json"
    state = read_json(path, _WHAT, _fix(directory), error=TrainingCheckpointError)
    if state.get("format") != FORMAT:
        raise damaged(path, f"is not a tttgraph training checkpoint (format {state.get('format')!r}, not "
                            f"{FORMAT!r})", _WHAT, _fix(directory), TrainingCheckpointError)
    optional = {k: int for k in ("version", "layer_semantics") if k in state}  # absent in older checkpoints
    check_fields(state, {"step": int, "world_size": int, "scheduler": dict, **optional}, path, _WHAT,
                 _fix(directory), error=TrainingCheckpointError)
    if state.get("version", 0) > VERSION:
        raise TrainingCheckpointError(f"{path} has version {state['version']}; this tttgraph reads {VERSION}")
    reason = semantics_mismatch(state.get("layer_semantics", 1), str(path))  # older checkpoints are 1
    if reason:
        raise TrainingCheckpointError(reason)
    return state


def _optimizer_meta(raw: str, path: Path, directory: Path) -> dict[str, Any]:
    """The optimizer file's JSON metadata (param groups, per-parameter scalars), validated."""
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise damaged(path, f"has damaged optimizer metadata (not JSON: {err})", _WHAT, _fix(directory),
                      TrainingCheckpointError) from None
    if not isinstance(meta, dict):
        raise damaged(path, "has optimizer metadata that is not a JSON object", _WHAT, _fix(directory),
                      TrainingCheckpointError)
    check_fields(meta, {"param_groups": list, "scalars": dict}, path, _WHAT, _fix(directory),
                 error=TrainingCheckpointError)
    bad = [k for k in meta["scalars"] if not re.fullmatch(r"\d+\..+", k)]
    if bad:
        raise damaged(path, f"has optimizer scalars {bad[:3]} not of the form <index>.<name>", _WHAT, _fix(directory),
                      TrainingCheckpointError)
    return meta


def _state_key(key: str, path: Path, directory: Path) -> tuple[int, str]:
    """``state.<param index>.<name>`` of an optimizer tensor -> (index, name)."""
    parts = key.split(".", 2)
    if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
        raise damaged(path, f"holds the tensor {key!r}, not of the form state.<index>.<name>", _WHAT, _fix(directory),
                      TrainingCheckpointError)
    return int(parts[1]), parts[2]


def check_checkpoint(directory: Path) -> dict[str, Any]:
    """Validate checkpoint ``directory`` without loading a tensor: its ``trainer.json`` and the headers
    of every rank's model, optimizer and RNG files (readable, the expected tensors and metadata, the
    same parameter names on every rank). Returns trainer.json; raises :class:`TrainingCheckpointError`."""
    state = read_trainer_state(directory)
    fix = _fix(directory)
    if state["world_size"] < 1:
        raise damaged(directory / "trainer.json", f"has world_size {state['world_size']}", _WHAT, fix,
                      TrainingCheckpointError)
    names = None
    for rank in range(state["world_size"]):
        model_file = directory / _rank_file("model", rank)
        keys, _ = check_safetensors(model_file, _WHAT, fix, error=TrainingCheckpointError)
        if names is not None and keys != names:
            raise damaged(model_file, f"holds other parameters than {_rank_file('model', 0)}", _WHAT, fix,
                          TrainingCheckpointError)
        names = keys
        opt_file = directory / _rank_file("optim", rank)
        keys, meta = check_safetensors(opt_file, _WHAT, fix, metadata=("optimizer",), error=TrainingCheckpointError)
        _optimizer_meta(meta["optimizer"], opt_file, directory)
        for key in keys:
            _state_key(key, opt_file, directory)
        check_safetensors(directory / _rank_file("rng", rank), _WHAT, fix, keys=("cpu",), error=TrainingCheckpointError)
    return state


def newest_intact(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root`` that passes :func:`check_checkpoint` (None if none does)
    and one line per newer checkpoint skipped, saying why."""
    skipped = []
    for step, directory in reversed(list_checkpoints(root)):
        try:
            check_checkpoint(directory)
        except TrainingCheckpointError as err:
            skipped.append(f"skipping damaged checkpoint {directory.name} (step {step}): {err}")
            continue
        return directory, skipped
    return None, skipped


def load_checkpoint(directory: Path, *, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler, ctx: DistContext) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into this run; returns trainer.json."""
    state = read_trainer_state(directory)
    fix = _fix(directory)
    if state["world_size"] != ctx.world:
        raise TrainingCheckpointError(
            f"{directory} was written by {state['world_size']} process(es), this run has {ctx.world}; resume with "
            f"the same number of processes (torchrun --nproc_per_node {state['world_size']})"
        )
    model_file = directory / _rank_file("model", ctx.rank)
    saved, _ = load_safetensors(model_file, _WHAT, fix, error=TrainingCheckpointError)
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved))[:3], sorted(set(saved) - set(params))[:3]
        raise TrainingCheckpointError(
            f"{model_file} does not fit this run's trainable parameters (missing {missing}, unexpected {extra}); "
            "resume with the same config"
        )
    with torch.no_grad():
        for name, p in params.items():
            target = local(p)
            if target.shape != saved[name].shape:
                raise TrainingCheckpointError(f"{model_file}: {name} is {tuple(saved[name].shape)}, the model has "
                                              f"{tuple(target.shape)}")
            target.copy_(saved[name])
    opt_file = directory / _rank_file("optim", ctx.rank)
    with open_safetensors(opt_file, _WHAT, fix, metadata=("optimizer",), error=TrainingCheckpointError) as f:
        meta = _optimizer_meta(f.metadata()["optimizer"], opt_file, directory)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = _state_key(key, opt_file, directory)
        if idx >= len(ordered):
            raise TrainingCheckpointError(f"{opt_file} holds state of parameter {idx}, this run's optimizer has "
                                          f"{len(ordered)}; resume with the same config")
        p = ordered[idx]
        if value.dim() and hasattr(p, "device_mesh"):
            from torch.distributed.tensor import DTensor

            value = DTensor.from_local(value.to(local(p).device), p.device_mesh, p.placements, run_check=False,
                                       shape=p.shape, stride=p.stride())
        opt_state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError) as err:
        raise TrainingCheckpointError(
            f"{opt_file} does not fit this run's optimizer ({err}); resume with the same config") from None
    scheduler.load_state_dict(state["scheduler"])
    rng, _ = load_safetensors(directory / _rank_file("rng", ctx.rank), _WHAT, fix, keys=("cpu",),
                              error=TrainingCheckpointError)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], ctx.device)
    return state
