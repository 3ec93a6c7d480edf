"""TensorRT for transformed models: an engine built from the decomposed ONNX file, or torch-tensorrt's dynamo path.

Both need an NVIDIA GPU and ``pip install 'tttgraph[tensorrt]'``; tensorrt and torch_tensorrt are
imported only when one of these functions runs (a :class:`TensorRTUnavailableError` names the
install command when they are missing).

ONNX -> TensorRT (``tttgraph.export(model, "model.engine")``)
    The model is exported to ONNX with each TTT scan as a standard ``Loop`` (``ttt_op="decompose"``;
    TensorRT has no plugin for ``tttgraph.TTTMLP``), the graph is checked against what TensorRT's
    ONNX parser supports (:func:`check_onnx`), and :func:`build_engine` parses it with the TensorRT
    Python API and builds a serialized engine with one optimization profile over the frame count
    (:func:`profile_shapes`: from the fewest segments the export allows to the example's). The
    ONNX file is kept beside the engine for ``trtexec --onnx=...`` or a rebuild on another GPU.
torch-tensorrt (:func:`compile_torch_tensorrt`)
    The same ``ExportedProgram`` goes to ``torch_tensorrt.dynamo.compile``. ``ttt="fallback"``
    (default) leaves each ``tttgraph::ttt_mlp`` node to PyTorch (its CUDA/Triton kernel) and
    builds TensorRT engines for the rest; ``ttt="decompose"`` first replaces the op by its
    reference scan in aten ops (:func:`decompose_ttt`, unrolled over the mini-batches of a static
    frame count) so that the whole graph can go to TensorRT.

What TensorRT's ONNX parser supports is taken from onnx-tensorrt's ``docs/operators.md`` for
TensorRT 10.15 (opsets 9-24); ``Attention`` needs TensorRT 10.14 or newer (older: opset 22, where
attention is exported as MatMul/Softmax). That table also says of ``Loop``: "Scan output length
cannot be dynamic", and the TTT ``Loop``'s trip count comes from the sequence length; whether a
dynamic-frame engine builds is therefore reported as a caution, and ``dynamic_frames=False``
gives a file whose trip counts are constants.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tttgraph.config import atomic_path
from tttgraph.export_program import ExportError, FrameRule, export_program, flat_input_names

__all__ = [
    "TENSORRT_ONNX_OPS", "TensorRTReport", "TensorRTUnavailableError", "build_engine", "check_onnx",
    "compile_torch_tensorrt", "decompose_ttt", "default_opset", "profile_shapes", "require_tensorrt",
    "require_torch_tensorrt",
]

INSTALL = "pip install 'tttgraph[tensorrt]' (tensorrt >= 10 and torch-tensorrt, on a machine with an NVIDIA GPU)"
TENSORRT_OPSETS = (9, 24)
ATTENTION_TENSORRT = (10, 14)  # first TensorRT whose ONNX parser imports Attention

# Operators marked supported ("Y") in onnx-tensorrt docs/operators.md for TensorRT 10.15.
TENSORRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Inputs that TensorRT needs as build-time constants: op -> input index.
_CONSTANT_INPUTS = {
    **{op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze",
                        "CumSum", "TopK")},
    "OneHot": 1,
}


class TensorRTUnavailableError(ExportError):
    """tensorrt or torch_tensorrt is not installed (or cannot load); the message says how to install it."""


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also OSError-like load failures surface as ImportError
        raise TensorRTUnavailableError(f"{what} needs the {module!r} package ({exc}); {INSTALL}") from exc


def require_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailableError`."""
    return _require("tensorrt", "exporting a TensorRT engine")


def require_torch_tensorrt():
    """The ``torch_tensorrt`` module, or :class:`TensorRTUnavailableError`."""
    return _require("torch_tensorrt", "compiling with torch-tensorrt")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def default_opset(trt) -> int:
    """23 (attention as ``Attention``) from TensorRT 10.14 on, else 22 (attention as MatMul/Softmax)."""
    return 23 if _version(trt.__version__) >= ATTENTION_TENSORRT else 22


