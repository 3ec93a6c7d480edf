"""Check and time the ``tttgraph::ttt_mlp`` backends: forward, backward, peak memory, error.

For each sequence length T and backend: forward time (inference: no state saved), backward time
(``autograd.grad`` after a training forward), peak memory of forward + backward beyond the inputs,
effective TFLOP/s (229,376 FLOP per token per head forward at D=64, F=256: 7 GEMMs of 2*D*F per
token), and the relative L2 error of the output and of dq against the float32 reference on the
same inputs. Prints a markdown table; ``--append`` adds it to BENCHMARKS.md with the command and
the device's name.

    python benchmarks/bench_ttt_mlp.py --device cpu --seq-lens 1024 4096 --heads 4 --dtype float32
    python benchmarks/bench_ttt_mlp.py --device cuda --seq-lens 18048 --backends reference --append
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(bsz, heads, seq_len, dim, hidden, dtype, device, seed=0):
    """Random inputs at the layer's scales: unit-norm q/k, eta as the layer computes it, init weights."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device)

    q = F.normalize(randn(bsz, heads, seq_len, dim), dim=-1).to(dtype)
    k = F.normalize(randn(bsz, heads, seq_len, dim), dim=-1).to(dtype)
    v = (k.float() + randn(bsz, heads, seq_len, dim)).to(dtype)
    eta = (0.1 / dim / 64) * torch.sigmoid(randn(bsz, heads, seq_len))
    return [q, k, v, eta, 1 + randn(heads, dim, std=0.1), randn(heads, dim, std=0.1),
            randn(heads, dim, hidden, std=0.02), torch.zeros(heads, hidden, device=device),
            randn(heads, hidden, dim, std=0.02), torch.zeros(heads, dim, device=device)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up (events on CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def measure(args, seq_len, backend):
    from tttgraph.ops import ttt_mlp

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(args.batch, args.heads, seq_len, args.dim, args.hidden, dtype, device)
    opts = dict(mini_batch_size=args.mini_batch, eps=1e-6, backend=backend, checkpoint_every=args.checkpoint_every)
    # Seeded on the CPU: the error figures depend on grad_out (two ill-conditioned heads dominate them).
    grad_out = torch.randn(args.batch, args.heads, seq_len, args.dim,
                           generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)

    leaves = [x.detach().requires_grad_(True) for x in inputs]
    peak_bytes = _peak_memory(device, leaves, opts, grad_out)  # first: CPU peak RSS only ever grows
    with torch.no_grad():
        fwd = _time(lambda: ttt_mlp(*inputs, **opts), device, args.repeats)

    def backward():
        out = ttt_mlp(*leaves, **opts)
        _sync(device)
        t0 = time.perf_counter()
        grads = torch.autograd.grad(out, leaves, grad_out)
        _sync(device)
        return time.perf_counter() - t0, out, grads

    backward()  # warm-up
    runs = [backward() for _ in range(args.repeats)]
    bwd = statistics.median(r[0] for r in runs)
    _, out, grads = runs[-1]
    del runs
    row = dict(backend=backend, T=seq_len, fwd_ms=fwd * 1e3, bwd_ms=bwd * 1e3, peak_mib=peak_bytes / 2**20)
    flops = 7 * 2 * args.dim * args.hidden * seq_len * args.batch * args.heads
    row["fwd_tflops"] = flops / fwd / 1e12
    if args.check:
        del leaves
        row["finite"] = bool(all(torch.isfinite(g).all() for g in grads))
        if seq_len > args.check_grads_up_to:  # the fp32 reference backward would not fit beside the rest
            del grads
        ref_inputs = [x.detach().float().requires_grad_(seq_len <= args.check_grads_up_to) for x in inputs]
        with torch.set_grad_enabled(seq_len <= args.check_grads_up_to):
            ref_out = ttt_mlp(*ref_inputs, **{**opts, "backend": "reference"})
        row["err_out"] = _relerr(out, ref_out)
        if seq_len <= args.check_grads_up_to:
            ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad_out.float())
            row["err_dq"] = _relerr(grads[0], ref_grads[0])
            names = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")
            row["err_grads"] = {n: _relerr(g, r) for n, g, r in zip(names, grads, ref_grads, strict=True)}
            row["err_grads_max"] = max(row["err_grads"].values())
            if args.per_grad:
                print(f"{backend} T={seq_len} per-gradient rel err: "
                      + ", ".join(f"d{n} {e:.2e}" for n, e in row["err_grads"].items()), flush=True)
    return row


def _peak_memory(device, leaves, opts, grad_out):
    """Peak bytes of one training forward + backward beyond what was allocated before it."""
    from tttgraph.ops import ttt_mlp

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.autograd.grad(ttt_mlp(*leaves, **opts), leaves, grad_out)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: the growth of the process's peak RSS (only meaningful in a fresh process, see --one).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.autograd.grad(ttt_mlp(*leaves, **opts), leaves, grad_out)
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def table(args, rows) -> str:
    head = ("| backend | T | fwd ms | bwd ms | fwd TFLOP/s | peak MiB (fwd+bwd) | rel err out | rel err dq "
            "| max rel err of the 10 grads |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        errs = "- | - | -"
        if "err_out" in r:
            grad_errs = (f"{r['err_dq']:.2e} | {r['err_grads_max']:.2e}" if "err_dq" in r else "- | -")
            errs = f"{r['err_out']:.2e} | {grad_errs}" + ("" if r["finite"] else " NaN!")
        lines.append(
            f"| {r['backend']} | {r['T']:,} | {r['fwd_ms']:.1f} | {r['bwd_ms']:.1f} | {r['fwd_tflops']:.3f} | "
            f"{r['peak_mib']:.0f} | {errs} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[18048])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=48)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--mini-batch", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backends", nargs="+", default=["reference"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the error check")
    p.add_argument("--per-grad", action="store_true", help="print the error of each of the ten gradients")
    p.add_argument("--check-grads-up-to", type=int, default=101376,
                   help="check gradients against the fp32 reference up to this T (output error at any T)")
    p.add_argument("--one", action="store_true", help="run each (T, backend) in a fresh process (CPU peak RSS)")
    p.add_argument("--json", action="store_true", help="print one JSON row per measurement (used by --one)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)

    rows = []
    for seq_len in args.seq_lens:
        for backend in args.backends:
            if args.one:
                cmd = [sys.executable, __file__, *_forward_args(args), "--seq-lens", str(seq_len),
                       "--backends", backend, "--json"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
            else:
                rows.append(measure(args, seq_len, backend))
                if args.json:
                    print(json.dumps(rows[-1]))
            if not args.json:
                print(table(args, rows[-1:]).splitlines()[-1], flush=True)
    if args.json:
        return
    shape = (f"B={args.batch}, H={args.heads}, D={args.dim}, F={args.hidden}, mini-batch {args.mini_batch}, "
             f"{args.dtype}, checkpoint every {args.checkpoint_every}")
    text = (f"**{device_name(args.device)}**, torch {torch.__version__}; {shape}; median of {args.repeats}.\n"
            f"Command: `python benchmarks/bench_ttt_mlp.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            f"{table(args, rows)}\n")
    print("\n" + text)
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + text)


def _forward_args(args):
    out = ["--device", args.device, "--batch", str(args.batch), "--heads", str(args.heads), "--dim", str(args.dim),
           "--hidden", str(args.hidden), "--mini-batch", str(args.mini_batch), "--checkpoint-every",
           str(args.checkpoint_every), "--dtype", args.dtype, "--repeats", str(args.repeats),
           "--check-grads-up-to", str(args.check_grads_up_to)]
    return out + ([] if args.check else ["--no-check"])


if __name__ == "__main__":
    main()
