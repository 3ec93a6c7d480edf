"""Read-only analysis of a captured graph: attention sites and the token layout.

Every attention is one ``aten.scaled_dot_product_attention.default`` node (run
``tttgraph.passes.normalize_attention`` first for manual matmul-softmax-matmul spellings).
For each, :class:`AttentionSite` records the owning module (from ``nn_module_stack``), the
q/k/v shapes ``[B, H, L, D]`` at the example inputs, what the sequence holds, its
out-projection(s) and the add node(s) where its output re-enters the residual stream.
The layout comes from the model family's adapter (:mod:`tttgraph.adapters`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import torch
from torch.fx import _pytree as fx_pytree
from torch.utils import _pytree as pytree

from tttgraph.adapters import GenericAdapter, TokenLayout, get_adapter
from tttgraph.capture import capture_info
from tttgraph.errors import LayoutInferenceError, NoAttentionFoundError

__all__ = ["Analysis", "AttentionSite", "TokenLayout", "analyse", "find_attention_sites", "to_networkx"]

SDPA = torch.ops.aten.scaled_dot_product_attention.default
_ADDS = (torch.ops.aten.add.Tensor,)

SiteKind = Literal["joint", "video", "cross", "text", "other"]


@dataclass(frozen=True)
class AttentionSite:
    """One attention of the captured graph.

    ``kind``: ``"joint"`` self-attention over text+video tokens, ``"video"`` self-attention over
    video tokens only, ``"cross"`` video queries attending to text keys/values, ``"text"``
    self-attention over text only (e.g. a prompt refiner), ``"other"`` anything else.
    ``axes`` says which video axes a ``"video"``/``"joint"`` sequence spans: ``"thw"`` all tokens,
    ``"hw"`` one frame (spatial attention, frames in the batch), ``"t"`` one patch over time.
    Shapes are ``[B, H, L, D]`` evaluated at the example inputs; ``data_dependent`` marks a length
    that depends on input values (Mochi's valid-text selection). ``computed_by`` is ``"sdpa"`` for an SDPA
    node (``name``), or ``"module"`` for an attention module whose attention is not an SDPA call (linear
    attention, FlexAttention: :attr:`~tttgraph.adapters.ModelAdapter.module_attention`); then ``name`` is the
    graph node of the module's output ``[B, N, C]``, and the shapes are the heads the module declares.
    """

    name: str
    index: int
    module_path: str
    module_type: str
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    v_shape: tuple[int, ...]
    kind: SiteKind
    axes: str | None
    has_mask: bool
    is_causal: bool
    scale: float | None
    out_projections: tuple[str, ...]
    residual_adds: tuple[str, ...]
    residual_streams: tuple[str, ...]
    data_dependent: bool = False
    computed_by: str = "sdpa"


@dataclass(frozen=True)
class Analysis:
    """Result of :func:`analyse`: the sites in graph order and the token layout."""

    sites: tuple[AttentionSite, ...]
    layout: TokenLayout
    adapter: str

    def by_kind(self, *kinds: str) -> tuple[AttentionSite, ...]:
        return tuple(s for s in self.sites if s.kind in kinds)


def to_networkx(gm: torch.fx.GraphModule) -> nx.DiGraph:
    """The data-flow graph of ``gm`` (node names; an edge from each input node to its user)."""
    graph = nx.DiGraph()
    for node in gm.graph.nodes:
        graph.add_node(node.name)
        for inp in node.all_input_nodes:
            graph.add_edge(inp.name, node.name)
    return graph


def _symbol_values(gm: torch.fx.GraphModule, inputs: Mapping[str, Any]) -> dict:
    """Map each plain symbolic input size (e.g. the frame symbol) to its size in ``inputs``, and each
    data-dependent size (an unbacked symbol ``u0``...) to its value at ``inputs`` (:func:`_unbacked_values`)."""
    leaves = pytree.tree_leaves(dict(inputs))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = {}
    for leaf, node in zip(leaves, placeholders, strict=False):
        val = node.meta.get("val")
        if isinstance(leaf, torch.Tensor) and isinstance(val, torch.Tensor):
            for got, size in zip(leaf.shape, val.shape, strict=False):
                if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                    values[size.node.expr] = int(got)
    values.update(_unbacked_values(gm, inputs))
    return values


_UNBACKED_KEY = "tttgraph_unbacked_sizes"


def _unbacked(size: Any) -> bool:
    return isinstance(size, torch.SymInt) and size.node.expr.is_Symbol and str(size.node.expr).startswith("u")


def _unbacked_values(gm: torch.fx.GraphModule, inputs: Mapping[str, Any]) -> dict:
    """The data-dependent sizes of ``gm`` at ``inputs``, read off one run of the graph on them.

    A length that depends on tensor values (HunyuanVideo 1.5 gathers each sample's valid text tokens
    with boolean masks; Mochi its valid text) is an unbacked symbol in the graph, with no value at
    capture; the run gives each symbol that is a node's size its value. Once per graph and inputs.
    """
    defining = [n for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)
                and any(_unbacked(s) for s in n.meta["val"].shape)]
    if not defining:
        return {}
    key = tuple(id(x) for x in pytree.tree_leaves(dict(inputs)))
    cached = gm.meta.get(_UNBACKED_KEY)
    if cached is not None and cached[0] == key:
        return cached[1]
    wanted, values = set(defining), {}

    class _Sizes(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node in wanted and isinstance(out, torch.Tensor):
                for size, got in zip(node.meta["val"].shape, out.shape, strict=False):
                    if _unbacked(size):
                        values[size.node.expr] = int(got)
            return out

    spec = getattr(gm.graph._codegen, "pytree_info", None)
    flat = (pytree.tree_leaves(dict(inputs)) if spec is None or spec.in_spec is None
            else fx_pytree.tree_flatten_spec(([], dict(inputs)), spec.in_spec))
    with torch.no_grad():
        _Sizes(gm).run(*flat, enable_io_processing=False)
    gm.meta[_UNBACKED_KEY] = (key, values)
    return values


def _concrete(size: Any, values: dict, unbacked: int | None) -> tuple[int | None, bool]:
    """Evaluate one size at the example; unbacked symbols (data-dependent) take ``unbacked``."""
    if isinstance(size, int):
        return size, False
    expr = size.node.expr
    free = {s: values[s] for s in expr.free_symbols if s in values}
    rest = [s for s in expr.free_symbols if s not in values]
    data_dependent = any(str(s).startswith("u") for s in expr.free_symbols)  # unbacked, resolved or not
    if rest and unbacked is not None:
        free.update(dict.fromkeys(rest, unbacked))
    out = expr.xreplace(free)
    if isinstance(out, int):  # a bare symbol is replaced by the plain int itself
        return out, data_dependent
    if out.is_number:
        return int(out), data_dependent
    hint = size.node.hint
    return (int(hint) if hint is not None else None), data_dependent


def size_at_example(gm: torch.fx.GraphModule, inputs: Mapping[str, Any]):
    """A function mapping a (symbolic) size of ``gm`` to its int value at ``inputs`` (None if unknown)."""
    values = _symbol_values(gm, inputs)
    return lambda size: _concrete(size, values, None)[0]


def _shape(node: torch.fx.Node, values: dict, unbacked: int | None) -> tuple[tuple, bool]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return (), False
    dims = [_concrete(s, values, unbacked) for s in val.shape]
    return tuple(d for d, _ in dims), any(dd for _, dd in dims)


def _module(node: torch.fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    return path, cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))


def _classify(lq, lk, layout: TokenLayout | None) -> tuple[SiteKind, str | None]:
    if layout is None or lq is None or lk is None:
        return "other", None
    text = layout.text_tokens
    if lq != lk:
        return ("cross", None) if text and lk == text else ("other", None)
    if layout.order != "video_only" and lq == layout.joint_tokens:
        return "joint", "thw"
    if lq == layout.video_tokens:
        return "video", "thw"
    if lq == layout.tokens_per_frame:
        return "video", "hw"
    if lq == layout.frames:
        return "video", "t"
    if text and lq == text:
        return "text", None
    return "other", None


def _residual(gm, graph: nx.DiGraph, sdpa: torch.fx.Node, layout: TokenLayout | None):
    """Adds where the attention output joins a tensor computed before the attention.

    The residual stream ``x`` is an ancestor of the attention's query; the first adds (none
    downstream of another) with one operand from the attention and the other from ``x`` of the
    same shape are where the output re-enters the stream. Returns (adds, streams, out-proj paths).
    """
    after = nx.descendants(graph, sdpa.name)
    before = nx.ancestors(graph, sdpa.name)
    nodes = {n.name: n for n in gm.graph.nodes}
    position = {name: i for i, name in enumerate(nodes)}
    found = []
    for name in after:
        node = nodes[name]
        if node.target not in _ADDS or len(node.all_input_nodes) != 2:
            continue
        a, b = node.all_input_nodes
        for branch, other in ((a, b), (b, a)):
            other = _through_casts(other)
            if (branch.name in after or branch is sdpa) and other.name in before and other.op != "get_attr":
                if _same_shape(other, node):
                    found.append(name)
                    break
    found = set(found)
    first = [n for n in found if not (nx.ancestors(graph, n) & found)]
    first.sort(key=position.__getitem__)
    streams = tuple(_stream(nodes[n], layout) for n in first)
    upstream = set().union(*(nx.ancestors(graph, n) for n in first)) if first else set()
    path = _module(sdpa)[0]
    projs = []
    for name in after & upstream:
        node = nodes[name]
        mod = _module(node)[0]
        inside = bool(path) and mod.startswith(path + ".")
        if node.target is torch.ops.aten.linear.default and inside and mod not in projs:
            projs.append(mod)
    return tuple(first), streams, tuple(sorted(projs))


# Ops that keep a tensor's value up to dtype: the un-decomposed export graph casts the residual
# stream (``x.float()``, ``type_as``) next to the add, after the attention.
_CASTS = {
    torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout, torch.ops.aten.type_as.default,
    torch.ops.aten._to_copy.default, torch.ops.aten.clone.default, torch.ops.aten.alias.default,
}


def _through_casts(node: torch.fx.Node) -> torch.fx.Node:
    while node.op == "call_function" and node.target in _CASTS and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def _same_shape(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.dim() == vb.dim() and all(
        str(x) == str(y) for x, y in zip(va.shape, vb.shape, strict=True)
    )


def _stream(node: torch.fx.Node, layout: TokenLayout | None) -> str:
    val = node.meta.get("val")
    if layout is None or not isinstance(val, torch.Tensor) or val.dim() < 2:
        return "unknown"
    size = val.shape[1]
    hint = size if isinstance(size, int) else size.node.hint
    if layout.order != "video_only" and hint == layout.joint_tokens:
        return "joint"
    # Latte folds frames (spatial blocks) or patches (temporal blocks) into the batch.
    if hint in (layout.video_tokens, layout.tokens_per_frame, layout.frames):
        return "video"
    if hint == layout.text_tokens:
        return "text"
    return "unknown"


def _joint_order(sdpa: torch.fx.Node, text_tokens: int, values: dict) -> str | None:
    """``"text_first"``/``"video_first"`` from a concatenation of text and video feeding the query."""
    queue, seen = deque([(sdpa.args[0], 0)]), set()
    while queue:
        node, depth = queue.popleft()
        if not isinstance(node, torch.fx.Node) or node in seen or depth > 12:
            continue
        seen.add(node)
        if node.target is torch.ops.aten.cat.default and len(node.args[0]) == 2:
            dim = node.args[1] if len(node.args) > 1 else 0
            sizes = [_concrete(p.meta["val"].shape[dim], values, text_tokens)[0] for p in node.args[0]]
            if sizes[0] == text_tokens and sizes[1] != text_tokens:
                return "text_first"
            if sizes[1] == text_tokens and sizes[0] != text_tokens:
                return "video_first"
        queue.extend((inp, depth + 1) for inp in node.all_input_nodes)
    return None


def find_attention_sites(
    gm: torch.fx.GraphModule, layout: TokenLayout | None, inputs: Mapping[str, Any]
) -> tuple[AttentionSite, ...]:
    """Every SDPA node of ``gm`` as an :class:`AttentionSite`, in graph order."""
    values = _symbol_values(gm, inputs)
    unbacked = layout.text_tokens if layout is not None else None
    graph = to_networkx(gm)
    sites = []
    for node in gm.graph.nodes:
        if node.target is not SDPA:
            continue
        (q, dq), (k, dk), (v, dv) = (_shape(a, values, unbacked) for a in node.args[:3])
        kind, axes = _classify(q[-2] if q else None, k[-2] if k else None, layout)
        adds, streams, projs = _residual(gm, graph, node, layout)
        path, cls = _module(node)
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        causal = node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)
        sites.append(AttentionSite(
            name=node.name, index=len(sites), module_path=path, module_type=cls, q_shape=q, k_shape=k,
            v_shape=v, kind=kind, axes=axes, has_mask=mask is not None, is_causal=bool(causal),
            scale=node.kwargs.get("scale"), out_projections=projs, residual_adds=adds,
            residual_streams=streams, data_dependent=dq or dk or dv,
        ))
    return tuple(sites)


def analyse(
    gm: torch.fx.GraphModule, model: torch.nn.Module, example_inputs: Mapping[str, Any] | None = None,
    adapter: Any = None,
) -> Analysis:
    """Attention sites and token layout of ``gm``, captured from ``model`` (read-only).

    ``example_inputs`` default to the ones used at capture; sizes are evaluated at them. ``adapter``:
    the model's adapter when the caller has it already.
    Raises :class:`~tttgraph.errors.NoAttentionFoundError` when the graph has no SDPA node and
    :class:`~tttgraph.errors.LayoutInferenceError` when the layout cannot be determined.
    """
    info = capture_info(gm)
    inputs = dict(info.example_inputs if example_inputs is None else example_inputs)
    inputs = {name: inputs[name] for name in info.graph_inputs if name in inputs}
    adapter = adapter or get_adapter(model)
    if not any(n.target is SDPA for n in gm.graph.nodes) and not adapter.module_attention:
        ops = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        shown = ", ".join(ops[:25]) + (" ..." if len(ops) > 25 else "")
        raise NoAttentionFoundError(
            f"no aten.scaled_dot_product_attention.default node among {len(gm.graph.nodes)} nodes of the "
            f"captured {info.model_class} (ops seen: {shown}); "
            f"run tttgraph.passes.normalize_attention first if attention is written as "
            f"matmul -> softmax -> matmul, or check that the model has attention layers"
        )
    if isinstance(adapter, GenericAdapter):
        layout = _generic_layout(gm, model, inputs, adapter)
    else:
        layout = adapter.layout(model, inputs)
    sites = find_attention_sites(gm, layout, inputs)
    sites += module_attention_sites(gm, model, layout, adapter.module_attention, len(sites))
    return Analysis(sites=sites, layout=layout, adapter=adapter.name)


def module_attention_sites(
    gm: torch.fx.GraphModule, model: torch.nn.Module, layout: TokenLayout, patterns: tuple[str, ...], start: int = 0
) -> tuple[AttentionSite, ...]:
    """Sites for the attention modules matching ``patterns`` (globs over module paths) that compute attention
    without SDPA: each site is the module's output, the last ``[B, N, C]`` node of the graph inside it.

    The module's sequence must be the video's tokens (self-attention over the whole video); its heads are
    ``module.heads`` (diffusers' ``Attention``) or ``num_heads``.
    """
    from tttgraph.config import _compile

    found = []
    for path, module in model.named_modules():
        if not path or not any(_compile(p).fullmatch(path) for p in patterns):
            continue
        inside = [n for n in gm.graph.nodes if _module_path_within(n, path)]
        outputs = [n for n in inside if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].dim() == 3]
        if not outputs:
            continue  # not called in this capture (e.g. a branch the example does not take)
        out = outputs[-1]
        batch, tokens, width = (int(d) if isinstance(d, int) else d.node.hint for d in out.meta["val"].shape)
        if tokens != layout.video_tokens:
            raise LayoutInferenceError(
                f"{path} ({type(module).__name__}) is listed as an attention module over the video, but its output "
                f"has {tokens} tokens where the video has {layout.video_tokens}; list only self-attentions over "
                "the whole video in the adapter's module_attention"
            )
        heads = int(getattr(module, "heads", None) or getattr(module, "num_heads", None) or 1)
        shape = (batch, heads, tokens, width // heads)
        found.append(AttentionSite(
            name=out.name, index=start + len(found), module_path=path, module_type=type(module).__name__,
            q_shape=shape, k_shape=shape, v_shape=shape, kind="video", axes="thw", has_mask=False, is_causal=False,
            scale=None, out_projections=(), residual_adds=(), residual_streams=(), computed_by="module",
        ))
    return tuple(found)


def _module_path_within(node: torch.fx.Node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(p == path or p.startswith(path + ".") for p, _ in stack.values())


def _generic_layout(gm, model, inputs, adapter: GenericAdapter) -> TokenLayout:
    raw = find_attention_sites(gm, None, inputs)
    lengths = [s.q_shape[-2] for s in raw if s.q_shape and s.q_shape[-2] == s.k_shape[-2] and s.q_shape[-2]]
    text_in = inputs.get("encoder_hidden_states")
    text = int(text_in.shape[1]) if isinstance(text_in, torch.Tensor) and text_in.dim() == 3 else 0
    values = _symbol_values(gm, inputs)
    order = None
    if text:
        for node in gm.graph.nodes:
            if node.target is SDPA:
                order = order or _joint_order(node, text, values)
    return adapter.infer(model, inputs, lengths, order)
