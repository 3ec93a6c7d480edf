"""Does a world model carry a character's colour across segments? One forward pass per story (issue #21).

    python benchmarks/world_memory.py --ttt runs/world_9s/ttt --seconds 9 --stories 32
    python benchmarks/world_memory.py --ttt none --seconds 9        # fresh TTT layers (gates 0.1)
    python benchmarks/world_memory.py --ttt runs/world_3s/ttt --checkpoint runs/world_9s/checkpoints/step-000100

``--checkpoint`` judges a run still training: its trained weights (a single-process training
checkpoint) over the stage's starting point ``--ttt``.

A video's colours are settled in the first denoising steps, from pure noise, where the frames hold
nothing of the answer and only the text and what the model carries across segments can decide.
This probe asks the model exactly that: for each held-out story it predicts the clean video from
pure noise at ``--timestep`` (999 by default: no signal at all under CogVideoX's zero-terminal-SNR
schedule), conditional branch only, and reads, inside each character's ground-truth silhouette, the
palette colour nearest to the mean predicted colour. Two accuracies come out:

- **stated**: segments where the paragraph writes the character's attributes (the base model's job);
- **carried**: later segments, where the paragraph names the character only; the colour can come
  from nothing but an earlier segment. Chance is 1 in 4 colours; a segment-local model sits there.

It takes seconds on the CPU (no sampling loop), so a fine-tuning run can be judged long before the
full ``world_results.py`` generation, and the numbers move with training where the sampled
videos' scores are too coarse to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def colour_reads(video: np.ndarray, story, first_frame: int = 0) -> list[tuple[bool, bool]]:
    """(carried, correct) per (character, segment) of ``story`` read from ``video`` [T, H, W, 3].

    Frames ``i < 48 * segments`` are read; the colour of a character in a segment is the palette
    colour nearest to the mean of its silhouette's pixels over the segment's frames."""
    from tttgraph.data.synthetic import FRAMES_PER_SEGMENT, shape_mask
    from tttgraph.data.world import COLOURS, placements

    names, palette = list(COLOURS), np.array(list(COLOURS.values()), np.float32)
    height, width = video.shape[1:3]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    reads = []
    for s in range(len(story.segments)):
        sums: dict[str, list] = {}
        for k in range(FRAMES_PER_SEGMENT):
            frame = video[s * FRAMES_PER_SEGMENT + k].astype(np.float32)
            for p in placements(story, s, k / FRAMES_PER_SEGMENT, height, width):
                mask = shape_mask(p.shape, p.cy, p.cx, p.radius, yy, xx)
                acc = sums.setdefault(p.name, [np.zeros(3, np.float32), 0])
                acc[0] += frame[mask].sum(0)
                acc[1] += int(mask.sum())
        for name, (total, count) in sums.items():
            mean = total / max(count, 1)
            seen = names[int(np.argmin(((palette - mean) ** 2).sum(1)))]
            reads.append((s != story.first_segment(name), seen == story.character(name).colour))
    return reads


def world_models(stories: list, world: str, ttt: str, device: str):
    """(plan, loaded models, storyboards) of the world model + ``ttt`` for ``stories`` (all of one length)."""
    from tttgraph.generate.pipeline import GenerateOptions, load_models, plan
    from tttgraph.generate.storyboard import parse_storyboard

    boards = [parse_storyboard(s.to_json(), "json", f"world story {s.seed}") for s in stories]
    options = GenerateOptions(storyboard=boards[0], world=world, ttt=ttt, seconds=boards[0].seconds, steps=1,
                              guidance_scale=0.0, device=device, progress=False, checkpoint_every=0)
    job = plan(options)
    return job, load_models(job, options=options, out=lambda *a: None), boards


def _load_checkpoint(model: torch.nn.Module, directory: Path) -> None:
    """Copy a single-process training checkpoint's trained tensors into ``model``."""
    from tttgraph.safe_read import load_safetensors

    state, _ = load_safetensors(directory / "model-rank00000.safetensors", "training checkpoint",
                                "pass a step directory (or the checkpoints directory) of a single-process run")
    own = dict(model.named_parameters())
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise SystemExit(f"--checkpoint {directory}: {len(unknown)} tensors fit no parameter of the model "
                         f"(e.g. {unknown[:2]}); pass the stage's init_from as --ttt")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def _checkpoints(path: str | None) -> list[Path | None]:
    """[None] (the --ttt save as it is), one step directory, or every step directory under a checkpoints root."""
    if path is None:
        return [None]
    root = Path(path)
    if (root / "model-rank00000.safetensors").is_file():
        return [root]
    from tttgraph.finetune.checkpointing import list_checkpoints

    steps = [directory for _, directory in list_checkpoints(root)]
    if not steps:
        raise SystemExit(f"--checkpoint {path}: neither a step directory nor a directory of them (step-000100/ ...)")
    return steps