@dataclass
class TensorRTReport:
    """What :func:`check_onnx` found: ``problems`` stop TensorRT's parser; ``cautions`` may."""

    problems: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)  # op_type -> count, subgraphs included


def check_onnx(model, trt_version: str | None = None) -> TensorRTReport:
    """Check an ONNX model (path, ``onnx.ModelProto`` or ``onnx_ir`` model) against TensorRT's ONNX parser.

    Checks: every node's op is in :data:`TENSORRT_ONNX_OPS` (no custom domains), the opset is in
    :data:`TENSORRT_OPSETS`, ``Attention`` only with TensorRT >= 10.14 and within its restrictions
    (4-D Q/K/V/mask, no KV-cache inputs, one output, no softcap), inputs that must be build-time
    constants are, and uint8 appears only at the graph's inputs and outputs. ``trt_version``: the
    TensorRT to check for (default: the table's, 10.15).
    """
    from onnxscript import ir

    if isinstance(model, (str, Path)):
        model = ir.load(str(model))
    elif not isinstance(model, ir.Model):
        model = ir.from_proto(model)
    report = TensorRTReport()
    version = _version(trt_version) if trt_version else (10, 15)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is not None and not TENSORRT_OPSETS[0] <= opset <= TENSORRT_OPSETS[1]:
        report.problems.append(f"opset {opset} is outside TensorRT's {TENSORRT_OPSETS[0]}-{TENSORRT_OPSETS[1]}")
    unsupported: dict[str, int] = {}
    io = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        report.ops[key] = report.ops.get(key, 0) + 1
        if key not in TENSORRT_ONNX_OPS:
            unsupported[key] = unsupported.get(key, 0) + 1
            continue
        if key == "Attention":
            report.problems += _attention_problems(node, version)
        index = _CONSTANT_INPUTS.get(key)
        if index is not None and len(node.inputs) > index and node.inputs[index] is not None:
            if not _is_constant(node.inputs[index]):
                report.problems.append(f"{key} node {_label(node)!r}: input {index} must be a build-time constant")
        for out in node.outputs:
            if out.dtype == ir.DataType.UINT8 and id(out) not in io:
                report.problems.append(f"{key} node {_label(node)!r} makes a uint8 tensor (TensorRT: inputs/outputs "
                                       f"only)")
    for key, count in sorted(unsupported.items()):
        why = "custom domain: TensorRT needs a plugin" if "." in key else "not supported by TensorRT's ONNX parser"
        report.problems.append(f"{count} {key} node(s): {why}")
    if report.ops.get("Loop") and _has_dynamic_dims(model):
        report.cautions.append(
            "the TTT Loop's trip count and scan-output length follow the dynamic sequence length; onnx-tensorrt "
            "documents 'Scan output length cannot be dynamic' for Loop: if the engine build fails on a Loop, "
            "export with dynamic_frames=False"
        )
    return report


def _label(node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op_type)


def _attention_problems(node, version: tuple[int, ...]) -> list[str]:
    problems = []
    name = f"Attention node {_label(node)!r}"
    if version < ATTENTION_TENSORRT:
        problems.append(f"{name}: TensorRT {'.'.join(map(str, version))} has no Attention (10.14+); export with "
                        f"opset=22")
    for i, value in enumerate(node.inputs[:4]):
        if value is not None and value.shape is not None and len(value.shape) != 4:
            problems.append(f"{name}: input {i} is {len(value.shape)}-D, TensorRT needs 4-D Q, K, V and attn_mask")
    if any(v is not None for v in node.inputs[4:]):
        problems.append(f"{name}: past_key/past_value/nonpad_kv_seqlen inputs are not supported by TensorRT")
    if sum(1 for v in node.outputs if v is not None and v.name) > 1:
        problems.append(f"{name}: only the first output is supported by TensorRT")
    for attr in ("softcap", "qk_matmul_output_mode"):
        if attr in node.attributes:
            problems.append(f"{name}: attribute {attr} is not supported by TensorRT")
    return problems


