"""Export the tiny transformed CogVideoX and Wan models: time, file size, ONNX Runtime vs PyTorch.

Each model is transformed with segments of 2 latent frames + 1 overlap (4 text tokens per segment,
TTT gates 0.5, mini-batch 16), exported once to ``.pt2`` and once to ONNX (opset 23, TTT as a
``Loop``), and both files are run at every frame count of ``--frames`` from the same file. CPU
inference times are medians over ``--repeats`` calls, PyTorch (the transformed model, eager,
``torch.no_grad``) and ONNX Runtime (CPU provider) in the same process.

    python benchmarks/bench_export.py [--frames 5 9 17] [--repeats 5] [--threads 1] [--append]
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
FAMILIES = ("cogvideox", "wan2.1")


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[5, 9, 17], help="latent frame counts (2n + 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for PyTorch and ONNX Runtime alike (default 1: the shared 2-core machines "
                        "make multi-threaded timings noisy)")
    p.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = p.parse_args(argv)
    if any(f < 3 or f % 2 == 0 for f in args.frames):
        p.error("--frames must be whole segments: 3, 5, 7, ... (2 frames per segment + 1 overlap)")

    import onnx
    import onnxruntime
    import onnxscript

    torch.set_num_threads(args.threads)
    export_rows, run_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            e, r = bench_family(family, args.frames, args.repeats, Path(tmp))
            export_rows += e
            run_rows += r

    cpu = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s) for both runtimes"
    versions = (f"torch {torch.__version__}, onnx {onnx.__version__}, onnxscript {onnxscript.__version__}, "
                f"onnxruntime {onnxruntime.__version__}")
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
        f"Command: `python benchmarks/bench_export.py --frames {' '.join(map(str, args.frames))} "
        f"--repeats {args.repeats} --threads {args.threads}`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
