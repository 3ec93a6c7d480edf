"""Pass: make the selected attentions segment-local (docs/DESIGN.md §4).

Each SDPA node passed in becomes a ``call_module`` of :class:`SegmentAttention` (gather segments
into the batch dim, one dense SDPA, average the overlap frame), registered next to the attention
module as ``<attention path>.segment_attention``. Self-attention over the joint or the video
sequence is segmented, and so is a cross-attention from video to text (window i reads text chunk
i: the text input carries one chunk per segment) and a text-only self-attention (each chunk to
itself: HunyuanVideo's prompt refiner). Attention within one frame (Latte's spatial blocks) is
already local and is not passed in. Run only when segmentation is on.
"""

from __future__ import annotations

from collections import Counter

import torch

from tttgraph.analysis import AttentionSite
from tttgraph.errors import PassContractError
from tttgraph.layout import SequenceLayout
from tttgraph.passes.infra import GraphPass, PassResult
from tttgraph.segment_attention import SegmentAttention

SDPA = torch.ops.aten.scaled_dot_product_attention.default

__all__ = ["SegmentAttentionPass"]


class SegmentAttentionPass(GraphPass):
    """Rewrite ``sites`` (name -> (site, layout)) into segment-local attention.

    Counts: ``self``, ``cross`` and ``text`` rewritten, ``skipped_*`` with the reason.
    """

    name = "segment_attention"

    def __init__(self, sites: dict[str, tuple[AttentionSite, SequenceLayout]]):
        for name, (_, layout) in sites.items():
            if layout.frames_per_segment is None:
                raise PassContractError(f"{self.name}: site {name} has no segments (frames_per_segment is None)")
        self.sites = sites

    def requires(self, gm: torch.fx.GraphModule) -> None:
        super().requires(gm)
        names = {n.name for n in gm.graph.nodes if n.target is SDPA}
        missing = sorted(set(self.sites) - names)
        if missing:
            raise PassContractError(f"{self.name}: attention nodes {missing} are not in the graph")

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        counts: Counter = Counter()
        self.skipped: set[str] = set()
        nodes = {n.name: n for n in gm.graph.nodes}
        for name, (site, layout) in self.sites.items():
            node = nodes[name]
            kind = site.kind if site.kind in ("cross", "text") else "self"
            if site.is_causal:
                counts["skipped_causal"] += 1
                self.skipped.add(name)
                continue
            q, k, v = node.args[:3]
            mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
            if dropout:
                counts["skipped_dropout"] += 1
                self.skipped.add(name)
                continue
            target = f"{site.module_path}.segment_attention" if site.module_path else f"segment_attention_{name}"
            gm.add_submodule(target, SegmentAttention(layout, kind, node.kwargs.get("scale"), _memory_order(node)))
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(target, (q, k, v, mask))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            counts[kind] += 1
        return PassResult(gm, bool(counts["self"] or counts["cross"] or counts["text"]), dict(counts))

    def ensures(self, gm: torch.fx.GraphModule) -> None:
        super().ensures(gm)
        left = ({n.name for n in gm.graph.nodes if n.target is SDPA} & set(self.sites)) - self.skipped
        if left:
            raise PassContractError(f"{self.name}: {sorted(left)} were selected but not rewritten")


def _memory_order(node: torch.fx.Node) -> tuple[int, ...]:
    """Dims of the SDPA output from outermost to innermost in memory, as the capture recorded them.

    Strides with data-dependent sizes (Mochi) can't be compared; SDPA's own kernels lay the
    output out as [B, N, H, D] in memory, which is the default then.
    """
    val = node.meta["val"]
    try:
        return tuple(sorted(range(val.dim()), key=lambda d: -int(val.stride()[d])))
    except Exception:  # GuardOnDataDependentSymNode and friends
        return (0, 2, 1, 3)