def _is_constant(value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def _has_dynamic_dims(model) -> bool:
    return any(v.shape is not None and any(not isinstance(d, int) for d in v.shape) for v in model.graph.inputs)


def profile_shapes(ep, input_names: list[str], rule: FrameRule, segments: tuple[int, int, int] | None = None):
    """One TensorRT optimization profile: ``({input: (min_shape, opt_shape, max_shape)}, notes)``.

    Every dynamic dim of ``ep``'s inputs is an expression in the frame symbol (segments n, or frames
    without segments); it is evaluated at ``segments`` = (min, opt, max), default (the export's
    lower bound, the example's, the example's). Dims that depend on another symbol stay at the
    example's size (a note names them).
    """
    tensors = _input_tensors(ep)
    if len(tensors) != len(input_names):
        raise ExportError(f"{len(tensors)} tensor inputs in the exported program but names {input_names}")
    symbol, example = _frame_symbol(tensors, input_names, rule)
    if symbol is None:
        return {n: (tuple(_hint(d) for d in t.shape),) * 3 for n, t in zip(input_names, tensors, strict=True)}, []
    points = _profile_points(rule, example, segments)
    profile, pinned = {}, []
    for name, t in zip(input_names, tensors, strict=True):
        shapes = []
        for value in points:
            shape = []
            for d in t.shape:
                expr = d.node.expr if isinstance(d, torch.SymInt) else None
                if expr is None:
                    shape.append(int(d))
                elif expr.free_symbols <= {symbol}:
                    shape.append(int(expr.subs(symbol, value)))
                else:
                    shape.append(_hint(d))
                    pinned.append(name)
            shapes.append(tuple(shape))
        profile[name] = tuple(shapes)
    notes = []
    if pinned:
        notes.append(f"dims of {sorted(set(pinned))} do not follow the frame count in the graph; the profile pins "
                     f"them at the example's size")
    return profile, notes


def _input_tensors(ep) -> list:
    user = set(ep.graph_signature.user_inputs)
    return [n.meta["val"] for n in ep.graph.nodes
            if n.op == "placeholder" and n.name in user and isinstance(n.meta.get("val"), torch.Tensor)]


def _hint(d) -> int:
    return int(d.node.hint) if isinstance(d, torch.SymInt) else int(d)


def _frame_symbol(tensors, names, rule: FrameRule):
    """(sympy symbol of the frame dim, its value at the example) or (None, None) when static."""
    import sympy

    if rule.kind == "static" or rule.input not in names or rule.axis is None:
        return None, None
    dim = tensors[names.index(rule.input)].shape[rule.axis]
    if not isinstance(dim, torch.SymInt) or len(dim.node.expr.free_symbols) != 1:
        return None, None
    (symbol,) = dim.node.expr.free_symbols
    (value,) = sympy.solve(dim.node.expr - int(dim.node.hint), symbol)
    return symbol, int(value)


def _profile_points(rule: FrameRule, example: int, segments) -> tuple[int, int, int]:
    lo, hi = rule.segments or (1, None)
    if segments is None:
        return (lo, example, example)
    if (not isinstance(segments, (tuple, list)) or len(segments) != 3
            or not all(isinstance(x, int) for x in segments)):
        raise ExportError(f"segments={segments!r} must be three ints (min, opt, max)")
    if not (lo <= segments[0] <= segments[1] <= segments[2]) or (hi is not None and segments[2] > hi):
        raise ExportError(
            f"segments={tuple(segments)} must satisfy {lo} <= min <= opt <= max <= {hi if hi else 'inf'} "
            f"(the range the export allows)"
        )
    return tuple(segments)


def build_engine(onnx_path, engine_path, profile: Mapping[str, tuple], *, fp16: bool = False,
                 workspace_bytes: int | None = None) -> Path:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and write a serialized engine to ``engine_path``.

    ``profile``: input name -> (min, opt, max) shapes (:func:`profile_shapes`). ``fp16`` lets
    TensorRT pick fp16 kernels; ``workspace_bytes`` caps its workspace pool. The engine is written
    atomically. Raises :class:`ExportError` with the parser's or builder's messages.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ExportError(f"no ONNX file at {str(onnx_path)!r}; export one with tttgraph.export(model, 'm.onnx')")
    if workspace_bytes is not None and (not isinstance(workspace_bytes, int) or workspace_bytes <= 0):
        raise ExportError(f"workspace_bytes={workspace_bytes!r} must be a positive int")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if _version(trt.__version__) >= (10,) else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    optimization = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = [n for n in names if n not in profile]
    if missing:
        raise ExportError(f"the profile has no shapes for the engine inputs {missing}; pass min/opt/max for each")
    for name in names:
        optimization.set_shape(name, *profile[name])
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name} (see its log)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return engine_path


