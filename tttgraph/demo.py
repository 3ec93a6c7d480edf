"""The README's first command: a tiny CogVideoX with TTT layers, one forward and backward, a report.

Runs offline on the CPU in seconds: the model is a diffusers ``CogVideoXTransformer3DModel`` with a
tiny config and random weights. It shows what tttgraph adds to each block and that the result
trains: the loss, and that every new parameter receives a gradient.
"""

from __future__ import annotations

import argparse
import time

import torch

from tttgraph.eager import add_ttt_to_cogvideox

TEXT_TOKENS_PER_SEGMENT = 8
LATENT_SIZE = (8, 8)


def run_demo(frames: int = 5, frames_per_segment: int = 2, overlap: int = 1, mini_batch_size: int = 16,
             seed: int = 0, backend: str = "auto", out=print) -> dict:
    """Build, insert TTT, run forward + backward; print a report and return its numbers."""
    from tttgraph.layout import SequenceLayout
    from tttgraph.models import build_tiny, example_inputs

    model = build_tiny("cogvideox", seed=seed)
    base_params = sum(p.numel() for p in model.parameters())
    layout = SequenceLayout(TEXT_TOKENS_PER_SEGMENT, 16, frames_per_segment, overlap)
    segments = layout.num_segments(frames)
    inputs = example_inputs(model, frames, text_tokens=segments * TEXT_TOKENS_PER_SEGMENT, seed=seed)

    wrapped = add_ttt_to_cogvideox(
        model, latent_size=LATENT_SIZE, text_tokens_per_segment=TEXT_TOKENS_PER_SEGMENT,
        frames_per_segment=frames_per_segment, overlap_frames=overlap, mini_batch_size=mini_batch_size,
        backend=backend,
    )  # fmt: skip
    new = {n: p for n, p in model.named_parameters() if ".ttt." in n}
    added = sum(p.numel() for p in new.values())

    out("tttgraph demo: tiny CogVideoX (random weights) + gated bidirectional TTT-MLP")
    out(f"  video: {frames} latent frames x {layout.video_tokens_per_frame} tokens, "
        f"{segments} segments of {frames_per_segment} (+{overlap} overlap) frames, "
        f"{TEXT_TOKENS_PER_SEGMENT} text tokens per segment")
    out(f"  sequence: {layout.total_tokens(frames)} tokens, TTT mini-batch {mini_batch_size}")
    out(f"  TTT layers inserted after: {', '.join(wrapped)}")
    out(f"  parameters: base {base_params:,} + added {added:,} ({len(new)} tensors, "
        f"{added / base_params:.1%} of the base)")

    model.train()
    start = time.perf_counter()
    pred = model(**inputs, return_dict=False)[0]
    target = torch.randn(pred.shape, generator=torch.Generator().manual_seed(seed + 1))
    loss = torch.nn.functional.mse_loss(pred, target)
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    loss.backward()
    backward_s = time.perf_counter() - start
    missing = [n for n, p in new.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    grad_norm = torch.sqrt(sum(p.grad.float().square().sum() for p in new.values() if p.grad is not None))

    out(f"  forward: output {tuple(pred.shape)}, loss {loss.item():.4f} ({forward_s * 1e3:.0f} ms)")
    out(f"  backward: {len(new) - len(missing)}/{len(new)} new tensors got finite gradients, "
        f"grad norm {grad_norm.item():.3e} ({backward_s * 1e3:.0f} ms)")
    if missing:
        raise RuntimeError(f"parameters without a finite gradient: {missing}")
    return {"loss": loss.item(), "added_params": added, "base_params": base_params, "wrapped": wrapped}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=5, help="latent frames (default 5)")
    parser.add_argument("--frames-per-segment", type=int, default=2, help="latent frames per segment (default 2)")
    parser.add_argument("--overlap", type=int, default=1, help="overlap frames between segments (default 1)")
    parser.add_argument("--mini-batch-size", type=int, default=16, help="TTT mini-batch (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", help="ttt_mlp backend (default auto)")


def main(args: argparse.Namespace) -> int:
    run_demo(args.frames, args.frames_per_segment, args.overlap, args.mini_batch_size, args.seed, args.backend)
    return 0
