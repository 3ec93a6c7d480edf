"""Export a transformed model: a torch.export archive (``.pt2``) or ONNX that stock ONNX Runtime runs.

(``tttgraph.export`` is this module's :func:`export`; the module is not named ``export`` so that
importing it never shadows the function on the package.)

    tttgraph.export(model, "model.pt2")                         # torch.export.load(...).module()
    tttgraph.export(model, "model.onnx", opset=23)              # ONNX Runtime, no plugin
    tttgraph.export(model, "model.onnx", ttt_op="custom")       # one tttgraph.TTTMLP node per TTT

The model must come from :func:`tttgraph.transform`. It is exported for inference (under
``torch.no_grad()``: each TTT direction is one ``tttgraph::ttt_mlp`` node that keeps no state).
With ``dynamic_frames=True`` one file takes every frame count of whole segments,
``F = p_t * (S * n + O)`` latent frames with n segments (``S``, ``O``: token frames per segment and
overlap of the config, ``p_t`` the temporal patch) and n text chunks (``L = n * text per segment``);
without segments every frame count the capture allowed. The example inputs must be such a size.

Signature: the inputs are the forward arguments the graph takes, by name (a tuple argument ``x``
becomes ``x_0``, ``x_1``, ... in ONNX); the output is the model's first output (``sample``).
onnx, onnxscript and onnxruntime are imported only here, on use.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from tttgraph.errors import InputMismatchError, TTTGraphError

__all__ = [
    "ExportError", "ExportResult", "NotTransformedError", "UnsupportedOpsetError", "export", "onnx_feed", "run_onnx",
]

FORMATS = ("pt2", "onnx")
TTT_OPS = ("decompose", "custom")
MIN_OPSET = 18  # the dynamo exporter's lowest
ATTENTION_OPSET = 23  # first opset with the standard Attention operator
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit for one file


class ExportError(TTTGraphError):
    """The model could not be exported as asked; the message names the fix."""


class NotTransformedError(ExportError):
    """export() was given a model that tttgraph.transform did not produce."""


class UnsupportedOpsetError(ExportError):
    """The requested ONNX opset is outside what the exporter and the TTT translation support."""


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    ``input_names``: the file's inputs, in order. ``frames``: the latent frame counts it accepts,
    as text (``"2*n + 1 (n segments; text 4*n tokens), n in [2, 4096]"`` or ``"<F> (<why static>)"``).
    ``seconds``: time to export; ``bytes``: file size (with external data).
    """

    path: Path
    format: str
    input_names: list[str]
    frames: str
    seconds: float
    bytes: int
    opset: int | None = None
    ttt_op: str | None = None
    notes: list[str] = field(default_factory=list)


