"""ONNX translations of ``tttgraph::ttt_mlp`` for ``torch.onnx.export(..., dynamo=True)``.

Two forms (see :func:`translation_table`):

``"decompose"`` (default)
    Standard ONNX operators only, so stock ONNX Runtime runs it: a ``Loop`` over the
    ``ceil(T / b)`` mini-batches carrying the inner state (W1, b1, W2, b2, per batch element).
    Each iteration is the reference's ``_inner_step`` then ``_inner_output``
    (kernels/ttt_mlp/reference.py), line for line: gelu-tanh, LayerNorm with the biased variance
    and ``eps`` inside the square root, one explicit gradient step. The outputs leave the Loop as a
    scan output ([B, H, b, D] per iteration, stacked by the runtime), so time and memory are linear
    in T. ``Slice`` clamps the end of the last mini-batch of k, v and eta to T, so a shorter last
    mini-batch is updated as a smaller one (no padding enters the update); only q is padded to
    whole mini-batches, and the padded rows' outputs are dropped. Arithmetic is float32; the
    output is cast back to q's dtype.

``"custom"``
    One node ``tttgraph.TTTMLP`` (domain ``tttgraph``, version 1) with attributes
    ``mini_batch_size`` and ``eps``, for runtimes that bring their own kernel. Its schema is
    registered with ``onnx.defs`` (:func:`register_schema`) so ``onnx.checker`` validates it.

Inputs of both (the op's layout): q, k, v [B, H, T, D], eta [B, H, T], ln_weight, ln_bias [H, D],
w1 [H, D, F], b1 [H, F], w2 [H, F, D], b2 [H, D]; output [B, H, T, D]. The op's four state outputs
are empty in inference (``save_state=False``) and come out as empty float32 tensors.

This module imports onnxscript at the top (its script converter resolves the Loop body's type
annotations from module globals); tttgraph imports it only when exporting to ONNX.
"""

from __future__ import annotations

import functools
import math

import onnx
import onnxscript
import torch
from onnxscript import BOOL, FLOAT, INT64, script

__all__ = ["CUSTOM_DOMAIN", "register_schema", "translation_table"]

CUSTOM_DOMAIN = "tttgraph"
CUSTOM_OP = "TTTMLP"
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715
TRANSLATION_OPSET = 18
Tensor4 = FLOAT[None, None, None, None]  # annotations of the Loop body's carried values
_FLOAT_ZERO = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])


