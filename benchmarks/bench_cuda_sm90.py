"""Build, check and time the ``cuda_sm90`` TTT-MLP forward beside Triton and the reference, in one process.

For the issue #5 protocol (B=1, H=48, D=64, F=256, mini-batch 64, bf16): build time of the extension,
then per T the forward time of cuda_sm90 (split-bf16 products on and off), Triton and, up to
``--ref-up-to``, the float32 reference; effective TFLOP/s (229,376 FLOP per token-head); relative
L2 error of each output against the float32 reference on the same inputs (layer-scale inputs: eta =
0.1/D * sigmoid / 64, inner weights std 0.02); and the time per mini-batch. Prints a markdown table;
``--append`` adds it to BENCHMARKS.md with the card's name.

    python benchmarks/bench_cuda_sm90.py --seq-lens 18048 101376 351168

``--baseline-dir DIR[:VARIANT] ...`` also times the kernels built from older copies of the sources
(e.g. ``git show REV:kernels/ttt_mlp/cuda_sm90/<file>`` for every source and header into DIR): the
forward with VARIANT (default ``--baseline-variant``) and, with ``--backward``, the backward; an A/B
within one process and card. Each baseline row says whether its output (gradients) is bitwise equal
to the current build's. The copies must bind the kernels as the current sources do (``BINDING_ABI`` in
``build.py``); an older version is timed from its own checkout.

``--fused`` also times the current build with the output computed by the scan (the v8 kernel;
``DECOUPLED_OUTPUT`` off), ``--output-workers N ...`` with at most N output-worker clusters: if
fewer workers do not slow the forward down, the workers are not what limits it. ``--scan-alone``
also times the current build's scan without the output (the checkpoint-only pass, without and with
checkpoints every 16 mini-batches): the floor the decoupled forward can reach.

The build timed first runs slow (forward ~1%, backward up to 11% at T = 351,168, even for identical
code; kernels/ttt_mlp/cuda_sm90/README.md, "Backward timing noise"): ``--rounds N`` times every
cuda_sm90 build N times per T, the order rotated by one each round, so each build is timed first
once; add a copy of the current sources as a baseline for an identical-code control.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ttt_mlp import make_inputs  # noqa: E402
from triton_dev import time_ms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOP_PER_TOKEN_HEAD = 229_376
VARIANT_NAMES = {0: "plain bf16", 1: "split", 3: "split, fast tanh out", 7: "split, fast tanh",
                 6: "plain bf16, fast tanh"}


FUSED = "(fused output)"  # a pseudo baseline: the current build with the output computed by the scan (v8)
WORKERS = "(output workers {})"  # a pseudo baseline: the current build with at most that many worker clusters
_WORKERS_PREFIX, _WORKERS_SUFFIX = WORKERS.split("{}")


def _backend_settings(source_dir):
    """The cuda_sm90 settings a pseudo baseline stands for (None: a real source directory)."""
    if source_dir == FUSED:
        return {"DECOUPLED_OUTPUT": False}
    if source_dir.startswith(_WORKERS_PREFIX) and source_dir.endswith(_WORKERS_SUFFIX):
        return {"MAX_OUTPUT_WORKERS": int(source_dir[len(_WORKERS_PREFIX):-len(_WORKERS_SUFFIX)])}
    return None


@contextlib.contextmanager
def using_extension(build, source_dir):
    """Run the cuda_sm90 backend on the extension built from ``source_dir`` (None: the current one;
    FUSED: the current one with ``DECOUPLED_OUTPUT`` off; WORKERS.format(n): the current one with at
    most n output-worker clusters)."""
    if source_dir is None:
        yield
        return
    settings = _backend_settings(source_dir)
    if settings is not None:
        from tttgraph.kernels.ttt_mlp import cuda_sm90

        saved = {k: getattr(cuda_sm90, k) for k in settings}
        for k, v in settings.items():
            setattr(cuda_sm90, k, v)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(cuda_sm90, k, v)
        return
    ext = build.extension(source_dir)
    saved = build.extension
    build.extension = lambda: ext
    try:
        yield
    finally:
        build.extension = saved


def layer_inputs(heads, seq_len, seed=0, device="cuda"):
    """B=1, D=64, F=256 bf16 op inputs at the layer's scales (``bench_ttt_mlp.make_inputs``)."""
    return make_inputs(1, heads, seq_len, 64, 256, torch.bfloat16, torch.device(device), seed=seed)


def relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


GRAD_NAMES = ("q", "k", "v", "eta", "ln_w", "ln_b", "w1", "b1", "w2", "b2")


def rotated(items, k):
    """items with the first k % len(items) moved to the end (round k of --rounds)."""
    k %= len(items)
    return items[k:] + items[:k]


def backward_rows(args, inputs, seq_len, n_mb, cuda_sm90, triton_backend, reference):
    """Backward time (from the forward's checkpoints, G = 16) and the max relative error over the ten
    gradients against the float32 reference backward (up to --ref-grads-up-to), for every build and
    round (--rounds), then Triton's (unless --no-triton)."""
    grad_out = torch.randn(1, args.heads, seq_len, 64, generator=torch.Generator().manual_seed(1)).to(
        inputs[0].device, torch.bfloat16)
    _, states = cuda_sm90.forward(*inputs, 64, 1e-6, 16, True)
    ref = None
    if seq_len <= args.ref_grads_up_to:
        up = [x.float() for x in inputs]
        _, ref_states = reference.forward(*up, 64, 1e-6, 16, True)
        ref = reference.backward(grad_out.float(), *up, ref_states, 64, 1e-6, 16)
        del up, ref_states
    out = []
    from tttgraph.kernels.ttt_mlp.cuda_sm90 import build

    builds = [("cuda_sm90 backward", cuda_sm90.backward, None)]
    builds += [(f"cuda_sm90 backward from {b.split(':')[0]}", cuda_sm90.backward, b.split(":")[0])
               for b in args.baseline_dir or ()]
    runs = []
    for rnd in range(args.rounds):
        tag = f" [round {rnd + 1}]" if args.rounds > 1 else ""
        runs += [(name + tag, fn, src) for name, fn, src in rotated(builds, rnd)]
    if not args.no_triton:
        runs.append(("triton backward", triton_backend.backward, None))
    # the current build's gradients, to compare the baselines' with bitwise (an untimed run)
    current = cuda_sm90.backward(grad_out, *inputs, states, 64, 1e-6, 16) if len(builds) > 1 else None
    for name, fn, src in runs:
        def run(fn=fn, src=src):
            with using_extension(build, src):
                return fn(grad_out, *inputs, states, 64, 1e-6, 16)

        ms = time_ms(run, reps=args.repeats)
        grads = run()
        row = dict(name=name, T=seq_len, ms=ms, n_mb=n_mb, err=float("nan"), bwd=True,
                   finite=all(bool(torch.isfinite(g).all()) for g in grads))
        if name.startswith("cuda"):
            row["bitwise"] = all(torch.equal(a, b) for a, b in zip(grads, run(), strict=True))
            if src is not None:
                row["equal_to_current"] = all(torch.equal(a, b) for a, b in zip(grads, current, strict=True))
        if ref is not None:
            errs = {n: relerr(g, r) for n, g, r in zip(GRAD_NAMES, grads, ref, strict=True)}
            row["err"] = max(errs.values())
            print(name, seq_len, "per-gradient rel err:", ", ".join(f"d{n} {e:.2e}" for n, e in errs.items()),
                  flush=True)
        print({k: v for k, v in row.items()}, flush=True)
        out.append(row)
        del grads
    del current
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[18048, 101376, 351168])
    p.add_argument("--heads", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-up-to", type=int, default=351168, help="largest T to run the fp32 reference at")
    p.add_argument("--no-triton", action="store_true", help="time neither Triton's forward nor its backward")
    p.add_argument("--rounds", type=int, default=1,
                   help="time each cuda_sm90 build this many times per T, the order rotated each round")
    p.add_argument("--variants", type=int, nargs="+",
                   help="kernel variants (bits, see ttt_mlp.h; default: the backend's default, cuda_sm90.VARIANT)")
    p.add_argument("--backward", action="store_true", help="also time the backward (cuda_sm90 and Triton)")
    p.add_argument("--ref-grads-up-to", type=int, default=18048, help="largest T for the fp32 reference gradients")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--baseline-dir", nargs="+", metavar="DIR[:VARIANT]",
                   help="also time the kernels built from these copies of the sources (forward variant VARIANT)")
    p.add_argument("--fused", action="store_true",
                   help="also time the current build with the output computed by the scan (DECOUPLED_OUTPUT off)")
    p.add_argument("--output-workers", nargs="+", type=int, metavar="N",
                   help="also time the current build with at most N output-worker clusters (MAX_OUTPUT_WORKERS): "
                        "whether the workers keep up with the scan")
    p.add_argument("--scan-alone", action="store_true",
                   help="also time the current build's scan without the output (without / with checkpoints)")
    p.add_argument("--baseline-variant", type=int, default=7, help="forward variant of a baseline without one")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if any(n < 1 for n in args.output_workers or ()):
        p.error(f"--output-workers needs counts of at least 1, got {args.output_workers}")

    from tttgraph.kernels.ttt_mlp import cuda_sm90, reference
    from tttgraph.kernels.ttt_mlp import triton as triton_backend
    from tttgraph.kernels.ttt_mlp.cuda_sm90 import build

    default_variant = cuda_sm90.VARIANT
    t0 = time.perf_counter()
    reason = build.unavailable_reason()
    baselines = [(b.split(":")[0], int(b.split(":")[1]) if ":" in b else args.baseline_variant)
                 for b in args.baseline_dir or ()]
    if not reason:
        for src, _ in baselines:
            build.extension(src)
    build_s = time.perf_counter() - t0
    if reason:
        sys.exit(f"cuda_sm90 unavailable: {reason}")
    card = torch.cuda.get_device_name()
    print(f"{card}; extension built/loaded in {build_s:.1f} s; output-worker clusters beside "
          f"{args.heads} heads: {cuda_sm90.output_workers(args.heads)}", flush=True)

    rows = []
    for seq_len in args.seq_lens:
        inputs = layer_inputs(args.heads, seq_len)
        n_mb = -(-seq_len // 64)
        ref = None
        if seq_len <= args.ref_up_to:
            with torch.no_grad():
                up = [x.float() for x in inputs]
                t = time.perf_counter()
                ref = reference.forward(*up, 64, 1e-6, 16, False)[0]
                torch.cuda.synchronize()
                ref_ms = (time.perf_counter() - t) * 1e3
                rows.append(dict(name="reference (fp32, one run)", T=seq_len, ms=ref_ms, err=0.0, n_mb=n_mb))
                del up
        builds = [(f"cuda_sm90 v{v} ({VARIANT_NAMES[v]})", v, None) for v in args.variants or [default_variant]]
        builds += [(f"cuda_sm90 v{v} from {src}", v, src) for src, v in baselines]
        if args.fused:
            builds.append((f"cuda_sm90 v{default_variant} fused output", default_variant, FUSED))
        builds += [(f"cuda_sm90 v{default_variant} <= {n} output workers", default_variant, WORKERS.format(n))
                   for n in args.output_workers or ()]
        cases = []
        for rnd in range(args.rounds):
            tag = f" [round {rnd + 1}]" if args.rounds > 1 else ""
            cases += [(name + tag, variant, src) for name, variant, src in rotated(builds, rnd)]

        def run(inputs=inputs, src=None):
            with using_extension(build, src):
                return cuda_sm90.forward(*inputs, 64, 1e-6, 16, False)[0]

        current = {}  # variant -> output of the current sources (untimed), to compare baselines with bitwise
        if len(builds) > 1:
            for v in {variant for _, variant, src in builds if src is None}:
                cuda_sm90.VARIANT = v
                current[v] = run()
        for name, variant, src in cases:
            cuda_sm90.VARIANT = variant
            run_case = functools.partial(run, src=src)
            ms = time_ms(run_case, reps=args.repeats)
            out = run_case()
            again = run_case()
            err = relerr(out, ref) if ref is not None else float("nan")
            rows.append(dict(name=name, T=seq_len, ms=ms, err=err, n_mb=n_mb,
                             bitwise=bool(torch.equal(out, again)), finite=bool(torch.isfinite(out).all())))
            if src is not None and variant in current:
                rows[-1]["equal_to_current"] = bool(torch.equal(out, current[variant]))
            print(rows[-1], flush=True)
            del out, again
        cuda_sm90.VARIANT = default_variant
        del current
        if args.scan_alone:  # the decoupled kernel without ring: no output, with or without checkpoints
            for rnd in range(args.rounds):
                tag = f" [round {rnd + 1}]" if args.rounds > 1 else ""
                for save, what in ((False, "scan alone"), (True, "scan alone + checkpoints")):
                    ms = time_ms(lambda inputs=inputs, save=save: cuda_sm90._run(*inputs, 1e-6, 16, save, False),
                                 reps=args.repeats)
                    rows.append(dict(name=f"cuda_sm90 v{default_variant} {what}{tag}", T=seq_len, ms=ms,
                                     err=float("nan"), n_mb=n_mb))
                    print(rows[-1], flush=True)
        if not args.no_triton:
            def run_triton(inputs=inputs):
                return triton_backend.forward(*inputs, 64, 1e-6, 16, False)[0]

            ms = time_ms(run_triton, reps=args.repeats)
            out = run_triton()
            err = relerr(out, ref) if ref is not None else float("nan")
            rows.append(dict(name="triton", T=seq_len, ms=ms, err=err, n_mb=n_mb))
            print(rows[-1], flush=True)
        if args.backward:
            rows.extend(backward_rows(args, inputs, seq_len, n_mb, cuda_sm90, triton_backend, reference))
        del inputs, ref
        torch.cuda.empty_cache()

    lines = [f"Card: {card}. B=1, H={args.heads}, D=64, F=256, mini-batch 64, bf16; forward without saved "
             f"states, backward (with --backward) from the forward's checkpoints (G = 16); a backward's error is "
             f"nan above --ref-grads-up-to; median of {args.repeats} after a warm-up. Command: "
             f"`python benchmarks/bench_cuda_sm90.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| pass | T | ms | TFLOP/s (fwd FLOP) | us per mini-batch | rel err vs fp32 ref (bwd: max of 10 grads) "
             "| vs Triton |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    triton_ms = {(r["T"], r.get("bwd", False)): r["ms"] for r in rows if r["name"].startswith("triton")}
    for r in rows:
        tflops = FLOP_PER_TOKEN_HEAD * r["T"] * args.heads / (r["ms"] / 1e3) / 1e12
        key = (r["T"], r.get("bwd", False))
        speed = f"{triton_ms[key] / r['ms']:.2f}x" if key in triton_ms else "-"
        flags = "" if r.get("finite", True) and r.get("bitwise", True) else " (NOT finite/deterministic)"
        if "equal_to_current" in r:
            flags += " (bitwise = current)" if r["equal_to_current"] else " (differs from current)"
        lines.append(f"| {r['name']} | {r['T']:,} | {r['ms']:.1f} | {tflops:.1f} | {r['ms'] * 1e3 / r['n_mb']:.2f} | "
                     f"{r['err']:.2e}{flags} | {speed} |")
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
