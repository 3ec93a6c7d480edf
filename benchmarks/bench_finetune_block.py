"""Training step of one full-size CogVideoX-5B block, with and without TTT (issue #6).

One transformer block of CogVideoX-5B written out in plain PyTorch (no diffusers needed): adaLN
modulation from the 512-d time embedding, joint [text | video] attention (48 heads x 64, q/k
LayerNorm, 3D RoPE on video tokens) made segment-local (12-frame segments + 1 overlap frame, each
with its own 226 text tokens, the segments gathered into the batch dim as tttgraph does), the
output projection, then a gated feed-forward (4x, GELU-tanh). The TTT variant inserts
``tttgraph.GatedBidirectionalTTT`` after the attention's output projection, before the gated
residual, as ``tttgraph.transform`` does. Random weights, bf16 parameters and activations, the
whole block under activation checkpointing (non-reentrant), batch 1.

A step is forward + backward + AdamW update. Reported: median step time, peak memory allocated
during the step (beyond parameters, gradients and optimizer state), and the TTT / no-TTT ratios.
At 3 s (13 latent frames, 17,776 tokens) and 9 s (37 frames, 50,628 tokens) by default.

    python benchmarks/bench_finetune_block.py                       # CUDA, full size, 3 s and 9 s
    python benchmarks/bench_finetune_block.py --append              # and append the table to BENCHMARKS.md
    python benchmarks/bench_finetune_block.py --tiny                # CPU smoke run at toy sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tttgraph.layers import GatedBidirectionalTTT  # noqa: E402
from tttgraph.layout import SequenceLayout  # noqa: E402
from tttgraph.rope import apply_rope, video_rope_angles  # noqa: E402
from tttgraph.segment_attention import segment_sdpa, self_attention_index  # noqa: E402

FULL = dict(heads=48, head_dim=64, time_dim=512, text=226, grid=(30, 45), segment=12, overlap=1, mini_batch=64)
TINY = dict(heads=2, head_dim=16, time_dim=16, text=8, grid=(2, 3), segment=4, overlap=1, mini_batch=16)


class CogVideoXBlock(nn.Module):
    """CogVideoX-5B ``CogVideoXBlock`` (diffusers) with segment-local attention and optional TTT.

    ``forward(video [B, Nv, C], text [B, Nt, C], temb [B, T], cos, sin [Nv, D/2], frames)``
    returns ``(video, text)`` of the same shapes.
    """

    def __init__(self, heads: int, head_dim: int, time_dim: int, layout: SequenceLayout, grid, ttt: bool,
                 mini_batch: int, backend: str):
        super().__init__()
        width = heads * head_dim
        self.heads, self.head_dim, self.layout = heads, head_dim, layout
        self.norm1_linear = nn.Linear(time_dim, 6 * width)
        self.norm1 = nn.LayerNorm(width, eps=1e-5)
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.norm_q, self.norm_k = nn.LayerNorm(head_dim, eps=1e-6), nn.LayerNorm(head_dim, eps=1e-6)
        self.to_out = nn.Linear(width, width)
        self.norm2_linear = nn.Linear(time_dim, 6 * width)
        self.norm2 = nn.LayerNorm(width, eps=1e-5)
        self.ff_in, self.ff_out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.ttt = GatedBidirectionalTTT(width, heads, layout, mini_batch_size=mini_batch, backend=backend,
                                         rope_grid=grid) if ttt else None

    def _modulate(self, linear, norm, video, text, temb):
        shift, scale, gate, t_shift, t_scale, t_gate = linear(F.silu(temb))[:, None].chunk(6, dim=-1)
        return (norm(video) * (1 + scale) + shift, norm(text) * (1 + t_scale) + t_shift, gate, t_gate)

    def forward(self, video, text, temb, cos, sin, frames: int):
        nt = text.shape[1]
        v_in, t_in, gate, t_gate = self._modulate(self.norm1_linear, self.norm1, video, text, temb)
        x = torch.cat([t_in, v_in], dim=1)
        q, k, v = (lin(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
                   for lin in (self.to_q, self.to_k, self.to_v))
        q, k = self.norm_q(q), self.norm_k(k)
        q = torch.cat([q[:, :, :nt], apply_rope(q[:, :, nt:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :nt], apply_rope(k[:, :, nt:], cos, sin)], dim=2)
        attn = segment_sdpa(q, k, v, _index(self.layout, frames, q.device))
        attn = self.to_out(attn.transpose(1, 2).flatten(2))
        if self.ttt is not None:
            attn = self.ttt(attn, frames)
        video = video + gate * attn[:, nt:]
        text = text + t_gate * attn[:, :nt]
        v_in, t_in, gate, t_gate = self._modulate(self.norm2_linear, self.norm2, video, text, temb)
        ff = self.ff_out(F.gelu(self.ff_in(torch.cat([t_in, v_in], dim=1)), approximate="tanh"))
        return video + gate * ff[:, nt:], text + t_gate * ff[:, :nt]


_INDEX: dict = {}


def _index(layout, frames, device):
    key = (layout, frames, device)
    if key not in _INDEX:
        _INDEX[key] = self_attention_index(layout, frames).to(device)
    return _INDEX[key]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(dims: dict, frames: int, ttt: bool, device: torch.device, dtype: torch.dtype, repeats: int,
            backend: str) -> dict:
    """Median step time and peak step memory of one block at ``frames`` latent frames."""
    torch.manual_seed(0)
    gh, gw = dims["grid"]
    layout = SequenceLayout(dims["text"], gh * gw, dims["segment"], dims["overlap"])
    block = CogVideoXBlock(dims["heads"], dims["head_dim"], dims["time_dim"], layout, (gh, gw), ttt,
                           dims["mini_batch"], backend).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(block.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    width = dims["heads"] * dims["head_dim"]
    segments = layout.num_segments(frames)
    video = torch.randn(1, frames * gh * gw, width, device=device, dtype=dtype)
    text = torch.randn(1, segments * dims["text"], width, device=device, dtype=dtype)
    temb = torch.randn(1, dims["time_dim"], device=device, dtype=dtype)
    angles = video_rope_angles(frames, (gh, gw), dims["head_dim"])
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)

    def step():
        out_v, out_t = checkpoint(block, video, text, temb, cos, sin, frames, use_reentrant=False)
        loss = out_v.float().square().mean() + out_t.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step()  # warm-up; also allocates the optimizer state and the gradients
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    chosen = backend
    if ttt and backend == "auto":
        from tttgraph.kernels.ttt_mlp import backends
        from tttgraph.passes.lower_ttt import probe_args

        chosen = backends.resolve("auto", probe_args(block.ttt), dims["mini_batch"], 1e-6).__name__.rsplit(".", 1)[-1]
    return {"frames": frames, "tokens": video.shape[1] + text.shape[1], "ttt": ttt,
            "ms": 1e3 * statistics.median(times), "peak_mib": peak,
            "params": sum(p.numel() for p in block.parameters()), "backend": chosen if ttt else "-"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, nargs="+", default=[3, 9], help="video lengths (default 3 9)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default="auto", help="ttt_mlp backend of the TTT layer (default auto)")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (a smoke test of this script)")
    p.add_argument("--device", help="default: cuda (cpu with --tiny)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)
    dims = TINY if args.tiny else FULL
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; run on the GPU machine or pass --tiny", file=sys.stderr)
        return 2
    rows = []
    for seconds in args.seconds:
        # 4 latent frames per second plus the first (13 at 3 s); the tiny dims use 4-frame segments.
        frames = 4 * seconds + 1 if not args.tiny else dims["segment"] * (seconds // 3) + 1
        for ttt in (False, True):
            row = measure(dims, frames, ttt, device, dtype, args.repeats, args.backend)
            row["seconds"] = seconds
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    lines = [
        f"**{card}**, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; one CogVideoX-5B block"
        f"{' (tiny dims)' if args.tiny else ''} ({dims['heads']} heads x {dims['head_dim']}, segments of "
        f"{dims['segment']}+{dims['overlap']} latent frames x {dims['grid'][0] * dims['grid'][1]} tokens + "
        f"{dims['text']} text tokens), {str(dtype).removeprefix('torch.')}, batch 1, activation checkpointing, "
        f"step = forward + backward + AdamW, median of {args.repeats}.",
        f"Command: `python benchmarks/bench_finetune_block.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| video | latent frames | tokens | block | TTT backend | parameters | step ms | peak MiB | step x | mem x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for base, ttt in zip(rows[::2], rows[1::2], strict=True):
        for r in (base, ttt):
            # Peak memory is measured on CUDA only (the CPU allocator keeps no peak statistics).
            mib = "-" if r["peak_mib"] != r["peak_mib"] else f"{r['peak_mib']:.0f}"
            mem_x = "-" if mib == "-" else f"{r['peak_mib'] / base['peak_mib']:.2f}"
            lines.append(
                f"| {r['seconds']} s | {r['frames']} | {r['tokens']:,} | {'with TTT' if r['ttt'] else 'no TTT'} | "
                f"{r['backend']} | {r['params'] / 1e6:.1f}M | {r['ms']:.1f} | {mib} | {r['ms'] / base['ms']:.2f} | "
                f"{mem_x} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.json:
        print(json.dumps(rows))
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n## Fine-tuning: one CogVideoX-5B block with and without TTT (issue #6)\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
