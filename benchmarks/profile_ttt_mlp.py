"""One TTT-MLP forward or backward (cuda_sm90 or Triton) at B=1, H=48, layer-scale inputs, for Nsight Compute.

    ncu --clock-control none -k regex:ttt_mlp_bwd --launch-skip 1 --launch-count 1 \\
        python benchmarks/profile_ttt_mlp.py --pass bwd --seq-len 4096
    ncu --clock-control none -k regex:_fwd_kernel --launch-skip 1 --launch-count 1 --set full \\
        --import-source yes -o fwd python benchmarks/profile_ttt_mlp.py --backend triton --pass fwd
    ncu --import fwd.ncu-rep --page source --csv --print-source sass > fwd_sass.csv   # stalls per instruction
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cuda_sm90 import layer_inputs  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["cuda_sm90", "triton"], default="cuda_sm90")
    p.add_argument("--pass", dest="which", choices=["fwd", "bwd"], default="bwd")
    p.add_argument("--seq-len", type=int, default=4096)
    args = p.parse_args()
    if args.backend == "triton":
        from tttgraph.kernels.ttt_mlp import triton as kernels
    else:
        from tttgraph.kernels.ttt_mlp import cuda_sm90 as kernels
    x = layer_inputs(48, args.seq_len)
    _, states = kernels.forward(*x, 64, 1e-6, 16, True)
    grad_out = torch.randn_like(x[0])
    for _ in range(2):
        if args.which == "fwd":
            kernels.forward(*x, 64, 1e-6, 16, False)
        else:
            kernels.backward(grad_out, *x, states, 64, 1e-6, 16)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
