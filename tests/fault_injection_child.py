"""Writer under SIGKILL: ``python -m tests.fault_injection_child KIND ROOT TRIALS SEED`` (used by test_fault_injection).

Sets up one writer once (imports, a tiny transformed model, ...), measures how long one write takes,
then for each trial forks a process that writes the next version and SIGKILLs it after a random
fraction (0 to 1.3) of that time, counted from the moment it starts writing. After each kill the files
on disk must be either the previous version or the new one, each file intact and read back through
tttgraph's own readers. One JSON line per trial on stdout; a failed check prints {"error": ...} and
exits 1. KIND: "save" (tttgraph.save), "checkpoint" (a fine-tuning checkpoint), "resume" (the
generation resume file).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch


def tensors_of(version: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The values written as ``version``: seeded random tensors of ``shapes``."""
    g = torch.Generator().manual_seed(version)
    return {name: torch.randn(shape, generator=g) for name, shape in sorted(shapes.items())}


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Writers: setup(root) -> (write(version), check(old, new) -> the version on disk)
# ---------------------------------------------------------------------------------------------


def setup_save(root: Path):
    """tttgraph.save of a tiny CogVideoX whose TTT parameters hold version-seeded values."""
    from tttgraph import save
    from tttgraph.checkpoint import RECIPE_FILE, WEIGHTS_FILE, read_recipe
    from tttgraph.config import TTTConfig
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.rewrite import transform
    from tttgraph.safe_read import load_safetensors, read_json

    model = build_tiny("cogvideox", seed=0)
    cfg = TTTConfig(mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    tm = transform(copy.deepcopy(model), cfg, example_inputs(model, 5, text_tokens=8), progress=False)
    params = {n: p for n, p in tm.named_parameters() if ".gated_ttt." in n}
    shapes = {n: tuple(p.shape) for n, p in params.items()}

    def write(version: int) -> None:
        with torch.no_grad():
            for name, value in tensors_of(version, shapes).items():
                params[name].copy_(value)
        save(tm, root)

    def check(old: int, new: int) -> int:
        recipe = read_recipe(root)  # the recipe a restore uses (the weights' own after a torn save)
        weights, _ = load_safetensors(root / WEIGHTS_FILE, "weights", "")
        assert set(weights) == set(recipe["new_tensors"]) | set(recipe["changed_tensors"])
        for name, t in weights.items():
            assert sha256(t) == recipe["checksums"][name], f"{name} fails the checksum of the recipe read"
        def version_of(file: str, sums: dict[str, str]) -> int:
            """Which version ``file`` holds: its own last one or the new one."""
            allowed = (last.get(file, old), new)
            found = [v for v in allowed if sums == {n: sha256(t) for n, t in tensors_of(v, shapes).items()}]
            assert found, f"{file} is neither its last version ({allowed[0]}) nor the new one ({new})"
            last[file] = found[-1]
            return found[-1]

        in_weights = version_of(WEIGHTS_FILE, {n: sha256(weights[n]) for n in shapes})
        own = read_json(root / RECIPE_FILE, "recipe", "")  # the recipe file on its own: intact, last or new
        in_recipe = version_of(RECIPE_FILE, {n: own["checksums"][n] for n in shapes})
        # Only a kill between the two renames (weights first) leaves the recipe file older; the recipe
        # read (the weights' own then) always matches the weights, checked above.
        assert in_recipe <= in_weights, f"recipe file of version {in_recipe}, weights of {in_weights}"
        return in_weights

    last: dict[str, int] = {}  # the version each file held at the last check
    return write, check


def setup_checkpoint(root: Path):
    """A fine-tuning checkpoint (4 MB of weights, AdamW state, RNG) at step ``version``, keep=2."""
    from tttgraph.finetune.checkpointing import check_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
    from tttgraph.finetune.distributed import DistContext

    shapes = {"block.weight": (512, 1024), "block.bias": (1024,)}

    def training():
        params = {n: torch.nn.Parameter(torch.zeros(s)) for n, s in shapes.items()}
        opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
        return params, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    params, opt, sched = training()
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.step()

    def write(version: int) -> None:
        with torch.no_grad():
            for name, value in tensors_of(version, shapes).items():
                params[name].copy_(value)
        save_checkpoint(root, version, params=params, optimizer=opt, scheduler=sched, ctx=DistContext(),
                        extra={"tag": version}, keep=2)

    def check(old: int, new: int) -> int:
        found = list_checkpoints(root)
        assert found, "no checkpoint left"
        for step, directory in found:  # every checkpoint that looks complete is
            check_checkpoint(directory)
            fresh, fresh_opt, fresh_sched = training()
            state = load_checkpoint(directory, params=fresh, optimizer=fresh_opt, scheduler=fresh_sched,
                                    ctx=DistContext())
            assert state["tag"] == step
            assert digest({n: p.detach() for n, p in fresh.items()}) == digest(tensors_of(step, shapes))
        newest = found[-1][0]
        assert newest in (old, new), f"newest checkpoint {newest}, expected {old} or {new}"
        return newest

    return write, check


def setup_resume(root: Path):
    """The generation resume file: 4.5 MB of latents and the previous prediction at step ``version``."""
    from tttgraph.generate.sampler import LatentCheckpoint, SamplerSettings, job_fingerprint

    shape = (1, 13, 16, 60, 90)
    job = job_fingerprint(SamplerSettings(steps=1000), shape)
    shapes = {"latents": shape, "old_pred": shape}

    def write(version: int) -> None:
        values = tensors_of(version, shapes)
        LatentCheckpoint(root / "v.resume.safetensors", job).save(version, values["latents"], values["old_pred"])

    def check(old: int, new: int) -> int:
        step, latents, old_pred = LatentCheckpoint(root / "v.resume.safetensors", job).load()
        assert step in (old, new), f"step {step}, expected {old} or {new}"
        assert digest({"latents": latents, "old_pred": old_pred}) == digest(tensors_of(step, shapes))
        return step

    return write, check


SETUPS = {"save": setup_save, "checkpoint": setup_checkpoint, "resume": setup_resume}


def leftovers(root: Path) -> list[str]:
    """Hidden temporaries (".name.XXXX.tmp", ".step-*") a killed write left."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def forked_write(write, version: int, kill_after: float | None) -> tuple[bool, float]:
    """Fork, write ``version`` in the child and SIGKILL it ``kill_after`` s after it starts writing
    (None: let it finish). (Whether it finished, seconds from its start to its end.)"""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        os.close(read_end)
        try:
            os.write(write_end, b"go")
            write(version)
        finally:
            os._exit(0)
    os.close(write_end)
    os.read(read_end, 2)  # the writer has started
    start = time.perf_counter()
    os.close(read_end)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status), time.perf_counter() - start


def main(kind: str, root: str, trials: int, seed: int) -> int:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write, check = SETUPS[kind](root)
    write(0)
    check(0, 0)
    took = []
    for version in (1, 2, 3):  # the time a forked writer takes is what the kill points spread over
        took.append(forked_write(write, version, None)[1])
        check(version - 1, version)
    write_s = sorted(took)[1]
    rng = random.Random(seed)
    current = 3
    for trial in range(trials):
        version = current + 1
        delay = rng.uniform(0, 1.3) * write_s
        finished, _ = forked_write(write, version, delay)
        left = leftovers(root)
        try:
            current = check(current, version)
        except Exception as err:  # report the damage and the kill point, then fail
            print(json.dumps({"kind": kind, "trial": trial, "delay_s": delay, "write_s": write_s,
                              "error": f"{type(err).__name__}: {err}", "leftovers": left}), flush=True)
            return 1
        print(json.dumps({"kind": kind, "trial": trial, "delay_s": delay, "write_s": write_s,
                          "outcome": "new" if current == version else "old", "finished": finished,
                          "leftovers": left}), flush=True)
    # The run resumes: one more write over whatever the kills left, read back, no temporaries left.
    write(current + 1)
    final = check(current, current + 1)
    print(json.dumps({"kind": kind, "final": final, "leftovers": leftovers(root)}), flush=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # fork-safe: no OpenMP thread pool in the process that forks the writers
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
