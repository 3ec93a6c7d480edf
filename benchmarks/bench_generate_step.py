"""Seconds per denoising step of one-minute generation: CogVideoX-5B transformed vs full attention.

Full-size CogVideoX-5B (42 blocks, 48 heads x 64, width 3072; 720x480 = 1,350 video tokens per
latent frame, 226 text tokens per 3-second segment), random weights, bfloat16, built directly on
the GPU. Each step is what ``tttgraph generate`` runs: one transformer forward on the CFG batch of
2 (``[uncond | cond]``), the dynamic-CFG mix and a ``CogVideoXDPMScheduler`` step, timed through
the real sampler loop (``tttgraph.generate.sampler.denoise``) with a synchronising callback; the
first step is a warm-up. Two models in the same process, same inputs:

- transformed: ``tttgraph.transform`` with ``presets.cogvideox_5b`` (segment-local attention over
  12 + 1 latent frames and their own text chunk, bidirectional TTT-MLP after every attention),
  captured once at 3 s and run at every length (the frame count is a dynamic dimension);
- original: the same diffusers model, full attention over the whole sequence.

Lengths whose original run would not fit the time budget (``--full-max-seconds``) or that run out
of memory are projected from the measured ones (full attention: exact quadratic through the
measured points in the token count; transformed: least-squares line), and marked as such.

    python benchmarks/bench_generate_step.py                       # 3, 9, 18 s on CUDA, project 63 s
    python benchmarks/bench_generate_step.py --seconds 63 --full-max-seconds 0   # transformed at 63 s only
    python benchmarks/bench_generate_step.py --tiny                # tiny config on the CPU (smoke test)

Imports: torch, diffusers (``CogVideoXTransformer3DModel``, ``CogVideoXDPMScheduler``,
``diffusers.models.embeddings.get_3d_rotary_pos_embed``; with them huggingface_hub, requests,
Pillow, PyYAML, packaging, filelock), tttgraph installed (``pip install --no-deps -e .``: its
``passes``/``kernels`` map into the package) with numpy, safetensors, networkx, tqdm; triton or the
cuda_sm90 kernel for the TTT scan (``--backend auto`` picks the fastest available).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

COGVIDEOX_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    max_text_seq_length=226, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
LATENT_5B = (60, 90)  # 480 x 720 pixels
TINY = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
    text_embed_dim=16, num_layers=2, sample_width=6, sample_height=4, sample_frames=49, patch_size=2,
    max_text_seq_length=16, use_rotary_positional_embeddings=True,
)
LATENT_TINY = (4, 6)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The diffusers transformer with seeded random weights, created in ``dtype`` on ``device``."""
    from diffusers import CogVideoXTransformer3DModel

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device), default_dtype(dtype):
            model = CogVideoXTransformer3DModel(**config)
    return model.eval()


