"""Rewrite manual attention (matmul -> scale -> softmax -> matmul) into one SDPA node.

Matched spelling, on tensors ``q [..., Lq, D]``, ``k [..., Lk, D]``, ``v [..., Lk, Dv]`` with the
same leading (batch, head) dims, ``c`` Python numbers::

    p = softmax((q * c_q) @ (k * c_k).transpose(-2, -1) * c, dim=-1)    # or "/ c"
    out = p @ v

becomes ``aten.scaled_dot_product_attention.default(q, k, v, scale=c_q * c_k * c)``, which is
what the analysis and the segment-attention pass look for. Left alone, and counted:
softmax over another dim, a second matmul that is not ``probs @ v`` with v of the same heads,
probabilities used elsewhere, an in-place op between the two matmuls (moving the read of q/k
across it could change values), and rank < 3 operands.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from tttgraph.errors import PassContractError
from tttgraph.passes.infra import GraphPass, PassResult

__all__ = ["NormalizeAttention", "normalize_attention"]

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
_MATMULS = (aten.matmul.default,)
_SOFTMAX = (aten.softmax.int, aten._softmax.default)
_SCALE_OPS = (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar)


@dataclass
class _Match:
    q: torch.fx.Node
    k: torch.fx.Node
    v: torch.fx.Node
    scale: float
    first: torch.fx.Node
    second: torch.fx.Node
    # Nodes of the manual spelling, users before producers, erased once nothing uses them.
    removable: list[torch.fx.Node]


def _strip_scale(node: torch.fx.Node) -> tuple[torch.fx.Node, float, list[torch.fx.Node]]:
    """Peel ``x * c`` / ``c * x`` / ``x / c`` (c a Python number); return (x, product of c, peeled)."""
    factor, peeled = 1.0, []
    while isinstance(node, torch.fx.Node) and node.target in _SCALE_OPS and len(node.args) == 2:
        a, b = node.args
        div = node.target in (aten.div.Tensor, aten.div.Scalar)
        if isinstance(b, (int, float)) and isinstance(a, torch.fx.Node):
            factor *= (1.0 / b) if div else b
            peeled.append(node)
            node = a
        elif not div and isinstance(a, (int, float)) and isinstance(b, torch.fx.Node):
            factor *= a
            peeled.append(node)
            node = b
        else:
            break
    return node, factor, peeled


def _rank(node: torch.fx.Node) -> int:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else -1


def _shape(node: torch.fx.Node) -> tuple[str, ...]:
    # str() compares symbolic sizes by expression, plain ints by value.
    return tuple(str(s) for s in node.meta["val"].shape)


def _untransposed(node: torch.fx.Node) -> torch.fx.Node | None:
    """``k`` if ``node`` is ``k`` with its last two dims swapped, else None."""
    if not isinstance(node, torch.fx.Node):
        return None
    rank = _rank(node)
    if node.target is aten.transpose.int:
        dims = {d % rank for d in node.args[1:3]}
        return node.args[0] if dims == {rank - 2, rank - 1} else None
    if node.target is aten.permute.default:
        perm = [d % rank for d in node.args[1]]
        swapped = list(range(rank - 2)) + [rank - 1, rank - 2]
        return node.args[0] if perm == swapped else None
    return None


def _match(softmax: torch.fx.Node, skipped: Counter) -> _Match | None:
    scores = softmax.args[0]
    rank = _rank(softmax)
    if rank < 3:
        skipped["skipped_rank"] += 1
        return None
    if softmax.args[1] % rank != rank - 1:
        skipped["skipped_softmax_dim"] += 1
        return None
    base, scale, peeled = _strip_scale(scores)
    if not isinstance(base, torch.fx.Node) or base.target not in _MATMULS:
        return None
    q, scale_q, q_peeled = _strip_scale(base.args[0])
    k_scaled = _untransposed(base.args[1])
    if k_scaled is None:
        skipped["skipped_not_qkT"] += 1
        return None
    k, scale_k, k_peeled = _strip_scale(k_scaled)
    users = list(softmax.users)
    if len(users) != 1 or users[0].target not in _MATMULS or users[0].args[0] is not softmax:
        skipped["skipped_probs_reused"] += 1
        return None
    second = users[0]
    v = second.args[1]
    if not _same_heads(q, k, v):
        skipped["skipped_shape"] += 1
        return None
    if _mutation_between(base, second):
        skipped["skipped_mutation"] += 1
        return None
    removable = [second, softmax, *peeled, base, base.args[1], *k_peeled, *q_peeled]
    return _Match(q, k, v, scale * scale_q * scale_k, base, second, removable)


def _same_heads(q, k, v) -> bool:
    nodes = (q, k, v)
    if not all(isinstance(n, torch.fx.Node) and isinstance(n.meta.get("val"), torch.Tensor) for n in nodes):
        return False
    sq, sk, sv = _shape(q), _shape(k), _shape(v)
    if not (len(sq) == len(sk) == len(sv) >= 3):
        return False
    return sq[:-2] == sk[:-2] == sv[:-2] and sq[-1] == sk[-1] and sk[-2] == sv[-2]


def _mutation_between(first: torch.fx.Node, second: torch.fx.Node) -> bool:
    node = first.next
    while node is not second:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            return True
        node = node.next
    return False


def _find(gm: torch.fx.GraphModule, skipped: Counter) -> list[_Match]:
    return [m for n in gm.graph.nodes if n.target in _SOFTMAX and (m := _match(n, skipped)) is not None]


class NormalizeAttention(GraphPass):
    """See the module docstring. ``counts``: ``rewritten`` plus ``skipped_*`` reasons."""

    name = "normalize_attention"

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        skipped: Counter = Counter()
        matches = _find(gm, skipped)
        for m in matches:
            with gm.graph.inserting_before(m.second):
                sdpa = gm.graph.call_function(SDPA, (m.q, m.k, m.v), {"scale": m.scale})
            # The new node stands where the output matmul stood, in the same module.
            keep = ("val", "nn_module_stack", "stack_trace")
            sdpa.meta.update({k: v for k, v in m.second.meta.items() if k in keep})
            m.second.replace_all_uses_with(sdpa)
            for node in m.removable:
                if not node.users:
                    gm.graph.erase_node(node)
        counts = {"rewritten": len(matches), **dict(skipped)}
        return PassResult(gm, bool(matches), counts)

    def ensures(self, gm: torch.fx.GraphModule) -> None:
        super().ensures(gm)
        left = _find(gm, Counter())
        if left:
            raise PassContractError(
                f"{self.name} left {len(left)} manual attention pattern(s) at {[m.second.name for m in left]}"
            )


def normalize_attention(gm: torch.fx.GraphModule) -> PassResult:
    """Run :class:`NormalizeAttention` on ``gm`` (edited in place)."""
    return NormalizeAttention()(gm)

