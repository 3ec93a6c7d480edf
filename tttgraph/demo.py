"""The README's first command: transform a tiny CogVideoX, train one step, save and restore it.

Runs offline on the CPU in seconds: the model is a diffusers ``CogVideoXTransformer3DModel`` with a
tiny config and random weights. It shows the whole public surface: ``inspect`` (the plan),
``transform`` (segment-local attention + gated bidirectional TTT-MLP after every attention), a
forward and backward pass, ``save`` and ``restore`` onto a fresh base model.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

TEXT_TOKENS_PER_SEGMENT = 4


def run_demo(frames: int = 5, frames_per_segment: int = 2, overlap: int = 1, mini_batch_size: int = 16,
             seed: int = 0, backend: str = "auto", out=print) -> dict:
    """Build, transform, run forward + backward, save, restore; print a report and return its numbers."""
    from tttgraph.checkpoint import restore, save
    from tttgraph.config import TTTConfig
    from tttgraph.layout import SequenceLayout
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.rewrite import plan_of, transform

    model = build_tiny("cogvideox", seed=seed)
    segments = SequenceLayout(0, 1, frames_per_segment, overlap).num_segments(frames)
    inputs = example_inputs(model, frames, text_tokens=segments * TEXT_TOKENS_PER_SEGMENT, seed=seed)
    cfg = TTTConfig(segment_latent_frames=frames_per_segment, segment_overlap_frames=overlap,
                    text_tokens_per_segment=TEXT_TOKENS_PER_SEGMENT, mini_batch_size=mini_batch_size,
                    backend=backend)
    base_params = sum(p.numel() for p in model.parameters())

    out("tttgraph demo: tiny CogVideoX (random weights) -> segment-local attention + gated bidirectional TTT-MLP")
    start = time.perf_counter()
    tm = transform(model, cfg, inputs, progress=False).train()
    transform_s = time.perf_counter() - start
    plan = plan_of(tm)
    out(str(plan))
    new = {n: p for n, p in tm.named_parameters() if ".gated_ttt." in n}
    out(f"  new modules: {', '.join(plan.ttt_modules)}")
    out(f"  transform took {transform_s:.1f} s; parameters: base {base_params:,} + added {plan.added_parameters:,}")

    start = time.perf_counter()
    pred = tm(**inputs, return_dict=False)[0]
    target = torch.randn(pred.shape, generator=torch.Generator().manual_seed(seed + 1))
    loss = torch.nn.functional.mse_loss(pred, target)
    loss.backward()
    step_s = time.perf_counter() - start
    missing = [n for n, p in new.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    if missing:
        raise RuntimeError(f"parameters without a finite gradient: {missing}")
    grad_norm = torch.sqrt(sum(p.grad.square().sum() for p in new.values()))
    out(f"  forward + backward: output {tuple(pred.shape)}, loss {loss.item():.4f}, "
        f"{len(new)}/{len(new)} new tensors got finite gradients (norm {grad_norm.item():.3e}), {step_s * 1e3:.0f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        save(tm, tmp)
        restored = restore(build_tiny("cogvideox", seed=seed), tmp, progress=False)
        with torch.no_grad():
            same = torch.equal(restored(**inputs, return_dict=False)[0], tm(**inputs, return_dict=False)[0])
    out(f"  save -> restore onto a fresh base model: outputs {'identical' if same else 'DIFFER'}")
    if not same:
        raise RuntimeError("restored model differs from the saved one")
    return {"loss": loss.item(), "added_params": plan.added_parameters, "base_params": base_params,
            "ttt_modules": plan.ttt_modules, "restored_identical": same}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tttgraph.command import int_at_least
    from tttgraph.kernels.ttt_mlp.backends import TTTBackend

    parser.add_argument("--frames", type=int_at_least(1), default=5, help="latent frames (default 5)")
    parser.add_argument("--frames-per-segment", type=int_at_least(1), default=2,
                        help="latent frames per segment (default 2)")
    parser.add_argument("--overlap", type=int_at_least(0), default=1,
                        help="overlap frames between segments (default 1)")
    parser.add_argument("--mini-batch-size", type=int_at_least(1), default=16, help="TTT mini-batch (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", choices=[b.value for b in TTTBackend],
                        help="ttt_mlp backend (default auto)")


def main(args: argparse.Namespace) -> int:
    run_demo(args.frames, args.frames_per_segment, args.overlap, args.mini_batch_size, args.seed, args.backend)
    return 0