@functools.cache
def _scan_function(opset_version: int):
    """The onnxscript function of the scan, written against the default-domain opset in use."""
    op = getattr(onnxscript, f"opset{opset_version}")

    def ttt_mlp_scan(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size: int, eps: float,
                     backend: str, checkpoint_every: int, save_state: bool):
        mini_batch = op.Constant(value_int=mini_batch_size)
        epsilon = op.Constant(value_float=eps)
        xq_all = op.Cast(q, to=1)
        xk_all = op.Cast(k, to=1)
        xv_all = op.Cast(v, to=1)
        eta_all = op.Unsqueeze(op.Cast(eta, to=1), [-1])
        gamma = op.Unsqueeze(op.Cast(ln_weight, to=1), [1])  # [H, 1, D]
        beta = op.Unsqueeze(op.Cast(ln_bias, to=1), [1])
        bh = op.Shape(q, start=0, end=2)
        seq_len = op.Shape(q, start=2, end=3)
        state_w1 = op.Expand(op.Cast(w1, to=1), op.Concat(bh, op.Shape(w1, start=1), axis=0))
        state_b1 = op.Expand(op.Unsqueeze(op.Cast(b1, to=1), [1]), op.Concat(bh, [1], op.Shape(b1, start=1), axis=0))
        state_w2 = op.Expand(op.Cast(w2, to=1), op.Concat(bh, op.Shape(w2, start=1), axis=0))
        state_b2 = op.Expand(op.Unsqueeze(op.Cast(b2, to=1), [1]), op.Concat(bh, [1], op.Shape(b2, start=1), axis=0))
        steps = op.Squeeze(op.Div(seq_len + mini_batch - 1, mini_batch))
        # q padded with zero rows to whole mini-batches, so that every iteration emits an output of
        # exactly [B, H, b, D] (a Loop scan output must keep its shape) and the runtime stacks them:
        # linear in T. Only q is padded; k, v and eta are sliced with the end clamped to T, so the
        # last update sees exactly its T mod b tokens. The padded rows' outputs are cut off below.
        padded_len = op.Reshape(steps * mini_batch, [1])
        pad_rows = op.Concat(bh, padded_len - seq_len, op.Shape(q, start=3), axis=0)
        xq_padded = op.Concat(xq_all, op.ConstantOfShape(pad_rows, value=_FLOAT_ZERO), axis=2)
        keep_going = op.Cast(op.Constant(value_int=1), to=9)
        gelu_c = op.Constant(value_float=GELU_C)
        gelu_a = op.Constant(value_float=GELU_A)

        # The body is a nested function (a Loop graph) so that the carried values keep their order.
        def loop_body(i: INT64[()], cond: BOOL[()], w1_in: Tensor4, b1_in: Tensor4, w2_in: Tensor4, b2_in: Tensor4):
            start = op.Reshape(i * mini_batch, [1])
            stop = start + mini_batch
            xq = op.Slice(xq_padded, start, stop, [2])
            xk = op.Slice(xk_all, start, stop, [2])
            xv = op.Slice(xv_all, start, stop, [2])
            e = op.Slice(eta_all, start, stop, [2])
            # Inner step (reference._inner_step): loss e * 0.5 * ||LN(MLP(k)) - (v - k)||^2.
            z1 = op.MatMul(xk, w1_in) + b1_in
            t1 = op.Tanh(gelu_c * (z1 + gelu_a * z1 * z1 * z1))
            a = 0.5 * z1 * (1.0 + t1)
            da = 0.5 * (1.0 + t1) + 0.5 * z1 * (1.0 - t1 * t1) * (gelu_c * (1.0 + 3.0 * gelu_a * z1 * z1))
            z2 = op.MatMul(a, w2_in) + b2_in
            zc = z2 - op.ReduceMean(z2, [-1])
            rstd = op.Reciprocal(op.Sqrt(op.ReduceMean(zc * zc, [-1]) + epsilon))
            xh = zc * rstd
            g_xh = gamma * (e * (gamma * xh + beta - (xv - xk)))
            g_z2 = rstd * (g_xh - op.ReduceMean(g_xh, [-1]) - xh * op.ReduceMean(g_xh * xh, [-1]))
            g_z1 = op.MatMul(g_z2, op.Transpose(w2_in, perm=[0, 1, 3, 2])) * da
            w1_out = w1_in - op.MatMul(op.Transpose(xk, perm=[0, 1, 3, 2]), g_z1)
            b1_out = b1_in - op.ReduceSum(g_z1, [-2])
            w2_out = w2_in - op.MatMul(op.Transpose(a, perm=[0, 1, 3, 2]), g_z2)
            b2_out = b2_in - op.ReduceSum(g_z2, [-2])
            # Output with the updated state (reference._inner_output): q + LN(MLP(q)).
            y1 = op.MatMul(xq, w1_out) + b1_out
            u1 = op.Tanh(gelu_c * (y1 + gelu_a * y1 * y1 * y1))
            y2 = op.MatMul(0.5 * y1 * (1.0 + u1), w2_out) + b2_out
            yc = y2 - op.ReduceMean(y2, [-1])
            yh = yc * op.Reciprocal(op.Sqrt(op.ReduceMean(yc * yc, [-1]) + epsilon))
            chunk = xq + gamma * yh + beta  # [B, H, b, D]: the scan output of this iteration
            cond_out = op.Identity(cond)
            return cond_out, w1_out, b1_out, w2_out, b2_out, chunk

        w1_last, b1_last, w2_last, b2_last, chunks = op.Loop(
            steps, keep_going, state_w1, state_b1, state_w2, state_b2, body=loop_body
        )
        # chunks: [N, B, H, b, D] -> [B, H, N * b, D] -> the first T tokens.
        stacked = op.Transpose(chunks, perm=[1, 2, 0, 3, 4])
        flat = op.Reshape(stacked, op.Concat(bh, op.Constant(value_ints=[-1]), op.Shape(q, start=3), axis=0))
        out = op.Slice(flat, [0], seq_len, [2])
        zero = op.Constant(value_ints=[0])
        d = op.Shape(w1, start=1, end=2)
        f = op.Shape(w1, start=2, end=3)
        w1_states = op.ConstantOfShape(op.Concat(bh, zero, d, f, axis=0))
        b1_states = op.ConstantOfShape(op.Concat(bh, zero, f, axis=0))
        w2_states = op.ConstantOfShape(op.Concat(bh, zero, f, d, axis=0))
        b2_states = op.ConstantOfShape(op.Concat(bh, zero, d, axis=0))
        return op.CastLike(out, q), w1_states, b1_states, w2_states, b2_states

    # The exporter counts a function's outputs from its return annotation.
    ttt_mlp_scan.__annotations__["return"] = tuple[(onnxscript.FLOAT,) * 5]
    return script(default_opset=op)(ttt_mlp_scan)


