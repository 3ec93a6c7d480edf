"""Generate held-out world stories with a fine-tuned world model and score them (issue #21, part 5).

    python benchmarks/world_results.py --world runs/world_base/weights --ttt runs/world_63s/ttt \\
        --seconds 63 --stories 100 --out runs/results/ttt_63s
    python benchmarks/world_results.py --world ... --ttt runs/world_baseline_63s/ttt --seconds 63 ...

The models are loaded once and the stories are denoised ``--batch`` at a time with them
(:func:`tttgraph.generate.batch.generate_many`; the stories of one length share the latent shape).
Each story is written as ``story_XXXXX.mp4`` + ``story_XXXXX.story.json`` under ``--out``, so
``tttgraph evaluate OUT`` rescores them; the summary (detection, first-appearance accuracy,
cross-segment consistency, with the ground truth's scores and chance) goes to ``OUT/summary.json``
and is printed. Held-out stories use name/attribute pairings no training story has
(``tttgraph.data.world.is_held_out``); story i of a length is ``make_story(seed + i, S, "held_out")``.
A rerun skips chunks of stories whose videos exist (resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="default",
                   help="world base model weights (train-world's OUT/weights; default: the shipped ones)")
    p.add_argument("--ttt", default="none", help="the stage's tttgraph.save directory ('none': fresh TTT layers)")
    p.add_argument("--seconds", type=int, required=True, help="story length, a multiple of 3 (18 or 63)")
    p.add_argument("--stories", type=int, default=100)
    p.add_argument("--seed", type=int, default=1_000_000, help="first held-out story seed")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=6.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=16 if torch.cuda.is_available() else 1,
                   help="stories denoised together (default 16 on a GPU, 1 on the CPU)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from tttgraph.config import write_atomic
    from tttgraph.data.evaluate import STORY_SUFFIX, evaluate
    from tttgraph.data.world import make_story
    from tttgraph.generate.batch import generate_many
    from tttgraph.generate.pipeline import GenerateOptions, load_models, plan
    from tttgraph.generate.storyboard import load_storyboard
    from tttgraph.generate.video_io import require_mp4_writer, write_mp4

    require_mp4_writer()  # before any model is loaded, not after the first chunk is denoised
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segments = args.seconds // 3
    pairs = []
    for i in range(args.stories):
        stem = out / f"story_{i:05d}"
        pairs.append((stem.with_suffix(".mp4"), stem.with_name(stem.name + STORY_SUFFIX)))
    # Story i is generated with seed i whatever its chunk (generate_many), so a resumed run makes the
    # videos an uninterrupted one makes; a chunk with a missing video is remade whole.
    chunks = [range(first, min(first + args.batch, args.stories)) for first in range(0, args.stories, args.batch)]
    todo = [c for c in chunks if not all(v.is_file() and s.is_file() for v, s in (pairs[i] for i in c))]
    models, start = None, time.perf_counter()
    for n, chunk in enumerate(todo, 1):
        for i in chunk:
            write_atomic(pairs[i][1], make_story(args.seed + i, segments, "held_out").to_json())
        options = GenerateOptions(storyboard=pairs[chunk[0]][1], world=args.world, ttt=args.ttt, steps=args.steps,
                                  guidance_scale=args.guidance_scale, seed=chunk[0], seconds=args.seconds,
                                  checkpoint_every=0, device=args.device, backend=args.backend, progress=False)
        if models is None:
            models = load_models(plan(options), options=options, out=lambda *a: None)
        videos = generate_many(models, [load_storyboard(pairs[i][1]) for i in chunk], options, seeds=list(chunk))
        for i, video in zip(chunk, videos, strict=True):
            write_mp4(video, pairs[i][0])
        print(f"chunk {n}/{len(todo)}: stories {chunk[0]}-{chunk[-1]} generated ({time.perf_counter() - start:.0f} s)",
              flush=True)
    seconds = time.perf_counter() - start
    _, summary = evaluate(pairs)
    summary.update(seconds=args.seconds, generation_seconds=round(seconds, 1), ttt=args.ttt, world=args.world,
                   steps=args.steps, device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    run()
