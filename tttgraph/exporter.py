"""Export a transformed model: a torch.export archive (``.pt2``), ONNX (stock ONNX Runtime runs it), TensorRT.

(``tttgraph.export`` is this module's :func:`export`; the module is not named ``export`` so that
importing it never shadows the function on the package.)

    tttgraph.export(model, "model.pt2")                         # torch.export.load(...).module()
    tttgraph.export(model, "model.onnx", opset=23)              # ONNX Runtime, no plugin
    tttgraph.export(model, "model.onnx", ttt_op="custom")       # one tttgraph.TTTMLP node per TTT
    tttgraph.export(model, "model.engine")                      # TensorRT (GPU; tttgraph[tensorrt])

The model must come from :func:`tttgraph.transform`. It is exported for inference (under
``torch.no_grad()``: each TTT direction is one ``tttgraph::ttt_mlp`` node that keeps no state).
With ``dynamic_frames=True`` one file takes every frame count of whole segments,
``F = p_t * (S * n + O)`` latent frames with n segments (``S``, ``O``: token frames per segment and
overlap of the config, ``p_t`` the temporal patch) and n text chunks (``L = n * text per segment``);
without segments every frame count the capture allowed. The example inputs must be such a size.
ONNX files record this rule in their metadata (``tttgraph.frames``) and :func:`run_onnx` checks it.

Signature: the inputs are the forward arguments the graph takes, by name (a tuple argument ``x``
becomes ``x_0``, ``x_1``, ... in ONNX); the output is the model's first output (``sample``).
Files are written atomically (a temporary file in the same folder, then renamed). ONNX weights of
:data:`EXTERNAL_DATA_BYTES` or more go to ``<file>.data`` beside the file (protobuf's limit is 2 GiB).
onnx, onnxscript, onnxruntime and tensorrt are imported only here, on use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from tttgraph.config import atomic_path
from tttgraph.errors import InputMismatchError
from tttgraph.export_program import ExportError, FrameRule, NotTransformedError, export_program, flat_input_names

__all__ = [
    "ExportError", "ExportResult", "FrameRule", "NotTransformedError", "UnsupportedOpsetError", "export",
    "export_program", "onnx_feed", "run_onnx",
]

FORMATS = ("pt2", "onnx", "tensorrt")
SUFFIXES = {".pt2": "pt2", ".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt"}
TTT_OPS = ("decompose", "custom")
MIN_OPSET = 18  # the dynamo exporter's lowest
ATTENTION_OPSET = 23  # first opset with the standard Attention operator
# Weights of this size or more are written as external data: protobuf refuses files over 2 GiB, and
# the graph itself needs room (the same threshold as torch.onnx).
EXTERNAL_DATA_BYTES = 3 * 1024**3 // 2
FRAMES_METADATA = "tttgraph.frames"


class UnsupportedOpsetError(ExportError):
    """The requested ONNX opset is outside what the exporter and the TTT translation support."""


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    ``input_names``: the file's inputs, in order. ``frames``: the latent frame counts it accepts,
    as text (``"2*n + 1 (n segments; text 4*n tokens), n in [2, 4096]"`` or ``"<F> (<why static>)"``);
    ``frame_rule`` the same as data. ``seconds``: time to export; ``bytes``: file size (with
    external data). ``onnx_path``: for TensorRT, the ONNX file the engine was built from.
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
    frame_rule: FrameRule | None = None
    onnx_path: Path | None = None


def export(
    model: nn.Module,
    path: str | os.PathLike,
    format: str | None = None,
    example_inputs: Mapping[str, Any] | None = None,
    dynamic_frames: bool = True,
    *,
    opset: int | None = None,
    ttt_op: str = "decompose",
    external_data: bool | None = None,
) -> ExportResult:
    """Export a model returned by :func:`tttgraph.transform` for inference.

    Args:
        model: a model transformed by :func:`tttgraph.transform` (its graph form is captured afresh from
            it, as it is now), or the graph form itself (:func:`tttgraph.transform_graph`).
        path: file to write; its suffix picks the format when ``format`` is None (.pt2, .onnx,
            .engine or .plan).
        format: "pt2" (``torch.export.save``), "onnx" (``torch.onnx.export(..., dynamo=True)``) or
            "tensorrt" (the ONNX file, written beside ``path`` as ``<stem>.onnx``, built into a
            serialized engine with the TensorRT Python API on this machine's GPU; see
            :mod:`tttgraph.tensorrt_export`; needs ``pip install 'tttgraph[tensorrt]'``).
        example_inputs: forward keyword arguments (default: the transform's example inputs). For
            TensorRT they also set the optimization profile: from the fewest segments export allows
            up to the example's.
        dynamic_frames: make the frame count (and, with segments, the text length) dynamic where the
            capture made it dynamic (default True); False fixes them to the example's.
        opset: ONNX opset (default 23, where segment attention's SDPA becomes ``Attention``; >= 18).
            TensorRT's default is 23 from TensorRT 10.14 on (its first with ``Attention``), else 22.
        ttt_op: ONNX form of each TTT scan: "decompose" (standard ops, a ``Loop`` over mini-batches;
            stock ONNX Runtime runs it) or "custom" (one ``tttgraph.TTTMLP`` node, schema registered;
            not for TensorRT, which has no plugin for it).
        external_data: ONNX only: write the weights to ``<file>.data`` (True), inline (False), or
            when they reach :data:`EXTERNAL_DATA_BYTES` (None, default).

    Returns:
        An :class:`ExportResult`. Raises :class:`NotTransformedError`, :class:`UnsupportedOpsetError`,
        :class:`ExportError` (with :class:`~tttgraph.tensorrt_export.TensorRTUnavailableError` when
        TensorRT is missing) or :class:`~tttgraph.errors.InputMismatchError` naming the fix.
    """
    path = Path(path)
    format = _format_of(path, format)
    _check_options(format, ttt_op, external_data)
    trt = None
    if format == "tensorrt":
        from tttgraph import tensorrt_export

        trt = tensorrt_export.require_tensorrt()
        if opset is None:
            opset = tensorrt_export.default_opset(trt)
    if format in ("onnx", "tensorrt"):
        opset = _resolve_opset(opset)
    start = time.perf_counter()
    ep, named, rule, frames = export_program(model, example_inputs, dynamic_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "pt2":
        with atomic_path(path) as tmp:
            torch.export.save(ep, tmp)
        result = ExportResult(path, format, flat_input_names(named), frames, 0.0, 0)
    elif format == "onnx":
        result = _onnx_export(ep, path, named, frames, rule, opset, ttt_op, external_data)
    else:
        result = _tensorrt_export(trt, ep, path, named, frames, rule, opset)
    result.frame_rule = rule
    result.seconds = time.perf_counter() - start
    result.bytes = _size(path)
    return result


def _check_options(format: str, ttt_op: str, external_data) -> None:
    if ttt_op not in TTT_OPS:
        raise ExportError(f"ttt_op={ttt_op!r} is not one of {TTT_OPS}")
    if format == "tensorrt" and ttt_op != "decompose":
        raise ExportError(
            f"ttt_op={ttt_op!r} cannot go to TensorRT: it has no plugin for tttgraph.TTTMLP; use ttt_op='decompose' "
            f"(the scan as a standard ONNX Loop)"
        )
    if external_data not in (None, True, False):
        raise ExportError(f"external_data={external_data!r} must be None (automatic), True or False")
    if format != "onnx" and external_data is not None:
        raise ExportError(f"external_data applies to ONNX files only; drop it for format={format!r}")


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        format = SUFFIXES.get(path.suffix.lower())
        if format is None:
            raise ExportError(
                f"cannot tell the format from {str(path)!r}; name it {', '.join(SUFFIXES)}, or pass format= "
                f"(one of {FORMATS})"
            )
    if format not in FORMATS:
        raise ExportError(f"format={format!r} is not one of {FORMATS}")
    return format


# ---------------------------------------------------------------------------------------------- ONNX


def opset_range() -> tuple[int, int]:
    """(lowest, highest) ONNX opset the installed onnx and onnxscript export to."""
    try:
        import onnx
        import onnxscript
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({exc}); pip install 'tttgraph[onnx]'") from exc

    newest = min(onnx.defs.onnx_opset_version(),
                 max(int(n[5:]) for n in dir(onnxscript) if n.startswith("opset") and n[5:].isdigit()))
    return MIN_OPSET, newest


def _resolve_opset(opset: int | None) -> int:
    _, newest = opset_range()
    if opset is None:
        return min(ATTENTION_OPSET, newest)
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise UnsupportedOpsetError(
            f"opset={opset!r} is not supported: the dynamo exporter needs >= {MIN_OPSET} and the installed onnx / "
            f"onnxscript go up to {newest}; pass opset between {MIN_OPSET} and {newest} ({ATTENTION_OPSET} exports "
            f"attention as the standard Attention operator)"
        )
    return opset


def _onnx_program(ep, named, opset: int, ttt_op: str, rule: FrameRule, frames: str):
    """The ONNX program of ``ep`` with the runtime fixes applied: (program, names, notes)."""
    from tttgraph import onnx_fixes
    from tttgraph.kernels.ttt_mlp import onnx_lowering

    table = {**onnx_fixes.translation_overrides(), **onnx_lowering.translation_table(ttt_op)}
    names = flat_input_names(named)
    try:
        with _quiet_onnx_export():
            program = torch.onnx.export(
                ep, (), opset_version=opset, dynamo=True, optimize=True, custom_translation_table=table,
                input_names=names, output_names=["sample"], verbose=False,  # no "[torch.onnx] Run ..." lines
            )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed at opset {opset}: {type(exc).__name__}: {str(exc)[:1500]}; try "
            f"dynamic_frames=False or another opset"
        ) from exc
    notes = onnx_fixes.apply_runtime_fixes(program.model)
    program.model.metadata_props[FRAMES_METADATA] = json.dumps({**dataclasses.asdict(rule), "text": frames})
    return program, names, notes


@contextlib.contextmanager
def _quiet_onnx_export():
    """Silence what torch.onnx.export says about its own internals on every export (the user can
    neither act on it nor avoid it); other warnings and log messages still get through."""
    import warnings

    from tttgraph.quiet import muted_log

    with contextlib.ExitStack() as stack:
        # Listed for every export: torchvision's ops (nms, roi_align, ...) have no translation without it.
        stack.enter_context(muted_log("torch.onnx._internal.exporter._registration", r"torchvision is not installed"))
        # onnx_ir guessing the type of an empty attribute list that torch.onnx itself builds.
        stack.enter_context(muted_log("onnx_ir._convenience", r"Attribute type is ambiguous"))
        stack.enter_context(warnings.catch_warnings())
        # torch's own decomposition still uses the pytree API it deprecates (copyreg re-creates a LeafSpec).
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        yield


def _weight_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _save_onnx(model, path: Path, external: bool) -> None:
    """Write ``model`` to ``path`` (and ``<path>.data`` when ``external``), each file by an atomic rename.

    A stale ``<path>.data`` from an earlier export is removed when the new file keeps its weights inline.
    """
    from onnxscript import ir

    data = path.with_name(path.name + ".data")
    if not external:  # weights still read from a .data file (a reloaded model) are written inline
        ir.external_data.load_to_model(model)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        ir.save(model, staged, external_data=data.name if external else None)
        if external:
            os.replace(staged.with_name(data.name), data)
        os.replace(staged, path)
    if not external:
        data.unlink(missing_ok=True)


def _onnx_export(ep, path: Path, named, frames: str, rule: FrameRule, opset: int, ttt_op: str,
                 external_data: bool | None) -> ExportResult:
    import onnx

    program, names, notes = _onnx_program(ep, named, opset, ttt_op, rule, frames)
    weights = _weight_bytes(program.model)
    external = weights >= EXTERNAL_DATA_BYTES if external_data is None else external_data
    _save_onnx(program.model, path, external)
    if external:
        notes.append(f"{weights / 1e6:.1f} MB of weights in {path.name}.data (keep it beside {path.name})")
    if ttt_op == "custom":
        from tttgraph.kernels.ttt_mlp.onnx_lowering import register_schema

        register_schema()
        onnx.checker.check_model(str(path), full_check=False)
        notes.append("custom tttgraph.TTTMLP nodes: ONNX Runtime needs a kernel for them")
    return ExportResult(path, "onnx", names, frames, 0.0, 0, opset=opset, ttt_op=ttt_op, notes=notes)


def _tensorrt_export(trt, ep, path: Path, named, frames: str, rule: FrameRule, opset: int) -> ExportResult:
    from tttgraph import tensorrt_export

    onnx_path = path.with_suffix(".onnx")
    program, names, notes = _onnx_program(ep, named, opset, "decompose", rule, frames)
    report = tensorrt_export.check_onnx(program.model, trt_version=trt.__version__)
    if report.problems:
        raise ExportError(
            f"the ONNX graph has parts TensorRT {trt.__version__} cannot parse: " + "; ".join(report.problems)
        )
    _save_onnx(program.model, onnx_path, _weight_bytes(program.model) >= EXTERNAL_DATA_BYTES)
    profile, profile_notes = tensorrt_export.profile_shapes(ep, names, rule)
    tensorrt_export.build_engine(onnx_path, path, profile)
    notes += report.cautions + profile_notes + [f"built from {onnx_path.name} (kept for trtexec / rebuilds)"]
    return ExportResult(path, "tensorrt", names, frames, 0.0, 0, opset=opset, ttt_op="decompose", notes=notes,
                        onnx_path=onnx_path)


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


_ONNX_FIX = "export it again with tttgraph.export (and keep its .data file, if any, beside it)"


def _frame_rule_of(session, source: str = "the ONNX session") -> FrameRule | None:
    """The :class:`FrameRule` stored in an exported file's metadata (None if it has none)."""
    from tttgraph.safe_read import check_fields, damaged, json_type

    raw = session.get_modelmeta().custom_metadata_map.get(FRAMES_METADATA)
    if raw is None:
        return None
    what, problem = "exported ONNX file", f"has damaged {FRAMES_METADATA!r} metadata"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise damaged(source, f"{problem} (not JSON: {err})", what, _ONNX_FIX, ExportError) from None
    if not isinstance(data, dict):
        raise damaged(source, f"{problem} (a JSON {json_type(data)}, not an object)", what, _ONNX_FIX, ExportError)
    maybe_int = (int, type(None))
    check_fields(data, {"kind": str, "input": str, "axis": maybe_int, "step": maybe_int, "offset": maybe_int,
                        "text_per_segment": maybe_int}, source, what, f"its {FRAMES_METADATA!r} metadata is damaged; "
                 f"{_ONNX_FIX}", error=ExportError)
    segments = data.get("segments")
    text_dims = data.get("text_dims", {})
    if not isinstance(text_dims, dict) or not (segments is None or isinstance(segments, list) and len(segments) == 2):
        raise damaged(source, f"{problem} (text_dims / segments)", what, _ONNX_FIX, ExportError)
    return FrameRule(
        data["kind"], data["input"], data["axis"], data["step"], data["offset"], data["text_per_segment"],
        text_dims, tuple(segments) if segments else None,
    )


def _onnx_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session of the exported file at ``path``; a damaged file raises ExportError."""
    import onnxruntime as ort

    from tttgraph.safe_read import check_file, damaged

    check_file(Path(path), "exported ONNX file", _ONNX_FIX, ExportError)
    if Path(path).stat().st_size == 0:
        raise damaged(path, "is empty", "exported ONNX file", _ONNX_FIX, ExportError)
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own pybind types (InvalidProtobuf, InvalidArgument, Fail ...)
        if type(err).__name__ in ("InvalidProtobuf", "InvalidArgument", "NoSuchFile"):
            raise damaged(path, f"is not a loadable ONNX model, it is truncated or not ONNX ({err})",
                          "exported ONNX file", _ONNX_FIX, ExportError) from None
        raise ExportError(f"ONNX Runtime can't load {path}: {err}; a file with custom tttgraph.TTTMLP nodes needs a "
                          "kernel for them (export with ttt_op='decompose' for stock ONNX Runtime)") from None


def run_onnx(session_or_path, inputs: Mapping[str, Any]):
    """Run an exported ONNX file (or an ``onnxruntime.InferenceSession``) on forward keyword arguments.

    Raises :class:`~tttgraph.errors.InputMismatchError` when the inputs do not match the file's
    signature (names, ranks, a static dim, or a frame count / text length outside the file's
    segment rule). Returns the output as a numpy array.
    """
    import onnxruntime as ort

    session, source = session_or_path, "the ONNX session"
    if not isinstance(session, ort.InferenceSession):
        session, source = _onnx_session(session_or_path), str(session_or_path)
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
    rule = _frame_rule_of(session, source)
    why = rule.check({name: value.shape for name, value in feed.items()}) if rule else None
    if why:
        raise InputMismatchError(f"inputs do not match the exported frame rule: {why}; pass whole segments")
    return session.run(None, feed)[0]
