"""A small forward + backward of the cuda_sm90 backend, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_cuda_sm90.py
"""

import torch

from tttgraph.ops import ttt_mlp


def main():
    g = torch.Generator().manual_seed(0)
    b, h, t, d, f = 1, 2, 200, 64, 256
    q, k, v = (torch.nn.functional.normalize(torch.randn(b, h, t, d, generator=g), dim=-1) for _ in range(3))
    args = [q, k, v, torch.rand(b, h, t, generator=g) * 0.05, 1 + 0.1 * torch.randn(h, d, generator=g),
            0.1 * torch.randn(h, d, generator=g), 0.2 * torch.randn(h, d, f, generator=g),
            0.1 * torch.randn(h, f, generator=g), 0.2 * torch.randn(h, f, d, generator=g),
            0.1 * torch.randn(h, d, generator=g)]
    args = [a.to("cuda", torch.bfloat16 if i < 3 else torch.float32).requires_grad_(True) for i, a in enumerate(args)]
    out = ttt_mlp(*args, backend="cuda_sm90", checkpoint_every=2)
    grads = torch.autograd.grad(out, args, torch.randn_like(out))
    torch.cuda.synchronize()
    print("finite:", all(bool(torch.isfinite(x).all()) for x in (out, *grads)))


if __name__ == "__main__":
    main()
