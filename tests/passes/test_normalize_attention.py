"""normalize_attention: manual matmul-softmax-matmul attention becomes one SDPA node."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tttgraph.capture import capture
from tttgraph.errors import PassContractError
from tttgraph.passes import NormalizeAttention, PassResult, normalize_attention

SDPA = torch.ops.aten.scaled_dot_product_attention.default
SOFTMAX = (torch.ops.aten.softmax.int, torch.ops.aten._softmax.default)


class ManualAttention(nn.Module):
    """Self-attention written out by hand; ``spelling`` picks how the scale and k^T are written.

    x: [B, L, C] -> [B, L, C] with ``heads`` heads of C / heads dims.
    """

    def __init__(self, dim: int = 16, heads: int = 2, spelling: str = "mul", softmax_dim: int = -1,
                 shared_v_head: bool = False):
        super().__init__()
        self.heads, self.spelling, self.softmax_dim = heads, spelling, softmax_dim
        self.shared_v_head = shared_v_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        d = c // self.heads
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        if self.shared_v_head:
            # One value head broadcast to all query heads: not the same heads, must not rewrite.
            v = v[:, :1]
        if self.spelling == "mul":
            scores = (q @ k.transpose(-2, -1)) * d**-0.5
        elif self.spelling == "div":
            scores = torch.matmul(q, k.permute(0, 1, 3, 2)) / d**0.5
        else:  # "prescaled": q and k each scaled by d^-1/4 before the product
            scores = (q * d**-0.25) @ (k * d**-0.25).transpose(-1, -2)
        probs = scores.softmax(dim=self.softmax_dim)
        out = (probs @ v).transpose(1, 2).reshape(b, n, c)
        return x + self.out(out)


class TwoBlocks(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(ManualAttention(**kwargs) for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _count(gm, targets) -> int:
    return sum(1 for n in gm.graph.nodes if n.target in targets)


def _captured(**kwargs):
    torch.manual_seed(0)
    model = TwoBlocks(**kwargs)
    x = torch.randn(2, 5, 16)
    return model, x, capture(model, {"x": x}, progress=False)


@pytest.mark.parametrize("spelling", ["mul", "div", "prescaled"])
def test_rewrites_manual_attention(spelling):
    model, x, gm = _captured(spelling=spelling)
    assert _count(gm, (SDPA,)) == 0 and _count(gm, SOFTMAX) == 2

    result = normalize_attention(gm)

    assert isinstance(result, PassResult) and result.modified
    assert result.counts["rewritten"] == 2
    assert _count(gm, (SDPA,)) == 2 and _count(gm, SOFTMAX) == 0
    for node in gm.graph.nodes:
        if node.target is SDPA:
            assert node.kwargs["scale"] == pytest.approx(8**-0.5)
            assert node.meta["nn_module_stack"]
    xr = x.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    ref, out = model(xr), gm(x=xg)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    ref.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"softmax_dim": -2}, "skipped_softmax_dim"), ({"shared_v_head": True}, "skipped_shape")],
    ids=["softmax-over-queries", "v-of-other-heads"],
)
def test_leaves_non_attention_alone(kwargs, reason):
    model, x, gm = _captured(**kwargs)
    before = str(gm.graph)

    result = NormalizeAttention()(gm)

    assert not result.modified and result.counts["rewritten"] == 0
    assert result.counts[reason] == 2
    assert str(gm.graph) == before and _count(gm, (SDPA,)) == 0
    torch.testing.assert_close(gm(x=x), model(x), atol=0, rtol=0)


def test_requires_a_graph_module():
    with pytest.raises(PassContractError, match="GraphModule"):
        normalize_attention(nn.Linear(2, 2))
