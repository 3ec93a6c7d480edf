"""The program every export format starts from: a transformed model's graph as a ``torch.export.ExportedProgram``.

:func:`export_program` checks that the model came from :func:`tttgraph.transform`, names the inputs,
and exports the graph called by those names and returning the model's first output, with the frame
count (and, with segments, the text length) dynamic over whole segments when asked. The
:class:`FrameRule` it returns says which frame counts the program takes; :mod:`tttgraph.exporter`
writes it into ONNX files and :mod:`tttgraph.tensorrt_export` builds TensorRT profiles from it. It is a
module of its own so that :mod:`tttgraph.tensorrt_export` needs nothing from :mod:`tttgraph.exporter`,
which calls into it for ``format="tensorrt"``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from tttgraph.errors import InputMismatchError, TTTGraphError

__all__ = ["ExportError", "FrameRule", "NotTransformedError", "export_program", "flat_input_names"]


class ExportError(TTTGraphError):
    """The model could not be exported as asked; the message names the fix."""


class NotTransformedError(ExportError):
    """export() was given a model that tttgraph.transform did not produce."""


@dataclass
class FrameRule:
    """The frame counts an exported file accepts, as data (stored in ONNX metadata, checked by run_onnx).

    Dynamic over whole segments: ``input``'s dim ``axis`` is ``step * n + offset`` and every
    ``text_dims`` entry (input name -> dims) is ``text_per_segment * n``, n in ``segments``.
    ``static``: the file takes exactly the example's shapes. ``free``: frames are dynamic without
    segments (only the capture's range applies).
    """

    kind: str  # "segments", "free" or "static"
    input: str = "hidden_states"
    axis: int | None = None
    step: int | None = None
    offset: int | None = None
    text_per_segment: int | None = None
    text_dims: dict[str, list[int]] = field(default_factory=dict)
    segments: tuple[int, int | None] | None = None

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
        """None if input ``shapes`` (name -> shape) follow the rule, else why not (one sentence)."""
        if self.kind != "segments" or self.input not in shapes or self.axis is None:
            return None
        frames = shapes[self.input][self.axis]
        n, rest = divmod(frames - self.offset, self.step)
        lo, hi = self.segments or (1, None)
        if rest or n < lo or (hi is not None and n > hi):
            return (f"{self.input!r} has {frames} latent frames; this file takes {self.step}*n + {self.offset} frames, "
                    f"n whole segments in [{lo}, {hi if hi is not None else 'inf'}]")
        for name, dims in self.text_dims.items():
            for d in dims:
                if name in shapes and shapes[name][d] != self.text_per_segment * n:
                    return (f"{name!r} has {shapes[name][d]} tokens on dim {d}; with {frames} frames ({n} segments) "
                            f"this file takes {self.text_per_segment} per segment = {self.text_per_segment * n}")
        return None


def export_program(model: nn.Module, example_inputs: Mapping[str, Any] | None = None, dynamic_frames: bool = True):
    """The ``torch.export.ExportedProgram`` that every format starts from.

    Returns ``(ep, named inputs, FrameRule, description of the frames accepted)``; ``ep`` takes the
    forward arguments by name and returns the model's first output. Raises like
    :func:`tttgraph.export`.
    """
    from tttgraph.rewrite import graph_form, plan_of

    try:
        plan_of(model)
    except TTTGraphError:
        raise NotTransformedError(
            f"export needs a model transformed by tttgraph.transform, got an untransformed {type(model).__name__}; "
            "transform it first: tttgraph.transform(model, cfg, example_inputs)"
        ) from None
    model = graph_form(model)  # what is exported is the graph form, captured afresh from the model as it is now
    plan = plan_of(model)
    if model.info.branches:
        raise ExportError(
            f"{model.info.model_class} branches on tensor values (the example took {list(model.info.branches)}); "
            "an exported graph would always take those branches, whatever its inputs. Run the transformed model "
            "itself (eager or torch.compile) instead"
        )
    named = _named_inputs(model, example_inputs)
    with torch.no_grad():
        model(**{**model.info.constants, **named})  # checks the inputs against the graph; fills index caches
    ep, rule, frames = _torch_export(model, plan, named, dynamic_frames)
    return ep, named, rule, frames


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


def flat_input_names(named: Mapping[str, Any]) -> list[str]:
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
    """(dynamic_shapes, FrameRule, description of the frames accepted) for torch.export."""
    from tttgraph.adapters import ADAPTERS

    info = model.info
    frames = info.latent_frames
    if not (dynamic_frames and info.dynamic_frames):
        why = "dynamic_frames=False" if not dynamic_frames else (info.frames_note or "static at capture")
        return None, FrameRule("static"), f"{frames} ({why})"
    adapter = ADAPTERS.get(plan.adapter)
    axis = getattr(adapter, "frame_axis", None)
    if adapter is None or axis is None:
        raise ExportError(f"the {plan.adapter} adapter names no frame axis; export with dynamic_frames=False")
    spec = adapter.frame_dynamic_shapes(None, named)
    seg, lay = plan.segmentation, plan.layout
    if seg.frames_per_segment is None:  # frame-dependent dims stay Dim.AUTO, as at capture
        return spec, FrameRule("free", axis=axis), "F frames"
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
    rule = FrameRule("segments", axis=axis, step=p_t * s, offset=p_t * o, text_per_segment=per_segment)
    for name, dims in adapter.text_inputs.items():
        if isinstance(named.get(name), torch.Tensor):
            spec[name] = {d: per_segment * segments for d in dims}
            rule.text_dims[name] = list(dims)
    return spec, rule, f"{p_t * s}*n + {p_t * o} (n segments; text {per_segment}*n tokens),"


def _torch_export(model, plan, named, dynamic_frames):
    from tttgraph.layout import indices_in_graph

    spec, rule, frames = _dynamic_spec(model, plan, named, dynamic_frames)
    wrapper = _FirstOutput(model.graph_module, list(named))
    index_in_graph = spec is not None  # else the eager index constants of the example's frame count
    try:
        with torch.no_grad(), (indices_in_graph() if index_in_graph else contextlib.nullcontext()):
            ep = torch.export.export(wrapper, (), kwargs=named, dynamic_shapes=spec, strict=False)
    except Exception as exc:
        raise ExportError(
            f"torch.export failed on the transformed {model.info.model_class}: {type(exc).__name__}: "
            f"{str(exc)[:1500]}; retry with dynamic_frames=False"
        ) from exc
    if spec is not None:
        label = "F" if plan.segmentation.frames_per_segment is None else "n"
        bounds = _frame_symbol_range(ep)
        if bounds is not None:
            frames += f" {label} in [{bounds[0]}, {'inf' if bounds[1] is None else bounds[1]}]"
            if rule.kind == "segments":
                rule.segments = bounds
    return ep, rule, frames


def _frame_symbol_range(ep) -> tuple[int, int | None] | None:
    """(lower, upper or None) that export gave the symbol the frame dim of ``hidden_states`` is built from."""
    video = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "hidden_states"), None)
    dims = [] if video is None else [d for d in video.meta["val"].shape if isinstance(d, torch.SymInt)]
    symbols = set().union(*(d.node.expr.free_symbols for d in dims))
    for expr, vr in ep.range_constraints.items():
        if expr in symbols:
            upper = None if str(vr.upper) in ("int_oo", "oo") else int(vr.upper)
            return int(vr.lower), upper
    return None