def decompose_ttt(ep):
    """``ep`` with every ``tttgraph::ttt_mlp`` replaced by the reference scan in aten ops.

    The scan is unrolled over the mini-batches, so the sequence length must be static: export with
    ``dynamic_frames=False``. Other ops (SDPA included) are left as they are.
    """
    op = torch.ops.tttgraph.ttt_mlp.default
    nodes = [n for n in ep.graph.nodes if n.target is op]
    for node in nodes:
        seq = node.args[0].meta["val"].shape[2]
        if isinstance(seq, torch.SymInt):
            raise ExportError(
                f"decompose_ttt unrolls the TTT scan, which needs a static sequence length, but {node.name} has "
                f"T = {seq}; export with dynamic_frames=False (or keep the op with ttt='fallback')"
            )
    if not nodes:
        return ep
    with warnings.catch_warnings():
        # torch's own decomposition still uses the pytree API it deprecates (copyreg re-creates a LeafSpec).
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        from tttgraph.kernels.ttt_mlp.reference import functional_forward

        return ep.run_decompositions({op: functional_forward})


def compile_torch_tensorrt(model, example_inputs: Mapping[str, Any] | None = None, *, ttt: str = "fallback",
                           dynamic_frames: bool = True, segments: tuple[int, int, int] | None = None,
                           **compile_kwargs):
    """Compile a transformed model with ``torch_tensorrt.dynamo.compile``; returns its compiled module.

    Args:
        model: the model from :func:`tttgraph.transform`, on the GPU.
        example_inputs: forward keyword arguments on the GPU (default: the transform's).
        ttt: "fallback" (each TTT scan stays a PyTorch op, run by its kernel between TensorRT
            engines) or "decompose" (the reference scan in aten ops, all in TensorRT; static frames).
        dynamic_frames: as in :func:`tttgraph.export`; the inputs' (min, opt, max) shapes come from
            :func:`profile_shapes` with ``segments``. Must be False with ``ttt="decompose"``.
        compile_kwargs: passed on (e.g. ``enabled_precisions``, ``min_block_size``).
    """
    if ttt not in ("fallback", "decompose"):
        raise ExportError(f"ttt={ttt!r} is not one of ('fallback', 'decompose')")
    if ttt == "decompose" and dynamic_frames:
        raise ExportError("ttt='decompose' unrolls the scan at the example's length; pass dynamic_frames=False")
    torch_trt = require_torch_tensorrt()
    ep, named, rule, _ = export_program(model, example_inputs, dynamic_frames)
    if ttt == "decompose":
        ep = decompose_ttt(ep)
    else:
        ops = set(compile_kwargs.pop("torch_executed_ops", ())) | {torch.ops.tttgraph.ttt_mlp.default}
        compile_kwargs["torch_executed_ops"] = ops
    names = flat_input_names(named)
    profile, _ = profile_shapes(ep, names, rule, segments)
    leaves, spec = torch.utils._pytree.tree_flatten(named)
    specs, i = [], 0
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            lo, opt, hi = profile[names[i]]
            specs.append(torch_trt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=leaf.dtype))
            i += 1
        else:
            specs.append(leaf)
    kwarg_inputs = torch.utils._pytree.tree_unflatten(specs, spec)
    return torch_trt.dynamo.compile(ep, arg_inputs=(), kwarg_inputs=kwarg_inputs, **compile_kwargs)