def export(
    model: nn.Module,
    path: str | os.PathLike,
    format: str | None = None,
    example_inputs: Mapping[str, Any] | None = None,
    dynamic_frames: bool = True,
    *,
    opset: int | None = None,
    ttt_op: str = "decompose",
) -> ExportResult:
    """Export a model returned by :func:`tttgraph.transform` for inference.

    Args:
        model: the transformed model (a :class:`~tttgraph.capture.CapturedModel` with a plan).
        path: file to write; its suffix picks the format when ``format`` is None.
        format: "pt2" (``torch.export.save``) or "onnx" (``torch.onnx.export(..., dynamo=True)``).
        example_inputs: forward keyword arguments (default: the transform's example inputs).
        dynamic_frames: make the frame count (and, with segments, the text length) dynamic where the
            capture made it dynamic (default True); False fixes them to the example's.
        opset: ONNX opset (default 23, where segment attention's SDPA becomes ``Attention``; >= 18).
        ttt_op: ONNX form of each TTT scan: "decompose" (standard ops, a ``Loop`` over mini-batches;
            stock ONNX Runtime runs it) or "custom" (one ``tttgraph.TTTMLP`` node, schema registered).

    Returns:
        An :class:`ExportResult`. Raises :class:`NotTransformedError`, :class:`UnsupportedOpsetError`,
        :class:`ExportError` or :class:`~tttgraph.errors.InputMismatchError` naming the fix.
    """
    from tttgraph.capture import CapturedModel
    from tttgraph.rewrite import plan_of

    path = Path(path)
    format = _format_of(path, format)
    if format == "onnx":
        if ttt_op not in TTT_OPS:
            raise ExportError(f"ttt_op={ttt_op!r} is not one of {TTT_OPS}")
        opset = _resolve_opset(opset)
    if not isinstance(model, CapturedModel):
        raise NotTransformedError(
            f"export needs the model returned by tttgraph.transform, got {type(model).__name__}; call "
            f"model = tttgraph.transform(model, cfg, example_inputs) first"
        )
    try:
        plan = plan_of(model)
    except TTTGraphError as exc:
        raise NotTransformedError(str(exc)) from None
    named = _named_inputs(model, example_inputs)
    with torch.no_grad():
        model(**{**model.info.constants, **named})  # checks the inputs against the graph; fills index caches
    start = time.perf_counter()
    ep, frames = _torch_export(model, plan, named, dynamic_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "pt2":
        torch.export.save(ep, path)
        result = ExportResult(path, format, _input_names(named), frames, 0.0, 0)
    else:
        result = _onnx_export(ep, path, named, frames, opset, ttt_op)
    result.seconds = time.perf_counter() - start
    result.bytes = _size(path)
    return result


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        format = path.suffix.lstrip(".").lower()
        if format not in FORMATS:
            raise ExportError(f"cannot tell the format from {str(path)!r}; name it .pt2 or .onnx, or pass format=")
    if format not in FORMATS:
        raise ExportError(f"format={format!r} is not one of {FORMATS}")
    return format


def _named_inputs(model, example_inputs) -> dict[str, Any]:
    info = model.info
    if example_inputs is None:
        return dict(info.example_inputs)
    if not isinstance(example_inputs, Mapping):
        raise InputMismatchError(
            f"example_inputs must be a dict of forward keyword arguments ({', '.join(info.graph_inputs)}), got "
            f"{type(example_inputs).__name__}"
        )
    unknown = set(example_inputs) - set(info.signature.parameters)
    missing = [n for n in info.graph_inputs if n not in example_inputs]
    if unknown or missing:
        raise InputMismatchError(
            f"example_inputs do not match {info.model_class}'s exported signature ({', '.join(info.graph_inputs)}): "
            f"missing {missing}, unknown {sorted(unknown)}; pass the same arguments as at transform"
        )
    return {name: example_inputs[name] for name in info.graph_inputs}


def _input_names(named: Mapping[str, Any]) -> list[str]:
    """Flat input names: a tensor ``x`` is ``x``, a nest ``x`` gives ``x_0``, ``x_1``, ... (leaf order)."""
    names = []
    for name, value in named.items():
        if isinstance(value, torch.Tensor):
            names.append(name)
        else:
            leaves = [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]
            names += [f"{name}_{i}" for i in range(len(leaves))]
    return names


class _FirstOutput(nn.Module):
    """The graph called with named inputs, returning only the model's first output."""

    def __init__(self, graph_module: torch.fx.GraphModule, names: list[str]):
        super().__init__()
        self.graph_module = graph_module

        def forward(**kwargs):
            out = self.graph_module(**kwargs)
            if hasattr(out, "to_tuple"):
                out = out.to_tuple()
            return out[0] if isinstance(out, (tuple, list)) else out

        # torch.export binds inputs (and dynamic_shapes) by the forward's named parameters.
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        forward.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])
        self.forward = forward


def _dynamic_spec(model, plan, named, dynamic_frames: bool):
    """(dynamic_shapes, description of the frames accepted) for torch.export."""
    from tttgraph.adapters import ADAPTERS

    info = model.info
    frames = info.latent_frames
    if not (dynamic_frames and info.dynamic_frames):
        why = "dynamic_frames=False" if not dynamic_frames else (info.frames_note or "static at capture")
        return None, f"{frames} ({why})"
    adapter = ADAPTERS.get(plan.adapter)
    axis = getattr(adapter, "frame_axis", None)
    if adapter is None or axis is None:
        raise ExportError(f"the {plan.adapter} adapter names no frame axis; export with dynamic_frames=False")
    spec = adapter.frame_dynamic_shapes(None, named)
    seg, lay = plan.segmentation, plan.layout
    if seg.frames_per_segment is None:  # frame-dependent dims stay Dim.AUTO, as at capture
        return spec, "F frames"
    spec = adapter.text_dynamic_shapes(spec, named)
    p_t = lay.patch_size[0]
    s, o = seg.frames_per_segment, seg.overlap_frames
    token_frames = lay.latent_frames // p_t
    n = (token_frames - o) // s
    if lay.latent_frames != p_t * (s * n + o) or n < 1:
        raise ExportError(
            f"a dynamic-frame export needs whole segments: {lay.latent_frames} latent frames do not split into "
            f"segments of {p_t * s} frames + {p_t * o} overlap; pass example_inputs with "
            f"{p_t * (s * 2 + o)}, {p_t * (s * 3 + o)}, ... frames, or dynamic_frames=False"
        )
    hi = info.frame_range[1] if info.frame_range else None
    n_max = max(n, (hi // p_t - o) // s) if hi else 2**12
    segments = Dim("segments", min=1, max=n_max)
    spec["hidden_states"] = {axis: p_t * s * segments + p_t * o}
    per_segment = lay.text_tokens // n
    for name, dims in adapter.text_inputs.items():
        if isinstance(named.get(name), torch.Tensor):
            spec[name] = {d: per_segment * segments for d in dims}
    return spec, f"{p_t * s}*n + {p_t * o} (n segments; text {per_segment}*n tokens),"


def _torch_export(model, plan, named, dynamic_frames):
    from tttgraph.export_graph import exportable

    spec, frames = _dynamic_spec(model, plan, named, dynamic_frames)
    wrapper = _FirstOutput(model.graph_module, list(named))
    index_in_graph = spec is not None  # else the eager index constants of the example's frame count
    try:
        with torch.no_grad(), (exportable(model.graph_module) if index_in_graph else contextlib.nullcontext()):
            ep = torch.export.export(wrapper, (), kwargs=named, dynamic_shapes=spec, strict=False)
    except Exception as exc:
        raise ExportError(
            f"torch.export failed on the transformed {model.info.model_class}: {type(exc).__name__}: "
            f"{str(exc)[:1500]}; retry with dynamic_frames=False"
        ) from exc
    if spec is not None:
        label = "F" if plan.segmentation.frames_per_segment is None else "n"
        frames += " " + _ranges(ep, label)
    return ep, frames


def _ranges(ep, label: str) -> str:
    """The range export gave the symbol that the frame dim of ``hidden_states`` is built from."""
    video = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "hidden_states"), None)
    dims = [] if video is None else [d for d in video.meta["val"].shape if isinstance(d, torch.SymInt)]
    symbols = set().union(*(d.node.expr.free_symbols for d in dims))
    parts = []
    for expr, vr in ep.range_constraints.items():
        if expr in symbols:
            upper = "inf" if str(vr.upper) in ("int_oo", "oo") else str(vr.upper)
            parts.append(f"[{vr.lower}, {upper}]")
    return (f"{label} in " + ", ".join(parts)) if parts else ""


