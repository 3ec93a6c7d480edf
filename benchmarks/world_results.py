"""Generate held-out world stories with a fine-tuned world model and score them (issue #21, part 5).

    python benchmarks/world_results.py --world runs/world_base/weights --ttt runs/world_63s/ttt \\
        --seconds 63 --stories 100 --out runs/results/ttt_63s
    python benchmarks/world_results.py --world ... --ttt runs/world_baseline_63s/ttt --seconds 63 ...

The models are loaded once and every story is generated with them (the stories of one length share
the latent shape). Each story is written as ``story_XXXXX.mp4`` + ``story_XXXXX.story.json`` under
``--out``, so ``tttgraph evaluate OUT`` rescores them; the summary (detection, first-appearance
accuracy, cross-segment consistency, with the ground truth's scores and chance) goes to
``OUT/summary.json`` and is printed. Held-out stories use name/attribute pairings no training story
has (``tttgraph.data.world.is_held_out``); story i of a length is ``make_story(seed + i, S, "held_out")``.
A rerun skips stories whose video exists (resume).
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
    p.add_argument("--world", required=True, help="world base model weights (train-world's OUT/weights)")
    p.add_argument("--ttt", default="none", help="the stage's tttgraph.save directory ('none': fresh TTT layers)")
    p.add_argument("--seconds", type=int, required=True, help="story length, a multiple of 3 (18 or 63)")
    p.add_argument("--stories", type=int, default=100)
    p.add_argument("--seed", type=int, default=1_000_000, help="first held-out story seed")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=6.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from tttgraph.config import write_atomic
    from tttgraph.data.evaluate import STORY_SUFFIX, evaluate
    from tttgraph.data.world import make_story
    from tttgraph.generate.pipeline import GenerateOptions, generate, load_models, plan

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segments = args.seconds // 3
    pairs, models, start = [], None, time.perf_counter()
    for i in range(args.stories):
        stem = out / f"story_{i:05d}"
        story_path, video_path = stem.with_name(stem.name + STORY_SUFFIX), stem.with_suffix(".mp4")
        pairs.append((video_path, story_path))
        if video_path.is_file() and story_path.is_file():
            continue
        write_atomic(story_path, make_story(args.seed + i, segments, "held_out").to_json())
        options = GenerateOptions(storyboard=story_path, world=args.world, ttt=args.ttt, steps=args.steps,
                                  guidance_scale=args.guidance_scale, seed=i, out=video_path, contact_sheet="",
                                  checkpoint_every=0, device=args.device, backend=args.backend, progress=False)
        if models is None:
            models = load_models(plan(options), options=options, out=lambda *a: None)
        generate(options, models=models, out=lambda *a: None)
    seconds = time.perf_counter() - start
    _, summary = evaluate(pairs)
    summary.update(seconds=args.seconds, generation_seconds=round(seconds, 1), ttt=args.ttt, world=args.world,
                   steps=args.steps, device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    run()
