"""Fixes so that the dynamo exporter's ONNX files mean what the torch graph means and run in ONNX Runtime.

Each fix is one gap found by exporting every tiny family of ``tttgraph/models/tiny.py`` and running
the file in ONNX Runtime 1.32 (CPU provider):

``aten.squeeze.dim`` on a dim that is not 1 (Allegro's ``hidden_states.squeeze(1)`` of ``[B, N, C]``)
    torch leaves the tensor as it is; onnxscript's translation emits ``Squeeze(axes=[dim])`` anyway,
    which ONNX Runtime rejects. :func:`translation_overrides` squeezes only a dim that is statically
    1; a symbolic dim is >= 2 (torch.export specialises sizes 0 and 1), so the op is an Identity.
``Where`` on bool values (HunyuanVideo's attention mask, ``masked_fill`` of a bool tensor)
    valid ONNX, but ONNX Runtime has no CPU kernel for a bool ``Where``: rewritten as
    ``Or(And(c, x), And(Not(c), y))``, which both ONNX Runtime and TensorRT run (TensorRT takes
    uint8 only at network inputs and outputs, so a detour through uint8 would not do).
``Attention`` whose ``attn_mask`` has a query length of 1 (LTX's text mask ``[B, 1, 1, L]``)
    valid ONNX (the mask broadcasts), but ONNX Runtime's CPU ``Attention`` requires the mask's
    query dim to equal Q's: the mask is expanded to the query length first.
``Attention`` attributes left at their defaults (``softcap=0``, ``qk_matmul_output_mode=0``)
    are dropped: TensorRT's parser lists both as unsupported.

:func:`apply_runtime_fixes` runs the graph rewrites on an ``onnx_ir`` model, subgraphs included,
and returns one line per rewrite that changed something. onnxscript is imported here at the top;
tttgraph imports this module only when exporting to ONNX.
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import ir

__all__ = ["apply_runtime_fixes", "translation_overrides"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _squeeze_dim(self, dim: int):
    op = onnxscript.opset18
    shape = self.shape
    if shape is not None and len(shape) == 0:
        return op.Identity(self)
    if shape is not None and shape[dim] != 1:  # an int other than 1, or a symbolic dim (>= 2 in export)
        return op.Identity(self)
    return op.Squeeze(self, op.Constant(value_ints=[dim]))


def translation_overrides() -> dict:
    """``custom_translation_table`` entries that replace onnxscript translations torch disagrees with."""
    return {torch.ops.aten.squeeze.dim: _squeeze_dim}


def _nodes(model: ir.Model) -> list[ir.Node]:
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


def _is(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in _DEFAULT_DOMAINS


def _bool_where_as_logic(model: ir.Model) -> int:
    """``Where(c, x, y)`` on bool x, y -> ``Or(And(c, x), And(Not(c), y))`` (same broadcasting)."""
    count = 0
    for node in _nodes(model):
        if not _is(node, "Where") or node.outputs[0].dtype != ir.DataType.BOOL:
            continue
        cond, x, y = node.inputs
        keep = ir.node("And", [cond, x])
        other = ir.node("Not", [cond])
        take = ir.node("And", [other.outputs[0], y])
        either = ir.node("Or", [keep.outputs[0], take.outputs[0]])
        for produced in (keep, other, take):
            produced.outputs[0].type = ir.TensorType(ir.DataType.BOOL)
        ir.convenience.replace_nodes_and_values(
            node.graph, node, [node], [keep, other, take, either], [node.outputs[0]], [either.outputs[0]]
        )
        count += 1
    return count


def _drop_default_attention_attributes(model: ir.Model) -> None:
    """Remove ``softcap=0`` and ``qk_matmul_output_mode=0`` (the defaults), which TensorRT's parser rejects."""
    for node in _nodes(model):
        if _is(node, "Attention"):
            for name in ("softcap", "qk_matmul_output_mode"):
                attr = node.attributes.get(name)
                if attr is not None and attr.value == 0:
                    del node.attributes[name]


def _query_length(node: ir.Node, query: ir.Value) -> ir.Node:
    """Shape node giving ``[q_len]``: Q is [B, H, S, D] or [B, S, H * D]."""
    axis = 2 if query.shape is None or len(query.shape) == 4 else 1
    return ir.node("Shape", [query], {"start": axis, "end": axis + 1})


def _attention_mask_to_query_length(model: ir.Model) -> int:
    count = 0
    for node in _nodes(model):
        if not _is(node, "Attention") or len(node.inputs) < 4 or node.inputs[3] is None:
            continue
        query, mask = node.inputs[0], node.inputs[3]
        if mask.shape is None or query.shape is None:
            continue
        q_axis = 2 if len(query.shape) == 4 else 1
        if mask.shape[-2] == query.shape[q_axis]:
            continue
        q_len = _query_length(node, query)
        ones = ir.node("Constant", [], {"value_ints": [1] * (len(mask.shape) - 2)})
        last = ir.node("Constant", [], {"value_ints": [1]})
        target = ir.node("Concat", [ones.outputs[0], q_len.outputs[0], last.outputs[0]], {"axis": 0})
        expand = ir.node("Expand", [mask, target.outputs[0]])
        expand.outputs[0].type = mask.type
        expand.outputs[0].shape = ir.Shape([*mask.shape[:-2], query.shape[q_axis], mask.shape[-1]])
        node.graph.insert_before(node, [q_len, ones, last, target, expand])
        node.replace_input_with(3, expand.outputs[0])
        count += 1
    return count


def apply_runtime_fixes(model: ir.Model) -> list[str]:
    """Rewrite ``model`` in place (see the module docstring); one line per rewrite that applied."""
    notes = []
    if n := _bool_where_as_logic(model):
        notes.append(f"{n} bool Where node(s) written as And/Or/Not (ONNX Runtime has no bool Where kernel)")
    if n := _attention_mask_to_query_length(model):
        notes.append(f"{n} Attention mask(s) expanded to the query length (ONNX Runtime does not broadcast it)")
    _drop_default_attention_attributes(model)
    return notes
