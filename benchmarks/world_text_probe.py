"""Is a carried character's colour in the last paragraph's tokens, block by block? A linear probe (issue #21).

    python benchmarks/world_text_probe.py --ttt runs/world_9s/ttt --stories 400
    python benchmarks/world_text_probe.py --ttt runs/world_baseline_3s/ttt --stories 400   # control: no TTT

For a model to draw a character that the last paragraph of a 9 s story names without describing, the
colour its first paragraph gave must reach the last segment. Where the TTT layers should put it first
is the last paragraph's own tokens (the name, as a key into what the first paragraph wrote). This
probe runs held-out 9 s stories whose last segment holds such a character through the model (pure
noise, t = 999, as at the first sampling step), takes the text stream's state at the name's token
after every block (and the text encoder's output, ``input``), and fits a linear 4-way colour
classifier on three quarters of the stories; its accuracy on the rest says whether the colour is
there to be read (chance 25%; a segment-local model has no path to it). Seconds per 100 stories on
a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):  # world_memory.world_models is shared
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _carried(story) -> str | None:
    """A character of the last segment whose attributes an earlier paragraph wrote (None if there is none)."""
    return next((a.name for a in story.segments[-1].appearances
                 if story.first_segment(a.name) < len(story.segments) - 1), None)


def _linear_probe(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(train, held-out) accuracy of a 4-way logistic regression fitted on the first three quarters."""
    cut = len(labels) * 3 // 4
    mean, std = features[:cut].mean(0), features[:cut].std(0) + 1e-6
    x = torch.tensor((features - mean) / std, dtype=torch.float32)
    y = torch.tensor(labels)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], 4)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(500):
        loss = torch.nn.functional.cross_entropy(probe(x[:cut]), y[:cut])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = probe(x).argmax(-1) == y
    return right[:cut].float().mean().item(), right[cut:].float().mean().item()


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="default", help="world base model weights (default: the shipped ones)")
    p.add_argument("--ttt", required=True, help="a 9 s-capable stage's tttgraph.save directory")
    p.add_argument("--stories", type=int, default=400)
    p.add_argument("--seed", type=int, default=2_000_000, help="first held-out story seed tried")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    from world_memory import world_models

    from tttgraph.data.world import COLOURS, make_story
    from tttgraph.generate.pipeline import _text
    from tttgraph.models.cogvideox_bundle import transformer_inputs

    stories, carried, seed = [], [], args.seed
    while len(stories) < args.stories:
        story = make_story(seed, 3, "held_out")
        seed += 1
        if (name := _carried(story)) is not None:
            stories.append(story)
            carried.append(name)
    job, models, boards = world_models(stories, args.world, args.ttt, args.device)
    bundle, model = models.bundle, models.model
    tokenizer, chunk = bundle.tokenizer, bundle.text_tokens_per_segment
    states: dict[int, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda _m, _i, out, k=k: states.__setitem__(k, out[1]))
             for k, block in enumerate(model.transformer_blocks)]  # out[1]: the text stream [B, S*L, C]
    features: dict[str, list] = {"input": [], **{f"block {k}": [] for k in range(len(hooks))}}
    try:
        with torch.no_grad():
            for first in range(0, len(stories), 16):
                part = range(first, min(first + 16, len(stories)))
                text = torch.cat([_text(bundle, boards[i], False, job.device, job.dtype) for i in part])
                noise = torch.randn((len(part), *job.latent_shape[1:]), generator=torch.Generator().manual_seed(first))
                t = torch.full((len(part),), 999, dtype=torch.long, device=job.device)
                model(**transformer_inputs(bundle, noise.to(job.device, job.dtype), text, t), return_dict=False)
                for j, i in enumerate(part):
                    ids = tokenizer([stories[i].paragraphs()[-1]])["input_ids"][0]
                    row = 2 * chunk + ids.index(tokenizer.convert_tokens_to_ids(carried[i].lower()))
                    features["input"].append(text[j, row].float().cpu().numpy())
                    for k, state in states.items():
                        features[f"block {k}"].append(state[j, row].float().cpu().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    colours = list(COLOURS)
    labels = np.array([colours.index(s.character(name).colour) for s, name in zip(stories, carried, strict=True)])
    result = {"ttt": args.ttt, "stories": len(stories), "chance": 0.25, "held_out_accuracy": {}, "train_accuracy": {}}
    for where, rows in features.items():
        train, held_out = _linear_probe(np.stack(rows), labels)
        result["train_accuracy"][where], result["held_out_accuracy"][where] = round(train, 3), round(held_out, 3)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run()