def _empty_states(op, q, w1):
    """The op's four state outputs, empty ([B, H, 0, ...]) as in inference."""
    bh = op.Shape(q, start=0, end=2)
    zero = op.Constant(value_ints=[0])
    d, f = op.Shape(w1, start=1, end=2), op.Shape(w1, start=2, end=3)
    shapes = (
        op.Concat(bh, zero, d, f, axis=0),
        op.Concat(bh, zero, f, axis=0),
        op.Concat(bh, zero, f, d, axis=0),
        op.Concat(bh, zero, d, axis=0),
    )
    return tuple(op.ConstantOfShape(s) for s in shapes)


def _custom(opset_version: int):
    register_schema()  # onnxscript reads the node's outputs from the registered schema
    op = getattr(onnxscript, f"opset{opset_version}")
    custom = onnxscript.values.Opset(CUSTOM_DOMAIN, 1)

    def ttt_mlp(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, backend="auto",
                checkpoint_every=16, save_state=False):
        out = custom.TTTMLP(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2,
                            mini_batch_size=int(mini_batch_size), eps=float(eps))
        return (out, *_empty_states(op, q, w1))

    return ttt_mlp


def translation_table(form: str) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: ``form`` is "decompose" or "custom".

    Written against opset 18, the opset the exporter translates in before converting the model to
    the requested version.
    """
    make = {"decompose": _scan_function, "custom": _custom}[form]
    return {torch.ops.tttgraph.ttt_mlp.default: make(TRANSLATION_OPSET)}


@functools.lru_cache(maxsize=1)
def register_schema() -> None:
    """Register ``tttgraph.TTTMLP`` (version 1) with ``onnx.defs`` so ``onnx.checker`` knows it."""
    from onnx import defs

    if defs.has(CUSTOM_OP, CUSTOM_DOMAIN):
        return
    param = defs.OpSchema.FormalParameter
    names = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")
    attr = defs.OpSchema.Attribute
    schema = defs.OpSchema(
        CUSTOM_OP, CUSTOM_DOMAIN, 1,
        doc="TTT-MLP scan of tttgraph::ttt_mlp: q, k, v [B, H, T, D], eta [B, H, T], ln_weight/ln_bias [H, D], "
            "w1 [H, D, F], b1 [H, F], w2 [H, F, D], b2 [H, D] -> out [B, H, T, D] (dtype of q).",
        inputs=[param(n, "T" if n in ("q", "k", "v") else "P") for n in names],
        outputs=[param("out", "T")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"], "activations"),
            ("P", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"], "eta and weights"),
        ],
        attributes=[
            attr("mini_batch_size", defs.OpSchema.AttrType.INT, "tokens per inner gradient step"),
            attr("eps", defs.OpSchema.AttrType.FLOAT, "LayerNorm epsilon inside the square root"),
        ],
    )
    defs.register_schema(schema)
