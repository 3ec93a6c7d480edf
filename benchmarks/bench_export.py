"""Export tiny transformed models (CogVideoX, Wan, HunyuanVideo): time, file size, ONNX Runtime vs PyTorch.

Each model is transformed with segments of 2 latent frames + 1 overlap (4 text tokens per segment,
TTT gates 0.5, mini-batch 16), exported once to ``.pt2`` and once to ONNX (opset 23, TTT as a
``Loop``), and both files are run at every frame count of ``--frames`` from the same file. CPU
inference times are medians over ``--repeats`` calls, PyTorch (the transformed model, eager,
``torch.no_grad``) and ONNX Runtime (CPU provider) in the same process.

    python benchmarks/bench_export.py [--families ...] [--frames 5 9 17] [--repeats 5] [--threads 1] [--append]

``--scan-lengths T ...`` instead times the ONNX form of the TTT op alone (``ttt_op="decompose"``, one
file exported with a dynamic T, B=1, H=2, D=64, F=256, mini-batch 64) in ONNX Runtime at each T,
beside the PyTorch reference backend, to show that the ``Loop`` is linear in T:

    python benchmarks/bench_export.py --scan-lengths 1024 4096 16384 65536 [--repeats 3] [--append]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("cogvideox", "wan2.1", "hunyuanvideo")


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_family(family: str, frames: list[int], repeats: int, folder: Path) -> tuple[list[str], list[str]]:
    import onnxruntime as ort

    from tttgraph import export
    from tttgraph.config import TTTConfig
    from tttgraph.exporter import onnx_feed
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.rewrite import transform

    model = build_tiny(family)
    cfg = TTTConfig(gate_init=0.5, mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    tm = transform(model, cfg, example_inputs(model, 5, text_tokens=8), progress=False)
    pt2 = export(tm, folder / f"{family}.pt2")
    onnx = export(tm, folder / f"{family}.onnx")
    export_rows = [
        f"| {family} | {r.format} | {r.seconds:.1f} | {r.bytes / 1e6:.2f} | {r.frames} |" for r in (pt2, onnx)
    ]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx.path), options, providers=["CPUExecutionProvider"])
    reloaded = torch.export.load(pt2.path).module()
    run_rows = []
    for f in frames:
        inputs = example_inputs(model, f, text_tokens=4 * ((f - 1) // 2), seed=f)
        feed = onnx_feed(inputs)
        graph_inputs = {k: inputs[k] for k in tm.info.graph_inputs}
        with torch.no_grad():
            expected = tm(**inputs, return_dict=False)[0]
            eager = _median_ms(functools.partial(tm, **inputs, return_dict=False), repeats)
            archive = _median_ms(functools.partial(reloaded, **graph_inputs), repeats)
        got = torch.from_numpy(session.run(None, feed)[0])
        runtime = _median_ms(functools.partial(session.run, None, feed), repeats)
        tokens = f * 16 + 4 * ((f - 1) // 2)
        diff = (got - expected).abs().max().item()
        run_rows.append(
            f"| {family} | {f} | {tokens} | {eager:.1f} | {archive:.1f} | {runtime:.1f} | {eager / runtime:.2f}x "
            f"| {diff:.1e} |"
        )
    return export_rows, run_rows


class _ScanModel(torch.nn.Module):
    """One ``tttgraph::ttt_mlp`` with its parameters, as the TTT layers call it."""

    def __init__(self, heads: int, dim: int, hidden: int, mini_batch: int):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.mini_batch = mini_batch
        self.ln_weight = torch.nn.Parameter(torch.ones(heads, dim))
        self.ln_bias = torch.nn.Parameter(torch.zeros(heads, dim))
        self.w1 = torch.nn.Parameter(0.02 * torch.randn(heads, dim, hidden, generator=gen))
        self.b1 = torch.nn.Parameter(torch.zeros(heads, hidden))
        self.w2 = torch.nn.Parameter(0.02 * torch.randn(heads, hidden, dim, generator=gen))
        self.b2 = torch.nn.Parameter(torch.zeros(heads, dim))

    def forward(self, q, k, v, eta):
        from tttgraph.ops import ttt_mlp

        return ttt_mlp(q, k, v, eta, self.ln_weight, self.ln_bias, self.w1, self.b1, self.w2, self.b2,
                       mini_batch_size=self.mini_batch, eps=1e-6, backend="reference")


def bench_scan(lengths: list[int], repeats: int, folder: Path) -> list[str]:
    """Rows ``| T | ORT ms | us per token | reference ms | max abs diff |`` for the standalone TTT op."""
    import onnxruntime as ort

    from tttgraph.exporter import onnx_feed
    from tttgraph.kernels.ttt_mlp.onnx_lowering import translation_table

    heads, dim, hidden, mini_batch = 2, 64, 256, 64
    model = _ScanModel(heads, dim, hidden, mini_batch)
    gen = torch.Generator().manual_seed(1)

    def inputs(t):
        qkv = {n: torch.nn.functional.normalize(torch.randn(1, heads, t, dim, generator=gen), dim=-1) for n in "qk"}
        return {**qkv, "v": qkv["k"] + torch.randn(1, heads, t, dim, generator=gen),
                "eta": 0.1 / dim * torch.rand(1, heads, t, generator=gen)}

    seq = torch.export.Dim("T", min=2, max=2**22)
    with torch.no_grad():
        spec = {n: {2: seq} for n in ("q", "k", "v", "eta")}
        ep = torch.export.export(model, (), kwargs=inputs(100), dynamic_shapes=spec)
    path = folder / "ttt_scan.onnx"
    torch.onnx.export(ep, (), str(path), dynamo=True, custom_translation_table=translation_table("decompose"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for t in lengths:
        x = inputs(t)
        feed = onnx_feed(x)
        with torch.no_grad():
            expected = model(**x)
            reference = _median_ms(functools.partial(model, **x), repeats)
        got = torch.from_numpy(session.run(None, feed)[0])
        runtime = _median_ms(functools.partial(session.run, None, feed), repeats)
        diff = (got - expected).abs().max().item()
        rows.append(f"| {t:,} | {runtime:.1f} | {1e3 * runtime / t:.2f} | {reference:.1f} | {diff:.1e} |")
    return rows


def _environment(threads: int) -> tuple[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    cpu = f"{platform.machine()}, {os.cpu_count()} cores, {threads} thread(s) for both runtimes"
    versions = (f"torch {torch.__version__}, onnx {onnx.__version__}, onnxscript {onnxscript.__version__}, "
                f"onnxruntime {onnxruntime.__version__}")
    return cpu, versions


def main_scan(args) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_scan(args.scan_lengths, args.repeats, Path(tmp))
    cpu, versions = _environment(args.threads)
    lines = [
        "### ONNX form of the TTT scan: time against T",
        "",
        f"`tttgraph::ttt_mlp` alone (B=1, H=2, D=64, F=256, mini-batch 64), exported once with a dynamic T "
        f"(`ttt_op=\"decompose\"`: a `Loop` whose per-mini-batch outputs are scan outputs) and run in ONNX Runtime "
        f"(CPU provider) at each T; reference = the PyTorch reference backend, same process. CPU: {cpu}; {versions}. "
        f"Median of {args.repeats} calls (ms).",
        "",
        "| T | ONNX Runtime ms | us per token | PyTorch reference ms | max abs diff |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Command: `python benchmarks/bench_export.py --scan-lengths {' '.join(map(str, args.scan_lengths))} "
        f"--repeats {args.repeats} --threads {args.threads}`",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"model families (default {FAMILIES})")
    p.add_argument("--frames", type=int, nargs="+", default=[5, 9, 17], help="latent frame counts (2n + 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for PyTorch and ONNX Runtime alike (default 1: the shared 2-core machines "
                        "make multi-threaded timings noisy)")
    p.add_argument("--scan-lengths", type=int, nargs="+",
                   help="time the ONNX TTT scan alone at these sequence lengths instead of the tiny models")
    p.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.scan_lengths:
        if min(args.scan_lengths) < 2:
            p.error("--scan-lengths must be >= 2")
        _emit(main_scan(args), args.append)
        return
    if any(f < 3 or f % 2 == 0 for f in args.frames):
        p.error("--frames must be whole segments: 3, 5, 7, ... (2 frames per segment + 1 overlap)")

    export_rows, run_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            e, r = bench_family(family, args.frames, args.repeats, Path(tmp))
            export_rows += e
            run_rows += r

    cpu, versions = _environment(args.threads)
    lines = [
        "## Export (issue #8)",
        "",
        f"Tiny transformed models (2 blocks, 4x4 tokens per frame; segments of 2 latent frames + 1 overlap, "
        f"4 text tokens per segment; TTT gates 0.5, mini-batch 16) on CPU ({cpu}; {versions}). "
        "One file per format, exported with dynamic frames at 5 frames and run at every frame count below.",
        "",
        "| model | format | export s | file MB | frames accepted |",
        "|---|---|---|---|---|",
        *export_rows,
        "",
        f"CPU inference, median of {args.repeats} calls (ms); ONNX is opset 23 with each TTT scan as a Loop "
        "(stock ONNX Runtime, CPU provider); max abs diff is ONNX Runtime against eager PyTorch (fp32):",
        "",
        "| model | latent frames | tokens | PyTorch eager | pt2 reloaded | ONNX Runtime | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
        *run_rows,
        "",
        f"Command: `python benchmarks/bench_export.py --families {' '.join(args.families)} "
        f"--frames {' '.join(map(str, args.frames))} "
        f"--repeats {args.repeats} --threads {args.threads}`",
    ]
    _emit("\n".join(lines), args.append)


def _emit(text: str, append: bool) -> None:
    print(text)
    if append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