# ---------------------------------------------------------------------------------------------- ONNX


def _resolve_opset(opset: int | None) -> int:
    try:
        import onnx
        import onnxscript
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({exc}); pip install 'tttgraph[onnx]'") from exc

    newest = min(onnx.defs.onnx_opset_version(),
                 max(int(n[5:]) for n in dir(onnxscript) if n.startswith("opset") and n[5:].isdigit()))
    if opset is None:
        return min(ATTENTION_OPSET, newest)
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise UnsupportedOpsetError(
            f"opset={opset!r} is not supported: the dynamo exporter needs >= {MIN_OPSET} and the installed onnx / "
            f"onnxscript go up to {newest}; pass opset between {MIN_OPSET} and {newest} ({ATTENTION_OPSET} exports "
            f"attention as the standard Attention operator)"
        )
    return opset


def _onnx_export(ep, path: Path, named, frames: str, opset: int | None, ttt_op: str) -> ExportResult:
    import onnx

    from tttgraph import onnx_ttt

    big = sum(t.numel() * t.element_size() for t in ep.state_dict.values()) > EXTERNAL_DATA_BYTES
    table = onnx_ttt.translation_table(ttt_op)
    names = _input_names(named)
    torch.onnx.export(
        ep, (), str(path), opset_version=opset, dynamo=True, external_data=big, optimize=True,
        custom_translation_table=table, input_names=names, output_names=["sample"],
    )
    notes = []
    if ttt_op == "custom":
        onnx.checker.check_model(str(path), full_check=False)
        notes.append("custom tttgraph.TTTMLP nodes: ONNX Runtime needs a kernel for them")
    return ExportResult(path, "onnx", names, frames, 0.0, 0, opset=opset, ttt_op=ttt_op, notes=notes)


def _size(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return total + (data.stat().st_size if data.exists() else 0)


def onnx_feed(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Forward keyword arguments -> ONNX Runtime feed (numpy), named as the exported file's inputs."""
    feed = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            feed[name] = value.detach().cpu().numpy()
        elif any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value)):
            leaves = [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]
            feed.update({f"{name}_{i}": leaf.detach().cpu().numpy() for i, leaf in enumerate(leaves)})
    return feed


def run_onnx(session_or_path, inputs: Mapping[str, Any]):
    """Run an exported ONNX file (or an ``onnxruntime.InferenceSession``) on forward keyword arguments.

    Raises :class:`~tttgraph.errors.InputMismatchError` when the inputs do not match the file's
    signature (names, ranks, or a static dim). Returns the output as a numpy array.
    """
    import onnxruntime as ort

    session = session_or_path
    if not isinstance(session, ort.InferenceSession):
        session = ort.InferenceSession(str(session_or_path), providers=["CPUExecutionProvider"])
    feed = onnx_feed(inputs)
    expected = {i.name: i for i in session.get_inputs()}
    missing, unknown = sorted(set(expected) - set(feed)), sorted(set(feed) - set(expected))
    if missing or unknown:
        raise InputMismatchError(
            f"inputs do not match the exported signature ({', '.join(expected)}): missing {missing}, unknown "
            f"{unknown}; pass the forward arguments used at export (a tuple x is fed as x_0, x_1, ...)"
        )
    for name, spec in expected.items():
        got = feed[name].shape
        fixed = len(got) == len(spec.shape) and all(
            not isinstance(w, int) or w == g for w, g in zip(spec.shape, got, strict=True)
        )
        if not fixed:
            raise InputMismatchError(
                f"input {name!r} has shape {tuple(got)}, the exported file takes {spec.shape} (strings are dynamic "
                f"dims); re-export with example inputs of this size, or with dynamic_frames=True"
            )
    return session.run(None, feed)[0]
