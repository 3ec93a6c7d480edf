"""Time ``inspect`` and ``transform`` on full-size CogVideoX-5B built on the meta device.

No weights are allocated (meta tensors), so this measures the compiler itself: capture
(torch.export), analysis, planning and the passes. Also reports the parameters added.
Target (issue #3): under 30 s end to end on the 2-core development machines; the reference
architecture adds ~1.66B parameters (42 layers x ~39.5M).

    python benchmarks/bench_transform.py [--seconds 63] [--append]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

COGVIDEOX_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    max_text_seq_length=226, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)


def meta_model_and_inputs(seconds: int):
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.presets import COGVIDEOX_TEXT_TOKENS, latent_frames

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**COGVIDEOX_5B)
    frames = latent_frames(seconds)
    segments = max(1, -(-(frames - 1) // 12))
    tokens = frames * 30 * 45
    meta = dict(device="meta")
    inputs = {
        "hidden_states": torch.empty(1, frames, 16, 60, 90, **meta),
        "encoder_hidden_states": torch.empty(1, segments * COGVIDEOX_TEXT_TOKENS, 4096, **meta),
        "timestep": torch.empty(1, dtype=torch.long, **meta),
        "image_rotary_emb": (torch.empty(tokens, 64, **meta), torch.empty(tokens, 64, **meta)),
    }
    return model, inputs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=3, help="video length the example inputs describe (default 3)")
    p.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = p.parse_args(argv)

    from tttgraph import presets
    from tttgraph.rewrite import inspect, plan_of, transform

    cfg = presets.cogvideox_5b(args.seconds)
    start = time.perf_counter()
    model, inputs = meta_model_and_inputs(args.seconds)
    build_s = time.perf_counter() - start
    base = sum(p.numel() for p in model.parameters())

    start = time.perf_counter()
    plan = inspect(model, cfg, inputs)
    inspect_s = time.perf_counter() - start
    start = time.perf_counter()
    tm = transform(model, cfg, inputs, progress=False)
    transform_s = time.perf_counter() - start
    added = sum(p.numel() for n, p in tm.named_parameters() if ".gated_ttt." in n)
    assert added == plan.added_parameters == plan_of(tm).added_parameters

    cpu = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [
        f"CogVideoX-5B on the meta device ({cpu}), preset cogvideox_5b({args.seconds}) "
        f"({inputs['hidden_states'].shape[1]} latent frames, {inputs['encoder_hidden_states'].shape[1]} text tokens):",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| build the meta model | {build_s:.1f} |",
        f"| inspect (capture + analysis + plan) | {inspect_s:.1f} |",
        f"| transform (capture + analysis + passes) | {transform_s:.1f} |",
        "",
        f"Base parameters {base / 1e9:.3f}B; added {added / 1e9:.3f}B in {len(plan.ttt_modules)} TTT layers "
        f"({added / len(plan.ttt_modules) / 1e6:.2f}M each); segment-local attentions: "
        f"{sum(s.segment for s in plan.sites)}.",
        f"Command: `python benchmarks/bench_transform.py --seconds {args.seconds}`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