def inputs(model, frames: int, latent_hw: tuple[int, int], segments: int, device, dtype, seed: int = 0) -> dict:
    """Forward kwargs at batch 2 (CFG): latents [2, F, C, h, w], text [2, S*L, C], timestep [2], RoPE."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    from tttgraph.models.tiny import _crop_region

    cfg = model.config
    p = cfg.patch_size
    grid = (latent_hw[0] // p, latent_hw[1] // p)
    crops = _crop_region(grid, cfg.sample_width // p, cfg.sample_height // p)
    cos, sin = get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, grid, frames)
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(2, segments * cfg.max_text_seq_length, cfg.text_embed_dim, generator=gen)
    return {
        "hidden_states": torch.randn(2, frames, cfg.in_channels, *latent_hw, generator=gen).to(device, dtype),
        "encoder_hidden_states": text.to(device, dtype),
        "timestep": torch.full((2,), 999, dtype=torch.long, device=device),
        "image_rotary_emb": (cos.to(device), sin.to(device)),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, kwargs: dict, steps: int, device: torch.device) -> tuple[list[float], float]:
    """Per-step seconds of ``steps`` sampler steps after one warm-up step, and peak GiB (CUDA)."""
    from tttgraph.generate.sampler import SamplerSettings, denoise
    from tttgraph.models.cogvideox_bundle import SCHEDULER_CONFIG

    text, rope = kwargs["encoder_hidden_states"], kwargs["image_rotary_emb"]
    dtype = kwargs["hidden_states"].dtype

    def predict(x, t):
        return model(hidden_states=x, encoder_hidden_states=text, timestep=t, image_rotary_emb=rope,
                     return_dict=False)[0]

    marks: list[float] = []

    def mark(_done, _latents):
        sync(device)
        marks.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    shape = (1, *kwargs["hidden_states"].shape[1:])
    settings = SamplerSettings(steps=steps + 1, guidance_scale=6.0, seed=0, checkpoint_every=0)
    with torch.no_grad():
        denoise(predict, shape, settings, SCHEDULER_CONFIG, device=device, dtype=dtype, callback=mark,
                progress=False)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return [b - a for a, b in zip(marks, marks[1:], strict=False)], peak


def project(points: list[tuple[int, float]], tokens: int, degree: int) -> float:
    """Value at ``tokens`` of a polynomial fit (exact through <= degree+1 points, least squares beyond)."""
    import numpy as np

    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    degree = min(degree, len(points) - 1)
    return float(np.polyval(np.polyfit(xs, ys, degree), tokens))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, nargs="+", default=[3, 9, 18], help="video lengths (multiples of 3)")
    p.add_argument("--project", type=int, nargs="*", default=[63], help="lengths to project, not run (default 63)")
    p.add_argument("--full-max-seconds", type=int, default=18,
                   help="run the original (full attention) model only up to this length (default 18)")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed steps per length and model after 1 warm-up (default 2)")
    p.add_argument("--backend", default="auto", help="ttt_mlp backend (default auto: triton on CUDA if installed)")
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU in float32 (smoke test)")
    p.add_argument("--device", default="cuda", help="cuda (default), or meta: full-size shapes without compute, "
                   "to check the script on a machine without a GPU (times are meaningless)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)

    import tttgraph
    from tttgraph.generate.estimate import estimate
    from tttgraph.layout import SequenceLayout
    from tttgraph.rewrite import plan_of

    if args.tiny:
        device, dtype, config, latent_hw = torch.device("cpu"), torch.float32, TINY, LATENT_TINY
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on the GPU machine, or pass --tiny for the CPU smoke test")
        dtype, config, latent_hw = torch.bfloat16, COGVIDEOX_5B, LATENT_5B
    text_tokens = config["max_text_seq_length"]
    card = {"cuda": lambda: torch.cuda.get_device_name(device), "meta": lambda: "meta device (no compute)"}.get(
        device.type, lambda: f"CPU ({platform.machine()})")()

    start = time.perf_counter()
    model = build(config, device, dtype)
    build_s = time.perf_counter() - start
    cfg = tttgraph.presets.cogvideox_5b(3, text_tokens_per_segment=text_tokens, backend=args.backend)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1)
        tm = tttgraph.transform(model, cfg, inputs(model, 13, latent_hw, 1, device, dtype), progress=False).eval()
    transform_s = time.perf_counter() - start
    backends = sorted(set(plan_of(tm).backends.values()))
    print(f"{card}: built in {build_s:.1f} s, transformed in {transform_s:.1f} s; TTT backend(s): {backends}",
          flush=True)

    rows = []
    for seconds in args.seconds:
        frames = tttgraph.presets.latent_frames(seconds)
        est = estimate(config, frames, latent_hw, SequenceLayout(text_tokens, 1, 12, 1), batch=2,
                       dtype_bytes=torch.empty((), dtype=dtype).element_size())
        kwargs = inputs(model, frames, latent_hw, seconds // 3, device, dtype)
        row = {"seconds": seconds, "frames": frames, "tokens": est.tokens, "estimate": est}
        for name, m in (("transformed", tm), ("full", model)):
            if name == "full" and seconds > args.full_max_seconds:
                row[name] = None
                row[name + "_note"] = f"not run (> --full-max-seconds {args.full_max_seconds})"
                continue
            try:
                times, peak = time_steps(m, kwargs, args.repeats, device)
                row[name], row[name + "_peak"] = statistics.median(times), peak
                print(f"{seconds:>3} s {name:>11}: {row[name]:.3f} s/step (steps {[round(t, 3) for t in times]}), "
                      f"peak {peak:.1f} GiB", flush=True)
            except torch.OutOfMemoryError:
                row[name], row[name + "_note"] = None, "out of memory"
                print(f"{seconds:>3} s {name:>11}: out of memory", flush=True)
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        del kwargs

    for seconds in args.project:
        if seconds in args.seconds:  # measured above: no projection-only row
            continue
        frames = tttgraph.presets.latent_frames(seconds)
        est = estimate(config, frames, latent_hw, SequenceLayout(text_tokens, 1, 12, 1), batch=2)
        rows.append({"seconds": seconds, "frames": frames, "tokens": est.tokens, "estimate": est,
                     "transformed_note": "not run", "full_note": "not run"})
    measured = {name: [(r["tokens"], r[name]) for r in rows if r.get(name) is not None]
                for name in ("transformed", "full")}
    for r in rows:
        for name, degree in (("transformed", 1), ("full", 2)):
            if r.get(name) is None and len(measured[name]) >= 2:
                r[name + "_projected"] = project(measured[name], r["tokens"], degree)

    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = report(rows, args, card, backends, build_s, transform_s, dtype, command)
    print("\n".join(lines))
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return rows


def report(rows, args, card, backends, build_s, transform_s, dtype, command: str) -> list[str]:
    def cell(r, name):
        if r.get(name) is not None:
            return f"{r[name]:.3g}"
        if r.get(name + "_projected") is not None:
            why = r.get(name + "_note", "projected")
            return f"~{r[name + '_projected']:.3g} (projected; {why})"
        return r.get(name + "_note", "-")

    def peak(r, name):
        value = r.get(name + "_peak")
        return "-" if value is None or value != value else f"{value:.1f}"

    what = "tiny CogVideoX config (CPU smoke test)" if args.tiny else "CogVideoX-5B (random weights)"
    lines = [
        f"**{card}**, torch {torch.__version__}, {what}, {str(dtype).replace('torch.', '')}, CFG batch 2; "
        f"TTT backend {', '.join(backends)}; median of {args.repeats} step(s) after a warm-up step "
        f"(model built in {build_s:.1f} s, transformed in {transform_s:.1f} s).",
        "",
        "| video | latent frames | tokens per sample | transformed s/step | full attention s/step | full / transformed "
        "| peak GiB (transformed / full) | est. PFLOP per step (transformed / full) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.get("transformed") or r.get("transformed_projected")
        f = r.get("full") or r.get("full_projected")
        ratio = f"{f / t:.2f}x" if t and f else "-"
        e = r["estimate"]
        lines.append(
            f"| {r['seconds']} s | {r['frames']} | {r['tokens']:,} | {cell(r, 'transformed')} | {cell(r, 'full')} | "
            f"{ratio} | {peak(r, 'transformed')} / {peak(r, 'full')} | {e.flops_per_step / 1e15:.3g} / "
            f"{e.full_attention_flops_per_step / 1e15:.3g} |"
        )
    lines.append("")
    lines.append(f"Command: `python benchmarks/bench_generate_step.py {command}`")
    return lines


if __name__ == "__main__":
    main()
