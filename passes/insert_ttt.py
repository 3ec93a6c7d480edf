"""Pass: insert a :class:`GatedBidirectionalTTT` after each selected attention.

Where: after the attention and its out-projection, before the block's gate and residual add
(docs/DESIGN.md §3). In the graph that is the last node of the attention's output chain that is still
inside the attention module and still a ``[B, N, C]`` tensor over the attention's query tokens:

- CogVideoX, Wan, LTX, Allegro: the out-projection's output (CogVideoX then splits text/video);
- HunyuanVideo single-stream blocks: the merged heads (they have no out-projection);
- dual-stream blocks with one out-projection per stream (HunyuanVideo double-stream, Mochi): the
  merged heads of the joint sequence, before the split into the two projections;
- Latte's spatial ([B*F, hw, C]) and temporal ([B*hw, F, C]) attentions: the out-projection's output,
  with the TTT unfolding the video to [B, F*hw, C] around its scan.

The new module is registered as ``<attention path>.gated_ttt`` and called as ``call_module`` on
that node; every former user of the node reads the TTT's output instead. Nodes are only added,
never moved, so no read is reordered across an in-place write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tttgraph.analysis import AttentionSite
from tttgraph.config import TTTConfig
from tttgraph.errors import PassContractError, TTTGraphError
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout
from tttgraph.passes.infra import GraphPass, PassResult

SDPA = torch.ops.aten.scaled_dot_product_attention.default

__all__ = ["InsertTTT", "TTTSite", "insertion_point", "placement"]


@dataclass(frozen=True)
class TTTSite:
    """One planned TTT layer: after attention ``site``, over a sequence of ``layout``."""

    site: AttentionSite
    layout: SequenceLayout
    rope_grid: tuple[int, int] | None
    joint_tokens: int | None = None  # joint sequence length at the example inputs (see insertion_point)
    fold: str | None = None  # "hw"/"t": frames or patches folded into the batch (Latte); see GatedBidirectionalTTT
    fold_batch: int = 1
    insertion: str | None = None  # name of the graph node the layer reads (insertion_point), found at planning
    width: int | None = None  # C of that node: the layer's width

    @property
    def module_path(self) -> str:
        return f"{self.site.module_path}.gated_ttt" if self.site.module_path else f"gated_ttt_{self.site.name}"


def _inside(node: torch.fx.Node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return False
    inner = list(stack.values())[-1][0]
    return inner == path or inner.startswith(path + ".")


def _tokens(node: torch.fx.Node):
    val = node.meta.get("val")
    return val.shape[1] if isinstance(val, torch.Tensor) and val.dim() == 3 else None


def insertion_point(
    sdpa: torch.fx.Node, module_path: str, joint_tokens: int | None = None, evaluate: Callable | None = None
) -> torch.fx.Node:
    """Last ``[B, N, C]`` node of the single-user chain from ``sdpa`` inside the attention module.

    N is the query length, or ``joint_tokens`` (the full joint sequence at the example inputs, a
    symbolic size evaluated there by ``evaluate``): Mochi attends over the valid text only and
    pads the output back to the full text length.
    """
    q_tokens = str(sdpa.meta["val"].shape[2])
    best, node = None, sdpa
    while len(node.users) == 1:
        node = next(iter(node.users))
        if node.op != "call_function" or not _inside(node, module_path):
            break
        tokens = _tokens(node)
        at_example = evaluate(tokens) if evaluate is not None and tokens is not None else None
        if tokens is not None and (str(tokens) == q_tokens or (joint_tokens and at_example == joint_tokens)):
            best = node
    if best is None:
        raise TTTGraphError(
            f"no [B, {q_tokens}, C] output of the attention at {module_path or sdpa.name} was found to insert the TTT "
            "layer after; the attention's output does not leave the module as one sequence tensor. Exclude this site "
            "(TTTConfig.exclude) or register an adapter for the model"
        )
    return best


class InsertTTT(GraphPass):
    """Insert one TTT layer per planned site. Counts: ``inserted``."""

    name = "insert_ttt"

    def __init__(self, plan: list[TTTSite], cfg: TTTConfig, evaluate: Callable | None = None,
                 layers: dict[str, torch.nn.Module] | None = None):
        self.plan, self.cfg, self.evaluate = plan, cfg, evaluate
        self.layers = layers or {}  # module path -> an existing layer to insert instead of a new one

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        nodes = {n.name: n for n in gm.graph.nodes}
        counts: Counter = Counter()
        ref = next(gm.parameters(), None)
        for item in self.plan:
            site = item.site
            point = (nodes[item.insertion] if item.insertion is not None else
                     insertion_point(nodes[site.name], site.module_path, item.joint_tokens, self.evaluate))
            width = point.meta["val"].shape[-1]
            if item.module_path in self.layers:
                self._insert(gm, item, point, self.layers[item.module_path])
                counts["inserted"] += 1
                continue
            # Built on the model's device: 42 CogVideoX-5B layers are 1.66B parameters to initialise.
            with torch.device(ref.device if ref is not None else "cpu"):
                layer = GatedBidirectionalTTT(
                    int(width), site.q_shape[1], item.layout, head_dim=site.q_shape[3],
                    mlp_expansion=self.cfg.mlp_expansion, mini_batch_size=self.cfg.mini_batch_size,
                    base_lr=self.cfg.base_lr, eps=self.cfg.eps, backend=self.cfg.backend,
                    rope_grid=item.rope_grid, gate_init=self.cfg.gate_init, bidirectional=self.cfg.bidirectional,
                    fold=item.fold, fold_batch=item.fold_batch,
                )  # fmt: skip
            if ref is not None:
                layer = layer.to(dtype=ref.dtype)
            layer.train(gm.training)
            self._insert(gm, item, point, layer)
            counts["inserted"] += 1
        return PassResult(gm, counts["inserted"] > 0, dict(counts))

    @staticmethod
    def _insert(gm: torch.fx.GraphModule, item: TTTSite, point: torch.fx.Node, layer: torch.nn.Module) -> None:
        gm.add_submodule(item.module_path, layer)
        with gm.graph.inserting_after(point):
            new = gm.graph.call_module(item.module_path, (point,))
        new.meta = {k: v for k, v in point.meta.items() if k in ("val", "tensor_meta", "stack_trace")}
        new.meta["nn_module_stack"] = {**(point.meta.get("nn_module_stack") or {}),
                                       item.module_path: (item.module_path, GatedBidirectionalTTT)}
        point.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)

    def ensures(self, gm: torch.fx.GraphModule) -> None:
        super().ensures(gm)
        calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        for item in self.plan:
            if calls[item.module_path] != 1:
                raise PassContractError(
                    f"{self.name}: {item.module_path} is called {calls[item.module_path]} times, expected once"
                )


# Ops that only move or retype the attention heads: a TTT after them reads the SDPA output's values.
_HEAD_MERGE = {"permute", "transpose", "view", "_unsafe_view", "reshape", "flatten", "clone", "contiguous",
               "_to_copy", "to", "alias", "expand", "constant_pad_nd", "pad", "cat", "unflatten", "squeeze",
               "unsqueeze"}


def placement(sdpa: torch.fx.Node, point: torch.fx.Node) -> str:
    """Where the eager model applies the TTT inserted at ``point``: ``"sdpa"`` or ``"output"``.

    ``"sdpa"`` when only head-merging ops lie between the SDPA and ``point`` (the TTT reads the merged
    heads, before any projection: HunyuanVideo, Mochi); ``"output"`` otherwise (after the attention's
    out-projection, which in every supported family is the attention module's output, possibly split
    into a (video, text) pair).
    """
    node = sdpa
    while node is not point:
        node = next(iter(node.users))
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name not in _HEAD_MERGE:
            return "output"
    return "sdpa"
