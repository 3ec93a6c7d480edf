"""One rank's share of a context-parallel CogVideoX-5B block at 63 s: time and memory against the plan (issue #25).

Under context parallelism over P ranks (``tttgraph.parallel``), rank 0 of 8 at 63 s holds 3 of the 21
segments (the largest share: 3 x 226 text + 36 x 1,350 video tokens) and receives one overlap frame
from rank 1. It runs the block's token-wise ops and the segment-local attention on those tokens,
and the TTT scans for 48/8 heads over all 346,296 tokens, which is the same work and memory as 48
heads over its own tokens. So one GPU runs what the rank runs as the transformed block of a real
diffusers ``CogVideoXTransformer3DModel`` (full-size config, one block, random weights, fp32
parameters, bf16 autocast as ``tttgraph finetune`` trains) on a 3-segment sequence (37 latent frames
with the halo frame, 3 text chunks): everything but the all-to-all and halo messages.

Measured per forward + backward of that block: median time; peak memory allocated beyond the
parameters and inputs; the bytes autograd saved (unique storages, through saved-tensor hooks).
Printed beside them: the memory plan's per-block figures (``tttgraph.parallel.memory_plan``:
``SAVED_PER_TOKEN`` x width x tokens, and the backward working set), so that the plan is checked
against the GPU (the issue asks for agreement within 15%).

    python benchmarks/bench_context_parallel_block.py                 # CUDA, full size, 63 s, rank 0 of 8
    python benchmarks/bench_context_parallel_block.py --ranks 16      # the share of one rank of 16
    python benchmarks/bench_context_parallel_block.py --tiny          # CPU smoke run at toy sizes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tttgraph  # noqa: E402
from tttgraph.layout import SequenceLayout  # noqa: E402
from tttgraph.parallel.context import plan_shard  # noqa: E402
from tttgraph.parallel.memory_plan import (  # noqa: E402
    BACKWARD_WORKING_PER_TOKEN,
    COGVIDEOX_5B,
    GIB,
    saved_per_token,
)

FULL = dict(config={**COGVIDEOX_5B, "num_layers": 1, "sample_height": 60, "sample_width": 90,
                    "max_text_seq_length": 226, "use_rotary_positional_embeddings": True},
            latent=(60, 90), text=226, segment=12, overlap=1, mini_batch=64)
TINY = dict(config=dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
                        time_embed_dim=16, text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8,
                        sample_frames=9, patch_size=2, max_text_seq_length=8, use_rotary_positional_embeddings=True),
            latent=(8, 8), text=8, segment=2, overlap=1, mini_batch=16)


def build(size: dict, device: torch.device):
    """The transformed one-block model (fp32), captured at one segment."""
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.models.tiny import _cogvideox_inputs

    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(**size["config"]).to(device)
    model._tttgraph_family = "cogvideox"
    frames = size["segment"] + size["overlap"]
    example = _cogvideox_inputs(model, frames, *size["latent"], size["text"], 1, torch.Generator().manual_seed(0))
    example = {k: (v.to(device) if isinstance(v, torch.Tensor) else tuple(t.to(device) for t in v))
               for k, v in example.items()}
    cfg = tttgraph.TTTConfig(segment_latent_frames=size["segment"], segment_overlap_frames=size["overlap"],
                             text_tokens_per_segment=size["text"], mini_batch_size=size["mini_batch"])
    return tttgraph.transform(model, cfg, example, progress=False, verify=False).train()


def rank_share(size: dict, seconds: int, ranks: int) -> tuple[int, int, int]:
    """(segments, latent frames incl. the halo frame, tokens) that rank 0 of ``ranks`` computes on."""
    p = size["config"]["patch_size"]
    tpf = (size["latent"][0] // p) * (size["latent"][1] // p)
    layout = SequenceLayout(size["text"], tpf, size["segment"], size["overlap"])
    shard = plan_shard(layout, 4 * seconds + 1, ranks)
    start, stop = shard.segment_ranges[0]
    segments = stop - start
    frames = shard.frame_ranges[0][1] - shard.frame_ranges[0][0] + (size["overlap"] if ranks > 1 else 0)
    return segments, frames, shard.counts[0]


def block_inputs(model, size: dict, segments: int, frames: int, device: torch.device):
    from tttgraph.models.tiny import _cogvideox_inputs

    cfg = model.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    full = _cogvideox_inputs(model, frames, *size["latent"], size["text"] * segments, 1,
                             torch.Generator().manual_seed(1))
    nv = full["image_rotary_emb"][0].shape[0]
    g = torch.Generator().manual_seed(2)
    video = torch.randn(1, nv, width, generator=g).to(device).requires_grad_()
    text = torch.randn(1, size["text"] * segments, width, generator=g).to(device).requires_grad_()
    temb = torch.randn(1, cfg.time_embed_dim, generator=g).to(device)
    rope = tuple(t.to(device) for t in full["image_rotary_emb"])
    return video, text, temb, rope


class SavedBytes:
    """Bytes of the distinct storages autograd saves while active (saved-tensor hooks)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def step(block, inputs, autocast, count: SavedBytes | None = None):
    video, text, temb, rope = inputs
    ctx = torch.autograd.graph.saved_tensors_hooks(count.pack, lambda t: t) if count else None
    with autocast:
        if ctx is not None:
            with ctx:
                out_v, out_t = block(video, text, temb, rope)
        else:
            out_v, out_t = block(video, text, temb, rope)
    (out_v.float().square().mean() + out_t.float().square().mean()).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (a smoke run)")
    parser.add_argument("--seconds", type=int, default=63)
    parser.add_argument("--ranks", type=int, default=8, help="context-parallel ranks P (rank 0's share is run)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    size = TINY if args.tiny else FULL
    seconds = 6 if args.tiny and args.seconds == 63 else args.seconds
    ranks = 2 if args.tiny and args.ranks == 8 else args.ranks
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    model = build(size, device)
    block = model.transformer_blocks[0]
    segments, frames, tokens = rank_share(size, seconds, ranks)
    inputs = block_inputs(model, size, segments, frames, device)
    run_tokens = inputs[0].shape[1] + inputs[1].shape[1]
    width = model.config.num_attention_heads * model.config.attention_head_dim

    count = SavedBytes()
    step(block, inputs, autocast, count)  # warm-up, counting what autograd saves
    block.zero_grad(set_to_none=True)
    times, peak = [], 0
    for _ in range(args.steps):
        for t in inputs[:2]:
            t.grad = None
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step(block, inputs, autocast)
        if cuda:
            torch.cuda.synchronize()
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        times.append(time.perf_counter() - start)
        block.zero_grad(set_to_none=True)

    plan_saved = saved_per_token() * width * run_tokens
    plan_peak = plan_saved + BACKWARD_WORKING_PER_TOKEN * width * run_tokens
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "seconds": seconds, "ranks": ranks,
        "segments": segments, "frames_with_halo": frames, "rank_tokens": tokens, "tokens_run": run_tokens,
        "width": width, "step_ms": 1e3 * statistics.median(times),
        "saved_gib": count.total / GIB, "plan_saved_gib": plan_saved / GIB,
        "saved_bytes_per_token_per_width": count.total / run_tokens / width,
        "plan_bytes_per_token_per_width": saved_per_token(),
        "peak_gib": peak / GIB if cuda else None, "plan_peak_gib": plan_peak / GIB,
    }
    print(f"rank 0 of {ranks} at {seconds} s: {segments} segments, {frames} latent frames with the halo, "
          f"{run_tokens:,} tokens (its share {tokens:,}), width {width}, on {result['device']}")
    print(f"  forward + backward of one block: {result['step_ms']:.1f} ms (median of {args.steps})")
    print(f"  saved for backward: {result['saved_gib']:.3f} GiB measured, {result['plan_saved_gib']:.3f} GiB planned "
          f"({result['saved_bytes_per_token_per_width']:.1f} vs {saved_per_token():.1f} bytes per token per width)")
    if cuda:
        print(f"  peak beyond parameters and inputs: {result['peak_gib']:.3f} GiB measured, "
              f"{result['plan_peak_gib']:.3f} GiB planned (saved + backward working set)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
