"""Give a transformed model its blocks back, for activation checkpointing and FSDP2 per block.

``tttgraph.transform`` returns a captured graph in which the transformer blocks are inlined: one
flat list of ops reading parameters by name. Checkpointing a block or sharding it with
``fully_shard`` needs a module whose ``forward`` runs exactly that block. :func:`outline_blocks`
cuts the graph at block boundaries (the ``nn_module_stack`` of each node names its block; the
blocks are contiguous in node order) and moves each block's nodes into a sub-``GraphModule``
called from the outer graph. Nodes keep their order, so no in-place write is reordered.

The result is a :class:`~tttgraph.capture.CapturedModel` taking the model's own call. Its
parameter names are the original ones, prefixed with ``tttgraph_blocks.<i>.inner.`` inside block
``i``; :func:`original_name` maps them back (``tttgraph.save`` works on the original model).
"""

from __future__ import annotations

import copy
import operator
import re

import torch
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from tttgraph.capture import CapturedModel
from tttgraph.errors import TTTGraphError

BLOCKS = "tttgraph_blocks"
_PREFIX = re.compile(rf"^{BLOCKS}\.\d+\.inner\.")


class Block(nn.Module):
    """One outlined block; with ``checkpointing`` its activations are recomputed in backward."""

    def __init__(self, inner: fx.GraphModule, checkpointing: bool):
        super().__init__()
        self.inner, self.checkpointing = inner, checkpointing

    def forward(self, *args):
        if self.checkpointing and torch.is_grad_enabled():
            # Non-reentrant: works with FSDP2's hooks and with inputs that need no grad.
            return checkpoint(self.inner, *args, use_reentrant=False)
        return self.inner(*args)


def original_name(name: str) -> str:
    """The name in the transformed model of a parameter of the outlined model."""
    return _PREFIX.sub("", name)


def _block_of(node: fx.Node, container: str) -> int | None:
    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        parts = path.split(".")
        if len(parts) >= 2 and parts[0] == container and parts[1].isdigit():
            return int(parts[1])
    return None


def _regions(graph: fx.Graph, container: str) -> dict[fx.Node, int]:
    """Node -> block index for every compute node from a block's first node to the last block's last."""
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
    tagged = [i for i, n in enumerate(nodes) if _block_of(n, container) is not None]
    if not tagged:
        return {}
    region, current, order = {}, None, []
    for n in nodes[tagged[0]:tagged[-1] + 1]:
        b = _block_of(n, container)
        if b is not None and b != current:
            if b in order:
                raise TTTGraphError(
                    f"block {container}.{b} is not contiguous in the captured graph; it can't be outlined "
                    "(run without activation checkpointing and FSDP)"
                )
            order.append(b)
            current = b
        region[n] = current
    return region


def outline_blocks(model: CapturedModel, *, checkpointing: bool = False, copy_modules: bool = False,
                   container: str = "transformer_blocks") -> CapturedModel:
    """A copy of ``model``'s graph with each ``container.<i>`` block outlined into a :class:`Block`.

    Parameters are shared with ``model`` (same tensors), except that with ``copy_modules`` the
    modules the graph calls (TTT layers, segment attention) are deep copies, so that sharding the
    result leaves ``model`` untouched. Returns a model with the same call and outputs.
    """
    gm = model.graph_module
    region = _regions(gm.graph, container)
    if not region:
        raise TTTGraphError(f"no {container}.<i> blocks found in the captured graph of {model.info.model_class}")
    outer = fx.Graph()
    outer._codegen = gm.graph._codegen  # the call's pytree specs: shared, never modified
    env: dict[fx.Node, fx.Node] = {}
    attrs: dict[str, object] = {}
    nodes = list(gm.graph.nodes)

    def fetch(graph: fx.Graph, local: dict[fx.Node, fx.Node], node: fx.Node) -> fx.Node:
        if node not in local and node.op == "get_attr":
            local[node] = graph.node_copy(node)
        return local[node]

    i = 0
    while i < len(nodes):
        n = nodes[i]
        if n.op == "get_attr":
            i += 1
            continue
        if n not in region:
            new = outer.node_copy(n, lambda x: fetch(outer, env, x))
            env[n] = new
            if n.op in ("get_attr", "call_module"):
                attrs[n.target] = gm.get_submodule(n.target) if n.op == "call_module" else None
            i += 1
            continue
        b = region[n]
        j = i
        while j < len(nodes) and region.get(nodes[j]) == b:
            j += 1
        members = nodes[i:j]
        inside = set(members)
        inputs: list[fx.Node] = []
        for m in members:
            for a in m.all_input_nodes:
                if a not in inside and a.op != "get_attr" and a not in inputs:
                    inputs.append(a)
        outputs = [m for m in members if any(u not in inside for u in m.users)]
        sub = fx.Graph()
        local: dict[fx.Node, fx.Node] = {}
        for a in inputs:
            local[a] = sub.placeholder(a.name)
            local[a].meta = dict(a.meta)
        for m in members:
            local[m] = sub.node_copy(m, lambda x, sub=sub, local=local: fetch(sub, local, x))
        sub.output(tuple(local[o] for o in outputs))
        inner = fx.GraphModule(gm, sub)
        if copy_modules:
            for m in members:
                if m.op == "call_module":
                    _set_module(inner, m.target, copy.deepcopy(gm.get_submodule(m.target)))
        target = f"{BLOCKS}.{b}"
        attrs[target] = Block(inner, checkpointing)
        call = outer.call_module(target, tuple(env[a] for a in inputs))
        for k, o in enumerate(outputs):
            env[o] = outer.call_function(operator.getitem, (call, k))
            env[o].meta = dict(o.meta)
        i = j
    root = {}
    for n in outer.nodes:
        if n.op == "get_attr":
            root[n.target] = _get_attr(gm, n.target)
        elif n.op == "call_module":
            root[n.target] = attrs[n.target] if n.target in attrs and attrs[n.target] is not None \
                else gm.get_submodule(n.target)
    if copy_modules:
        root = {k: copy.deepcopy(v) if isinstance(v, nn.Module) and not isinstance(v, Block) else v
                for k, v in root.items()}
    result = fx.GraphModule(root, outer)
    for key in ("_in_spec", "_out_spec"):
        if hasattr(gm, key):
            setattr(result, key, getattr(gm, key))
    result.meta.update(gm.meta)
    result.train(gm.training)
    return CapturedModel(result)


def _get_attr(gm: nn.Module, target: str):
    *path, leaf = target.split(".")
    mod = gm.get_submodule(".".join(path)) if path else gm
    return getattr(mod, leaf)


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    *path, leaf = target.split(".")
    parent = root.get_submodule(".".join(path)) if path else root
    setattr(parent, leaf, module)


def block_modules(model: nn.Module) -> list[Block]:
    """The :class:`Block` modules of an outlined model, in order."""
    return [m for m in model.modules() if isinstance(m, Block)]
