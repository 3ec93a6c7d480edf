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
safetensors and validated JSON (no pickle).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from tttgraph.config import write_atomic
from tttgraph.errors import TTTGraphError
from tttgraph.finetune.distributed import DistContext, local
from tttgraph.layers import LAYER_SEMANTICS, semantics_mismatch

FORMAT = "tttgraph-train-checkpoint"
VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(TTTGraphError):
    """A training checkpoint is missing, incomplete or does not fit this run."""


def _rank_file(kind: str, rank: int) -> str:
    return f"{kind}-rank{rank:05d}.safetensors"


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
    model_tensors = {name: local(p).detach().cpu().contiguous() for name, p in params.items()}
    save_file(model_tensors, str(tmp / _rank_file("model", ctx.rank)), metadata={"format": FORMAT})
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / _rank_file("optim", ctx.rank)),
              metadata={"format": FORMAT, "optimizer": json.dumps(opt_meta)})
    rng = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    save_file(rng, str(tmp / _rank_file("rng", ctx.rank)), metadata={"format": FORMAT})
    ctx.barrier()
    if ctx.main:
        state = {"format": FORMAT, "version": VERSION, "layer_semantics": LAYER_SEMANTICS, "step": step,
                 "world_size": ctx.world,
                 "scheduler": scheduler.state_dict(), **extra}
        write_atomic(tmp / "trainer.json", json.dumps(state, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old_step, old in list_checkpoints(root)[:-keep]:
            # Renamed first: a deletion cut short must not leave a directory that looks complete.
            doomed = root / f".step-{old_step:06d}.old"
            old.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    ctx.barrier()
    return final


def read_trainer_state(directory: Path) -> dict[str, Any]:
    path = directory / "trainer.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is unreadable ({err}); delete {directory} to resume from an older one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("world_size"), int) or not isinstance(state.get("scheduler"), dict):
        raise CheckpointError(f"{path} is not a tttgraph training checkpoint")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has version {state['version']}; this tttgraph reads {VERSION}")
    reason = semantics_mismatch(state.get("layer_semantics", 1), str(path))  # older checkpoints are 1
    if reason:
        raise CheckpointError(reason)
    return state


def load_checkpoint(directory: Path, *, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler, ctx: DistContext) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into this run; returns trainer.json."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = read_trainer_state(directory)
    if state["world_size"] != ctx.world:
        raise CheckpointError(
            f"{directory} was written by {state['world_size']} process(es), this run has {ctx.world}; resume with "
            f"the same number of processes (torchrun --nproc_per_node {state['world_size']})"
        )
    model_file = directory / _rank_file("model", ctx.rank)
    saved = load_file(str(model_file))
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved))[:3], sorted(set(saved) - set(params))[:3]
        raise CheckpointError(
            f"{model_file} does not fit this run's trainable parameters (missing {missing}, unexpected {extra}); "
            "resume with the same config"
        )
    with torch.no_grad():
        for name, p in params.items():
            target = local(p)
            if target.shape != saved[name].shape:
                raise CheckpointError(f"{model_file}: {name} is {tuple(saved[name].shape)}, the model has "
                                      f"{tuple(target.shape)}")
            target.copy_(saved[name])
    opt_file = directory / _rank_file("optim", ctx.rank)
    with safe_open(str(opt_file), framework="pt") as f:
        meta = json.loads(f.metadata()["optimizer"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        p = ordered[int(idx)]
        if value.dim() and hasattr(p, "device_mesh"):
            from torch.distributed.tensor import DTensor

            value = DTensor.from_local(value.to(local(p).device), p.device_mesh, p.placements, run_check=False,
                                       shape=p.shape, stride=p.stride())
        opt_state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(directory / _rank_file("rng", ctx.rank)))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], ctx.device)
    return state
