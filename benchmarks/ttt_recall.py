"""The TTT layer alone: does it learn to recall a one-shot association, and how fast when that is a small share of
the loss? (issue #21)

    python benchmarks/ttt_recall.py distractors --base-lr 0.1 1.0 --distractors 0 4 20
    python benchmarks/ttt_recall.py dilution --shares 1 0.1 0.01 0.003 0.001

A sequence of mini-batches of noise tokens; one token of the first holds key + value (one of 8 keys,
one of 4 values), the first token of the last holds the key alone, and a linear read-out of the
layer's output there is trained (with the layer and an input map; Adam 1e-3, batch 16) to name the
value: the inner model's weights are the only path from the one to the other.

- ``distractors``: the world's sizes (width 128, 4 heads of 32, mini-batches of 64), 300 steps, recall on
  512 fresh samples against the number of noise mini-batches between (a segment's video is ~20).
- ``dilution``: small sizes (width 64, 2 heads, mini-batches of 16, 3 noise mini-batches) where the
  recall is a ``share`` of the loss and the rest is a per-token regression onto a noisy target (as a
  diffusion loss whose memory-dependent part is small); steps until 90% recall on 256 fresh samples
  (checked every 50, at most 3,000). A world stage's share is ~0.1-1% (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tttgraph.layers import TTTMLP  # noqa: E402


class RecallTask:
    """The sequences, the layer and the read-out of one run."""

    def __init__(self, width: int, heads: int, mini_batch: int, distractors: int, base_lr: float = 0.1,
                 seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.keys, self.values = torch.randn(8, width, generator=g), torch.randn(4, width, generator=g)
        torch.manual_seed(seed)
        self.ttt = TTTMLP(width, heads, mini_batch_size=mini_batch, base_lr=base_lr, backend="reference")
        self.embed, self.read, self.regress = nn.Linear(width, width), nn.Linear(width, 4), nn.Linear(width, width)
        self.length, self.ask = (2 + distractors) * mini_batch, (1 + distractors) * mini_batch
        self.opt = torch.optim.Adam([p for m in (self.ttt, self.embed, self.read, self.regress)
                                     for p in m.parameters()], lr=1e-3)

    def sample(self, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = torch.randint(8, (count,), generator=gen), torch.randint(4, (count,), generator=gen)
        x = torch.randn(count, self.length, self.keys.shape[1], generator=gen) * 0.5
        x[:, 0] = self.keys[key] + self.values[value]
        x[:, self.ask] = self.keys[key]
        return x, value

    def step(self, gen: torch.Generator, share: float = 1.0) -> None:
        x, value = self.sample(16, gen)
        out = self.ttt(self.embed(x))
        loss = share * F.cross_entropy(self.read(out[:, self.ask]), value)
        if share < 1:  # every token regresses a noisy copy of itself: large, irreducible, shares the layer
            loss = loss + (1 - share) * F.mse_loss(self.regress(out), x + torch.randn(x.shape, generator=gen))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def recall(self, x: torch.Tensor, value: torch.Tensor) -> float:
        return (self.read(self.ttt(self.embed(x))[:, self.ask]).argmax(-1) == value).float().mean().item()


def distractors(base_lrs: list[float], counts: list[int], steps: int = 300) -> None:
    for base_lr in base_lrs:
        for count in counts:
            start = time.perf_counter()
            task = RecallTask(128, 4, 64, count, base_lr)
            gen = torch.Generator().manual_seed(1)
            for _ in range(steps):
                task.step(gen)
            acc = task.recall(*task.sample(512, torch.Generator().manual_seed(2)))
            print(f"base_lr {base_lr:g}, {count} noise mini-batches: recall {acc:.1%} after {steps} steps "
                  f"(chance 25%) [{time.perf_counter() - start:.0f} s]", flush=True)


def dilution(shares: list[float], most: int = 3000) -> None:
    for share in shares:
        start = time.perf_counter()
        task = RecallTask(64, 2, 16, 3)
        gen, fresh = torch.Generator().manual_seed(1), task.sample(256, torch.Generator().manual_seed(2))
        reached, acc = None, 0.0
        for step in range(1, most + 1):
            task.step(gen, share)
            if step % 50 == 0:
                acc = task.recall(*fresh)
                if acc > 0.9:
                    reached = step
                    break
        print(f"recall {share:g} of the loss: " + (f"90% after {reached} steps" if reached else
                                                    f"{acc:.1%} after {most} steps")
              + f" [{time.perf_counter() - start:.0f} s]", flush=True)


def run(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("distractors", "dilution"))
    p.add_argument("--base-lr", type=float, nargs="+", default=[0.1])
    p.add_argument("--distractors", type=int, nargs="+", default=[0, 4, 20])
    p.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.1, 0.01, 0.003, 0.001])
    args = p.parse_args(argv)
    if args.mode == "distractors":
        distractors(args.base_lr, args.distractors)
    else:
        dilution(args.shares)


if __name__ == "__main__":
    run()