def run(argv: list[str] | None = None) -> dict | list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="default", help="world base model weights (default: the shipped ones)")
    p.add_argument("--ttt", default="none", help="a stage's tttgraph.save directory ('none': fresh TTT layers)")
    p.add_argument("--seconds", type=int, default=9)
    p.add_argument("--stories", type=int, default=32)
    p.add_argument("--seed", type=int, default=1_000_000, help="first held-out story seed (as world_results.py)")
    p.add_argument("--timestep", type=int, default=999)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", help="a training checkpoint step directory whose weights go over --ttt, or a "
                                        "run's checkpoints directory (one reading per step)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    from diffusers import CogVideoXDPMScheduler

    from tttgraph.data.world import make_story
    from tttgraph.generate.pipeline import _text
    from tttgraph.models.cogvideox_bundle import decode_latents, transformer_inputs

    checkpoints = _checkpoints(args.checkpoint)
    stories = [make_story(args.seed + i, args.seconds // 3, "held_out") for i in range(args.stories)]
    job, models, boards = world_models(stories, args.world, args.ttt, args.device)
    bundle, model = models.bundle, models.model
    alpha = CogVideoXDPMScheduler(**bundle.scheduler_config).alphas_cumprod[args.timestep].item()
    results = []
    for checkpoint in checkpoints:
        if checkpoint is not None:
            _load_checkpoint(model, checkpoint)
        reads = []
        with torch.no_grad():
            for first in range(0, len(stories), args.batch):
                chunk = range(first, min(first + args.batch, len(stories)))
                text = torch.cat([_text(bundle, boards[i], False, job.device, job.dtype) for i in chunk])
                g = torch.Generator().manual_seed(first)
                x = torch.randn((len(chunk), *job.latent_shape[1:]), generator=g).to(job.device, job.dtype)
                t = torch.full((len(chunk),), args.timestep, dtype=torch.long, device=job.device)
                v = model(**transformer_inputs(bundle, x, text, t), return_dict=False)[0]
                x0 = alpha ** 0.5 * x - (1 - alpha) ** 0.5 * v  # v-prediction
                for j, i in enumerate(chunk):
                    video = decode_latents(bundle, x0[j].to(job.dtype), progress=False)
                    reads += colour_reads(video, stories[i])
        carried = [ok for later, ok in reads if later]
        stated = [ok for later, ok in reads if not later]
        result = {"ttt": args.ttt, "checkpoint": None if checkpoint is None else str(checkpoint),
                  "world": args.world, "seconds": args.seconds, "stories": args.stories, "timestep": args.timestep,
                  "stated_colour": float(np.mean(stated)), "stated_pairs": len(stated),
                  "carried_colour": float(np.mean(carried)) if carried else None, "carried_pairs": len(carried),
                  "chance": 0.25}
        print(json.dumps(result), flush=True)
        results.append(result)
    one = args.checkpoint is None or checkpoints == [Path(args.checkpoint)]  # one reading, not a run's curve
    out = results[0] if one else results
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    run()
