"""Invariants checked between passes (docs/DESIGN.md §2: RoPE writes in place right before SDPA).

Passes only add nodes and replace a node in place; they never move one. Checking that the nodes
that survive a pass keep their relative order is what guarantees that no read was moved across an
in-place write.
"""

from __future__ import annotations

import torch

from tttgraph.errors import PassContractError

__all__ = ["node_order", "check_order_preserved"]


def node_order(gm: torch.fx.GraphModule) -> list[str]:
    return [n.name for n in gm.graph.nodes]


def check_order_preserved(before: list[str], gm: torch.fx.GraphModule, pass_name: str) -> None:
    """Raise PassContractError if two nodes present before and after ``pass_name`` swapped places."""
    position = {name: i for i, name in enumerate(node_order(gm))}
    kept = [position[name] for name in before if name in position]
    for a, b in zip(kept, kept[1:], strict=False):
        if a > b:
            raise PassContractError(f"{pass_name} reordered existing nodes; passes may only add or replace nodes")
    gm.graph.lint()
