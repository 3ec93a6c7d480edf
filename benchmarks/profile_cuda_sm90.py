"""One cuda_sm90 forward or backward at B=1, H=48, layer-scale inputs, for Nsight Compute.

    ncu --clock-control none -k regex:ttt_mlp_bwd --launch-skip 1 --launch-count 1 \\
        python benchmarks/profile_cuda_sm90.py --pass bwd --seq-len 4096
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cuda_sm90 import layer_inputs  # noqa: E402

from tttgraph.kernels.ttt_mlp import cuda_sm90  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass", dest="which", choices=["fwd", "bwd"], default="bwd")
    p.add_argument("--seq-len", type=int, default=4096)
    args = p.parse_args()
    x = layer_inputs(48, args.seq_len)
    _, states = cuda_sm90.forward(*x, 64, 1e-6, 16, True)
    grad_out = torch.randn_like(x[0])
    for _ in range(2):
        if args.which == "fwd":
            cuda_sm90.forward(*x, 64, 1e-6, 16, False)
        else:
            cuda_sm90.backward(grad_out, *x, states, 64, 1e-6, 16)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
