"""Check the Triton backend against the reference on CUDA over a grid of (D, F, mini-batch) shapes.

    python benchmarks/check_triton_shapes.py       (GPU machine; prints one line per shape)
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from tttgraph.ops import ttt_mlp


def main():
    torch.manual_seed(0)
    names = ("q", "k", "v", "eta", "lnw", "lnb", "w1", "b1", "w2", "b2")
    for (dim, hidden), mb, dtype in itertools.product(
        [(16, 64), (32, 128), (64, 256), (16, 256)], [16, 64], [torch.float32, torch.bfloat16]
    ):
        b, h, t = 2, 3, 200
        q, k = (F.normalize(torch.randn(b, h, t, dim, device="cuda"), dim=-1) for _ in range(2))
        v = k + torch.randn_like(k)
        eta = 0.1 / dim / mb * torch.sigmoid(torch.randn(b, h, t, device="cuda"))
        rest = [1 + 0.1 * torch.randn(h, dim, device="cuda"), 0.1 * torch.randn(h, dim, device="cuda"),
                0.2 * torch.randn(h, dim, hidden, device="cuda"), 0.1 * torch.randn(h, hidden, device="cuda"),
                0.2 * torch.randn(h, hidden, dim, device="cuda"), 0.1 * torch.randn(h, dim, device="cuda")]
        args = [q.to(dtype), k.to(dtype), v.to(dtype), eta, *rest]
        leaves = [a.detach().requires_grad_(True) for a in args]
        ref_leaves = [a.detach().float().requires_grad_(True) for a in args]
        go = torch.randn(b, h, t, dim, device="cuda")
        out = ttt_mlp(*leaves, mini_batch_size=mb, backend="triton")
        ref = ttt_mlp(*ref_leaves, mini_batch_size=mb, backend="reference")
        g = torch.autograd.grad(out, leaves, go.to(dtype))
        rg = torch.autograd.grad(ref, ref_leaves, go)

        def rel(x, y):
            return ((x.double() - y.double()).norm() / y.double().norm()).item()

        errs = {n: rel(a, r) for n, a, r in zip(names, g, rg, strict=True)}
        worst = max(errs, key=errs.get)
        print(f"D={dim:3d} F={hidden:3d} mb={mb:2d} {str(dtype)[6:]:8s} out {rel(out, ref):.2e} "
              f"worst grad d{worst} {errs[worst]:.2e}", flush=True)


if __name__ == "__main__":
    main()
