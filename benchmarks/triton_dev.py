"""Build, check and time the Triton TTT-MLP kernels on one GPU in one go; prints a table last.

    PYTHONPATH=. python benchmarks/triton_dev.py [--seq-lens 18048,101376,351168] [--out DIR]

Shapes of CogVideoX-5B: B=1, H=48, D=64, F=256, mini-batch 64, bf16. For each T: forward and
backward ms (median of CUDA-event timings after a warm-up), effective forward TFLOP/s (229,376 FLOP
per token per head), and at the first T the relative L2 error of the output and of every gradient
against the float32 reference run on the same inputs, plus the reference's own times.
Needs only torch, triton and this working tree (no install: see ``_import_kernels``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import torch

FWD_FLOP_PER_TOKEN_HEAD = 229_376
GRAD_NAMES = ("dq", "dk", "dv", "deta", "dln_weight", "dln_bias", "dw1", "db1", "dw2", "db2")


def _import_kernels(alt_file: str = ""):
    """Import the reference and Triton backends from this tree, with or without an install.

    If ``tttgraph`` itself does not import (a half-finished tree), register bare package objects for
    ``tttgraph`` and ``tttgraph.kernels`` that point at the folders, so only the kernel modules load.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        importlib.import_module("tttgraph.kernels.ttt_mlp")
    except Exception as err:  # noqa: BLE001 - any failure of the full package: fall back
        print(f"note: full tttgraph import failed ({err!r}); loading the kernel modules alone")
        for name in [m for m in sys.modules if m == "tttgraph" or m.startswith("tttgraph.")]:
            del sys.modules[name]
        for name, path in (("tttgraph", "tttgraph"), ("tttgraph.kernels", "kernels")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [os.path.join(root, path)]
            sys.modules[name] = pkg
    ref = importlib.import_module("tttgraph.kernels.ttt_mlp.reference")
    if alt_file:  # another version of triton.py (e.g. the previous one, for a baseline on the same card)
        name = "tttgraph.kernels.ttt_mlp._alt_" + "".join(c if c.isalnum() else "_" for c in os.path.basename(alt_file))
        spec = importlib.util.spec_from_file_location(name, alt_file)
        tk = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = tk
        spec.loader.exec_module(tk)
        return ref, tk
    tk = importlib.import_module("tttgraph.kernels.ttt_mlp.triton")
    return ref, tk


def make_inputs(bsz, heads, seq_len, dim, hidden, dtype, seed=0):
    """Random inputs at the layer's scales: q, k unit-norm per token, eta and weights as initialised."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * std).to(dtype)

    q = torch.nn.functional.normalize(randn(bsz, heads, seq_len, dim).float(), dim=-1).to(dtype)
    k = torch.nn.functional.normalize(randn(bsz, heads, seq_len, dim).float(), dim=-1).to(dtype)
    v = randn(bsz, heads, seq_len, dim)
    # eta = (base_lr / d) * sigmoid(.) / b with base_lr 0.1 and b = 64, as the layer makes it.
    gate = torch.sigmoid(torch.randn(bsz, heads, seq_len, generator=g, device="cuda"))
    eta = (0.1 / dim * gate / 64).to(dtype)
    ln_weight = (1.0 + 0.1 * torch.randn(heads, dim, generator=g, device="cuda")).to(dtype)
    ln_bias = randn(heads, dim, std=0.1)
    # The layer's init (std 0.02), with small random biases instead of zeros.
    w1, b1 = randn(heads, dim, hidden, std=0.02), randn(heads, hidden, std=0.02)
    w2, b2 = randn(heads, hidden, dim, std=0.02), randn(heads, dim, std=0.02)
    return q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2


def time_ms(fn, warmup=1, reps=3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def probe(ref, tk, pair: str, seq_len: int = 1000) -> None:
    """Run one launch configuration at B=1, H=2, T=seq_len (bf16) and report errors or the failure."""
    cfg = _parse_config(pair)
    bf, nw = cfg["BF"], cfg["num_warps"]
    tk.CONFIG_OVERRIDE = {"fwd": cfg, "bwd": cfg}
    args = make_inputs(1, 2, seq_len, 64, 256, torch.bfloat16, seed=3)
    go = torch.randn_like(args[0])
    a32 = tuple(a.float() for a in args)
    r_out, r_st = ref.forward(*a32, 64, 1e-6, 4, True)
    r_grads = ref.backward(go.float(), *a32, r_st, 64, 1e-6, 4)
    out, st = tk.forward(*args, 64, 1e-6, 4, True)
    torch.cuda.synchronize()
    print(f"probe BF={bf} warps={nw}: fwd ok, err {rel_err(out, r_out):.1e}", flush=True)
    grads = tk.backward(go, *args, st, 64, 1e-6, 4)
    torch.cuda.synchronize()
    err = max(rel_err(g, r) for g, r in zip(grads, r_grads, strict=True))
    print(f"probe BF={bf} warps={nw}: bwd ok, max grad err {err:.1e}", flush=True)


def _parse_config(spec: str) -> dict:
    vals = [int(x) for x in spec.split(":")]
    cfg = dict(BF=vals[0], num_warps=vals[1])
    if len(vals) > 2:
        cfg["num_stages"] = vals[2]
    if len(vals) > 3:
        cfg["P"] = vals[3]  # the forward's programs per head (F split)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-lens", default="18048,101376,351168")
    parser.add_argument("--heads", type=int, default=48)
    parser.add_argument("--every", type=int, default=16)
    parser.add_argument("--configs", default="", help="BF:warps pairs to try at the first T, e.g. 64:8,32:4")
    parser.add_argument("--skip-fp32", action="store_true", help="skip the fp32 check at T=1000")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip a T predicted to end past this")
    parser.add_argument("--probe", default="", help="BF:warps: only check fwd, then bwd, at a small size")
    parser.add_argument("--probe-t", type=int, default=1000)
    parser.add_argument("--fwd-configs", default="",
                        help="BF:warps[:stages[:P]] for the forward alone, timed at the first T; the fastest is kept")
    parser.add_argument("--kernel-file", default="", help="time this copy of triton.py instead (a baseline)")
    opts = parser.parse_args()
    t_start = time.time()
    ref, tk = _import_kernels(opts.kernel_file)
    if opts.probe:
        probe(ref, tk, opts.probe, opts.probe_t)
        return
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    bsz, heads, dim, hidden, mb, every = 1, opts.heads, 64, 256, 64, opts.every
    eps = 1e-6
    rows, checks = [], {}

    # 1. fp32 correctness at a small size (IEEE fp32 matmuls: should be ~1e-6).
    if not opts.skip_fp32:
        args = make_inputs(1, 4, 1000, dim, hidden, torch.float32, seed=1)
        go = torch.randn_like(args[0])
        out, st = tk.forward(*args, mb, eps, 4, True)
        grads = tk.backward(go, *args, st, mb, eps, 4)
        r_out, r_st = ref.forward(*args, mb, eps, 4, True)
        r_grads = ref.backward(go, *args, r_st, mb, eps, 4)
        checks["fp32_T1000"] = {"out": rel_err(out, r_out), **{n: rel_err(g, r) for n, g, r in
                                                                zip(GRAD_NAMES, grads, r_grads, strict=True)}}
        print("fp32 check", json.dumps({k: f"{v:.1e}" for k, v in checks["fp32_T1000"].items()}), flush=True)

    # 2. Optional launch-config sweep at the first T (bf16); the table then uses the fastest of each.
    seq_lens = [int(s) for s in opts.seq_lens.split(",")]
    if opts.configs:
        args = make_inputs(bsz, heads, seq_lens[0], dim, hidden, torch.bfloat16)
        go = torch.randn_like(args[0])
        best = {"fwd": (float("inf"), None), "bwd": (float("inf"), None)}
        for pair in opts.configs.split(","):
            cfg = _parse_config(pair)
            bf, nw = cfg["BF"], cfg["num_warps"]
            tk.CONFIG_OVERRIDE = {"fwd": cfg, "bwd": cfg}
            t0 = time.time()
            try:
                _, st = tk.forward(*args, mb, eps, every, True)
                tk.backward(go, *args, st, mb, eps, every)
                torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001 - a config that does not compile is reported
                print(f"config BF={bf} warps={nw}: failed: {str(err)[:200]}", flush=True)
                continue
            compile_s = time.time() - t0
            f_ms = time_ms(lambda a=args: tk.forward(*a, mb, eps, every, True))
            b_ms = time_ms(lambda a=args, s=st, g=go: tk.backward(g, *a, s, mb, eps, every))
            best["fwd"] = min(best["fwd"], (f_ms, pair), key=lambda x: x[0])
            best["bwd"] = min(best["bwd"], (b_ms, pair), key=lambda x: x[0])
            print(f"config BF={bf} warps={nw}: fwd {f_ms:.1f} ms  bwd {b_ms:.1f} ms  "
                  f"(first run {compile_s:.0f} s)", flush=True)
        tk.CONFIG_OVERRIDE = {}
        for kind, (_ms, pair) in best.items():
            if pair is not None:
                tk.CONFIG_OVERRIDE[kind] = _parse_config(pair)
        print("table uses", tk.CONFIG_OVERRIDE, flush=True)
        del args, go

    if opts.fwd_configs:
        args = make_inputs(bsz, heads, seq_lens[0], dim, hidden, torch.bfloat16)
        best = (float("inf"), None)
        for spec in opts.fwd_configs.split(","):
            cfg = _parse_config(spec)
            tk.CONFIG_OVERRIDE["fwd"] = cfg
            try:
                tk.forward(*args, mb, eps, every, True)
                torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001 - a config that does not compile is reported
                print(f"fwd config {cfg}: failed: {str(err)[:200]}", flush=True)
                continue
            f_ms = time_ms(lambda a=args: tk.forward(*a, mb, eps, every, True), reps=5)
            best = min(best, (f_ms, spec), key=lambda x: x[0])
            print(f"fwd config {cfg}: {f_ms:.2f} ms", flush=True)
        if best[1] is not None:
            tk.CONFIG_OVERRIDE["fwd"] = _parse_config(best[1])
        print("table uses", tk.CONFIG_OVERRIDE, flush=True)
        del args

    # 3. The table: bf16, B=1, H=48.
    per_token_ms = None
    for i, seq_len in enumerate(seq_lens):
        if per_token_ms is not None:
            predicted = per_token_ms * seq_len * 5 / 1000
            if time.time() - t_start + predicted > opts.budget_s:
                print(f"skip T={seq_len}: predicted {predicted:.0f} s over the budget", flush=True)
                continue
        args = make_inputs(bsz, heads, seq_len, dim, hidden, torch.bfloat16, seed=seq_len)
        go = torch.randn_like(args[0])
        _, st = tk.forward(*args, mb, eps, every, True)
        f_ms = time_ms(lambda a=args: tk.forward(*a, mb, eps, every, True))
        b_ms = time_ms(lambda a=args, s=st, g=go: tk.backward(g, *a, s, mb, eps, every))
        per_token_ms = (f_ms + b_ms) / seq_len
        tflops = FWD_FLOP_PER_TOKEN_HEAD * seq_len * heads * bsz / (f_ms * 1e-3) / 1e12
        row = {"T": seq_len, "fwd_ms": f_ms, "bwd_ms": b_ms, "fwd_tflops": tflops}
        if i == 0:
            out, st = tk.forward(*args, mb, eps, every, True)
            grads = tk.backward(go, *args, st, mb, eps, every)
            a32 = tuple(a.float() for a in args)
            r_out, r_st = ref.forward(*a32, mb, eps, every, True)
            r_grads = ref.backward(go.float(), *a32, r_st, mb, eps, every)
            errs = {"out": rel_err(out, r_out), **{n: rel_err(g, r) for n, g, r in
                                                    zip(GRAD_NAMES, grads, r_grads, strict=True)}}
            checks[f"bf16_T{seq_len}"] = errs
            print("bf16 check", json.dumps({k: f"{v:.1e}" for k, v in errs.items()}), flush=True)
            row["rel_err_out"] = errs["out"]
            row["rel_err_grad_max"] = max(v for k, v in errs.items() if k != "out")
            del grads, r_grads, r_out
            row["ref_fwd_ms"] = time_ms(lambda a=a32: ref.forward(*a, mb, eps, every, True), reps=1)
            go32 = go.float()
            row["ref_bwd_ms"] = time_ms(
                lambda g=go32, a=a32, s=r_st: ref.backward(g, *a, s, mb, eps, every), warmup=0, reps=1
            )
            del a32, r_st, go32
        rows.append(row)
        print("row", json.dumps(row), flush=True)
        del args, go, st
        torch.cuda.empty_cache()

    with open(os.path.join(opts.out, "triton_dev.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows, "checks": checks}, f, indent=1)
    print(f"\n{torch.cuda.get_device_name()}: B=1 H={heads} D=64 F=256 mb=64 bf16, checkpoint_every={every}")
    print(f"{'T':>8} {'fwd ms':>9} {'bwd ms':>9} {'fwd TF/s':>9} {'err out':>8} {'err grad':>9} "
          f"{'ref fwd':>9} {'ref bwd':>9}")
    def fmt(r, key, spec):
        return format(r[key], spec) if key in r else "-"

    for r in rows:
        print(f"{r['T']:>8} {r['fwd_ms']:>9.1f} {r['bwd_ms']:>9.1f} {r['fwd_tflops']:>9.2f} "
              f"{fmt(r, 'rel_err_out', '.1e'):>8} {fmt(r, 'rel_err_grad_max', '.1e'):>9} "
              f"{fmt(r, 'ref_fwd_ms', '.1f'):>9} {fmt(r, 'ref_bwd_ms', '.1f'):>9}")
    for key, cfg in tk._FITTED.items():
        print("fitted launch config", dict(key[1]), cfg)
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    assert torch.cuda.is_available(), "needs a CUDA device"
    main()
