"""Time the forward of several copies of ``kernels/ttt_mlp/triton.py`` on one GPU in one process.

    python benchmarks/triton_variants.py A.py B.py ... [--seq-lens 18048,351168]

For kernel tuning: each file is imported as its own module (see ``triton_dev._import_kernels``), run
once (compiles), checked against the float32 reference at the first T (relative L2 error of the
output), then timed (median of 5 CUDA-event timings) at every T. Shapes: B=1, H=48, D=64, F=256,
mini-batch 64, bf16, checkpoints every 16 mini-batches (as the benchmark of record).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from triton_dev import _import_kernels, make_inputs, rel_err, time_ms  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--seq-lens", default="18048")
    opts = p.parse_args()
    seq_lens = [int(s) for s in opts.seq_lens.split(",")]
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    mods = {f: _import_kernels(f)[1] for f in opts.files}
    ref = _import_kernels()[0]
    for i, seq_len in enumerate(seq_lens):
        args = make_inputs(1, 48, seq_len, 64, 256, torch.bfloat16, seed=seq_len)
        r_out = ref.forward(*(a.float() for a in args), 64, 1e-6, 16, False)[0] if i == 0 else None
        for f, tk in mods.items():
            out, _ = tk.forward(*args, 64, 1e-6, 16, True)
            err = f"err {rel_err(out, r_out):.2e}" if r_out is not None else ""
            ms = time_ms(lambda a=args, k=tk: k.forward(*a, 64, 1e-6, 16, True), reps=5)
            print(f"T={seq_len} {os.path.basename(f)}: fwd {ms:.2f} ms {err}", flush=True)
        del args, r_out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
