"""``inspect`` (dry run), ``transform`` and its graph form: capture -> analyse -> plan -> passes -> carry over.

``transform(model, cfg, example_inputs)`` edits ``model`` in place and returns it (docs/ARCHITECTURE.md),
with

- segment-local attention at every attention over video frames (when ``cfg`` segments), and
- a gated bidirectional TTT-MLP layer after every selected self-attention,

keeping every pretrained module and parameter under its own name. ``transform_graph`` returns the
rewritten graph instead (a :class:`~tttgraph.capture.CapturedModel`: the oracle ``transform`` checks
itself against, and what ``export`` writes); ``inspect`` builds the plan without changing anything.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tttgraph.adapters import GenericAdapter, TokenLayout, get_adapter
from tttgraph.analysis import Analysis, AttentionSite, analyse, size_at_example
from tttgraph.capture import CapturedModel, bind_inputs, capture, capture_info, opaque
from tttgraph.config import TTTConfig
from tttgraph.errors import NoAttentionFoundError, TTTGraphError
from tttgraph.fingerprints import state_dict_fingerprints
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout
from tttgraph.passes import normalize_attention
from tttgraph.passes.insert_ttt import InsertTTT, TTTSite, insertion_point
from tttgraph.passes.lower_ttt import LowerTTT
from tttgraph.passes.segment_attention import SegmentAttentionPass
from tttgraph.passes.verify import check_order_preserved, node_order
from tttgraph.positions import segment_relative_positions
from tttgraph.rope import split_head_dim
from tttgraph.segmentation import Segmentation, segmentation, site_layout

log = logging.getLogger(__name__)

__all__ = ["SitePlan", "TransformPlan", "graph_form", "inspect", "plan_of", "transform", "transform_graph"]

PLAN_KEY = "tttgraph_plan"
_TTT_KINDS = {("joint", "thw"), ("video", "thw"), ("video", "hw"), ("video", "t")}


class TargetNotFoundError(TTTGraphError):
    """A TTTConfig target pattern matched no attention module."""


@dataclass(frozen=True)
class SitePlan:
    """What happens at one attention site: segment-local attention, a TTT layer, or why not."""

    name: str
    module_path: str
    kind: str
    axes: str | None
    q_shape: tuple
    k_shape: tuple
    segment: bool
    ttt: bool
    note: str = ""


@dataclass
class TransformPlan:
    """The dry-run result: the model's layout, each site's fate, and what the rewrite adds."""

    model_class: str
    adapter: str
    layout: TokenLayout
    config: TTTConfig
    segmentation: Segmentation
    sites: list[SitePlan]
    added_parameters: int
    frame_range: tuple[int, int | None] | None
    ttt_sites: list[TTTSite] = field(default_factory=list, repr=False)
    segment_sites: dict[str, tuple[AttentionSite, SequenceLayout]] = field(default_factory=dict, repr=False)
    backends: dict[str, str] = field(default_factory=dict)
    base_fingerprints: dict[str, str | None] = field(default_factory=dict, repr=False)
    evaluate: Any = field(default=None, repr=False)  # symbolic size -> its value at the example inputs
    attention_sites: tuple[AttentionSite, ...] = field(default=(), repr=False)  # every SDPA, in graph order

    @property
    def ttt_modules(self) -> list[str]:
        return [item.module_path for item in self.ttt_sites]

    def __str__(self) -> str:
        lay, seg = self.layout, self.segmentation
        head = [
            f"tttgraph plan for {self.model_class} (adapter {self.adapter})",
            f"  layout: {lay.text_tokens} text tokens, {lay.frames} token frames x {lay.tokens_per_frame} tokens "
            f"(grid {lay.grid[0]}x{lay.grid[1]}, patch {lay.patch_size}), {lay.order}",
            "  segments: " + ("off (attention stays global)" if seg.frames_per_segment is None else
                              f"{seg.frames_per_segment} token frames + {seg.overlap_frames} overlap, "
                              f"{seg.text_tokens_per_segment} text tokens each"
                              + ("; attention reads every frame (scope 'video')" if seg.global_video else "")),
            f"  frames accepted: {self.frame_range}",
            f"  TTT layers: {sum(s.ttt for s in self.sites)}, "
            f"segment-local attentions: {sum(s.segment for s in self.sites)}, "
            f"added parameters: {self.added_parameters:,}",
        ]
        rows = [("site", "module", "kind", "q shape", "segment", "TTT", "note")]
        for s in self.sites:
            kind = s.kind + (f"/{s.axes}" if s.axes else "")
            shape = "x".join(map(str, s.q_shape))
            flags = ("yes" if s.segment else "-", "yes" if s.ttt else "-")
            rows.append((s.name, s.module_path, kind, shape, *flags, s.note))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        table = ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return "\n".join(head + table)


def _ttt_note(site: AttentionSite, cfg: TTTConfig, module: nn.Module | None) -> tuple[bool, str]:
    cross = site.kind == "cross"
    if not cfg.selects(site.module_path, module, cross_attention=cross):
        return False, "cross-attention: not targeted" if cross else "not selected by targets/exclude"
    if (site.kind, site.axes) in _TTT_KINDS or cross:
        return True, ""
    return False, f"{site.kind} attention: no video sequence"


def _module_at(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path) if path else None
    except AttributeError:
        return None


def _plan(gm: torch.fx.GraphModule, analysis: Analysis, cfg: TTTConfig, model: nn.Module) -> TransformPlan:
    layout = analysis.layout
    seg = segmentation(cfg, layout)
    info = capture_info(gm)
    _check_targets(cfg, analysis.sites)
    sites, ttt_sites, segment_sites = [], [], {}
    evaluate = size_at_example(gm, info.example_inputs)
    nodes = {n.name: n for n in gm.graph.nodes}
    # An attention module whose output takes the TTT layer (``module_attention``) may compute its attention with
    # SDPA calls of submodules (SanaWM's softmax blocks: a main and a camera branch): those get none of their own.
    modules = [s.module_path for s in analysis.sites if s.computed_by == "module"]
    for site in analysis.sites:
        module = _module_at(model, site.module_path)
        ttt, note = _ttt_note(site, cfg, module)
        outer = next((path for path in modules if site.module_path.startswith(path + ".")), None)
        if ttt and outer is not None:
            ttt, note = False, f"TTT after the whole of {outer}"
        seq = site_layout(site, layout, seg)
        segment = (seg.frames_per_segment is not None and seq is not None and not site.is_causal
                   and not cfg.excludes(site.module_path, module))
        if segment and site.computed_by == "module":
            # Segment-local attention replaces SDPA calls; this module's own attention (linear, flex) stays global.
            inner = any(s.computed_by == "sdpa" and s.module_path.startswith(site.module_path + ".")
                        for s in analysis.sites)
            why = "its SDPA calls are segment-local, the rest stays global" if inner else \
                "not SDPA: its attention stays global"
            segment, note = False, (note + "; " if note else "") + why
        if segment and site.kind == "cross" and site.q_shape[2] != layout.video_tokens:
            # Frames folded into the batch (Latte): each frame's queries see the whole text.
            segment, note = False, (note + "; " if note else "") + "per-frame cross-attention: not segmented"
        if segment:
            segment_sites[site.name] = (site, seq)
        if ttt and any(item.site.module_path == site.module_path for item in ttt_sites):
            # One attention module calling SDPA once per sample (Mochi's loop over valid text): one layer,
            # at the module's joint output, which every call's chain reaches.
            ttt, note = False, (note + "; " if note else "") + "TTT with the module's first attention call"
        if ttt:
            if site.kind == "joint" or (site.kind, site.axes) == ("video", "thw"):
                ttt_layout = seq
            else:  # after a cross-attention, or a folded video (Latte): the TTT reads the video alone
                ttt_layout = SequenceLayout(0, layout.tokens_per_frame, seg.frames_per_segment, seg.overlap_frames)
            fold = site.axes if site.kind == "video" and site.axes in ("hw", "t") else None
            joint = layout.joint_tokens if site.kind == "joint" else None
            rope = layout.grid if cfg.rope and layout.raster else None
            if cfg.rope and not layout.raster:
                note = (note + "; " if note else "") + "no RoPE: tokens not row-major within a frame"
            if rope is not None:
                try:
                    split_head_dim(site.q_shape[3])
                except TTTGraphError as err:
                    raise TTTGraphError(
                        f"{site.module_path}: {err}; for this model pass TTTConfig(rope=False) (the TTT then reads "
                        "positions from the token order only)"
                    ) from None
            point = (nodes[site.name] if site.computed_by == "module" else
                     insertion_point(nodes[site.name], site.module_path, joint, evaluate))
            ttt_sites.append(TTTSite(site, ttt_layout, rope, joint, fold, layout.batch_size, point.name,
                                     int(point.meta["val"].shape[-1])))
        sites.append(SitePlan(site.name, site.module_path, site.kind, site.axes, site.q_shape, site.k_shape,
                              segment, ttt, note))
    added = sum(_count_params(item, cfg) for item in ttt_sites)
    return TransformPlan(info.model_class, analysis.adapter, layout, cfg, seg, sites, added, info.frame_range,
                         ttt_sites, segment_sites, evaluate=evaluate, attention_sites=tuple(analysis.sites))


def _check_targets(cfg: TTTConfig, sites: tuple[AttentionSite, ...]) -> None:
    from tttgraph.config import _compile

    paths = [s.module_path for s in sites]
    for pattern in cfg.targets:
        if not any(_compile(pattern).fullmatch(p) for p in paths):
            raise TargetNotFoundError(
                f"target pattern {pattern!r} matches no attention module; the attention modules are: "
                f"{sorted(set(paths))}"
            )


def _count_params(item: TTTSite, cfg: TTTConfig) -> int:
    with torch.device("meta"):
        layer = GatedBidirectionalTTT(item.width, item.site.q_shape[1], item.layout, head_dim=item.site.q_shape[3],
                                      mlp_expansion=cfg.mlp_expansion, bidirectional=cfg.bidirectional)
    return sum(p.numel() for p in layer.parameters())


def _capture_and_plan(model: nn.Module, cfg: TTTConfig, example_inputs: Any, progress: bool):
    if not isinstance(cfg, TTTConfig):
        raise TypeError(f"cfg must be a tttgraph.TTTConfig, got {type(cfg).__name__}")
    if isinstance(model, CapturedModel):
        raise TTTGraphError("this model was already transformed or captured; pass the original model")
    adapter = get_adapter(model)
    if isinstance(example_inputs, Mapping):  # a restore's inputs lack the objects a recipe can't record
        example_inputs = {**adapter.fresh_objects(model), **example_inputs}
    _, named = bind_inputs(model, example_inputs)
    # The transform's own copies of object inputs (a cache): its capture and check write into them, not the user's.
    named = {name: copy.deepcopy(value) if opaque(value) else value for name, value in named.items()}
    if adapter.segments_reason and cfg.segment_latent_frames is not None:
        raise TTTGraphError(
            f"segment_latent_frames={cfg.segment_latent_frames}: {type(model).__name__} has no segments, as "
            f"{adapter.segments_reason}; transform it with segment_latent_frames=None (TTT layers only)"
        )
    mask = named.get(adapter.valid_text_mask) if adapter.valid_text_mask else None
    if isinstance(mask, torch.Tensor):  # captured with every text token valid (see ModelAdapter)
        named = {**named, adapter.valid_text_mask: torch.ones_like(mask)}
    positions = contextlib.nullcontext(0)
    if adapter.temporal_position_tables:
        layout = adapter.layout(model, named)
        seg = segmentation(cfg, layout)
        frames = SequenceLayout(0, 1, seg.frames_per_segment, seg.overlap_frames)
        positions = segment_relative_positions(model, adapter.temporal_position_tables, frames, layout.frames)
    with positions:
        gm = capture(model, named, progress=progress, dynamic_text=cfg.segment_latent_frames is not None,
                     adapter=adapter)
    normalize_attention(gm)
    analysis = analyse(gm, model, named, adapter)
    adapter = getattr(adapter, "inferred", None) or adapter  # the generic adapter's reading of this model
    plan = _plan(gm, analysis, cfg, model)
    if not plan.ttt_sites:
        found = ", ".join(f"{s.module_path} ({s.kind}{'/' + s.axes if s.axes else ''}: {s.note})"
                          for s in plan.sites) or "no attention at all"
        raise NoAttentionFoundError(
            f"no attention of {plan.model_class} takes a TTT layer under this config. Searched every "
            f"aten.scaled_dot_product_attention node (after normalising manual attention): {found}. "
            "Check TTTConfig.targets/exclude, or register an adapter (tttgraph.register_adapter)"
        )
    return gm, plan, adapter


def inspect(model: nn.Module, cfg: TTTConfig, example_inputs: Any, *, progress: bool = False) -> TransformPlan:
    """Dry run: what ``transform`` would do to ``model`` (the model is not changed).

    ``example_inputs``: the forward keyword arguments as a dict (a tuple of positional ones works).
    """
    _, plan, _ = _capture_and_plan(model, cfg, example_inputs, progress)
    return plan


def _graph_passes(gm: torch.fx.GraphModule, plan: TransformPlan, layers: dict[str, nn.Module] | None = None) -> None:
    """Rewrite ``gm`` by ``plan``: insert the TTT layers (``layers``: existing ones by path), segment, lower."""
    cfg = plan.config
    lower = LowerTTT(cfg.backend)
    passes = [InsertTTT(plan.ttt_sites, cfg, plan.evaluate, layers)]
    if plan.segment_sites:
        passes.append(SegmentAttentionPass(plan.segment_sites))
    passes.append(lower)
    for graph_pass in passes:
        before = node_order(gm)
        result = graph_pass(gm)
        check_order_preserved(before, gm, graph_pass.name)
        log.info("transform: %s %s", graph_pass.name, result.counts)
    plan.backends = lower.chosen


def transform_graph(model: nn.Module, cfg: TTTConfig, example_inputs: Any, *, progress: bool = True) -> CapturedModel:
    """The graph form of :func:`transform`: a :class:`CapturedModel` of the rewritten graph.

    What :func:`tttgraph.export` emits and the oracle :func:`transform` checks itself against. It
    shares the pretrained parameters with ``model`` (same tensors, same names), adds
    ``<attention>.gated_ttt`` modules, and runs at the captured batch size, resolution and dtype.
    """
    gm, plan, _ = _capture_and_plan(model, cfg, example_inputs, progress)
    plan.base_fingerprints = state_dict_fingerprints(model)
    _graph_passes(gm, plan)
    gm.meta[PLAN_KEY] = plan
    gm.train(model.training)
    return CapturedModel(gm)


def transform(
    model: nn.Module, cfg: TTTConfig, example_inputs: Any, *, progress: bool = True, verify: bool = True
) -> nn.Module:
    """Edit ``model`` in place into the one-minute-video architecture and return it (the same object).

    Args:
        model: a video DiT (diffusers model classes have adapters; others use the generic one).
        cfg: what to rewrite (see :class:`TTTConfig`; presets in ``tttgraph.presets``).
        example_inputs: the forward keyword arguments as a dict (a tuple of positional ones works);
            used to find the attention sites and the token layout. Afterwards the model runs at any
            batch size, frame count, text length (one chunk, or one per segment), dtype and device.
        progress: show capture progress.
        verify: check the edited model against the graph form (:func:`transform_graph`) on
            ``example_inputs``, with every gate opened to 0.5 for the check (two forward passes).

    Every pretrained module stays what it was (same class, same tensors, same names); each selected
    attention gets a ``gated_ttt`` submodule and segment-local attention (``tttgraph/inplace.py``).
    ``tttgraph.plan_of(model)`` is the :class:`TransformPlan`.
    """
    from tttgraph.inplace import CallShape, ModelForward, edited_modules, install
    from tttgraph.recipe import record as record_recipe

    if any(True for _ in edited_modules(model)):
        raise TTTGraphError("this model was already transformed by tttgraph; pass the original model")
    gm, plan, adapter = _capture_and_plan(model, cfg, example_inputs, progress)
    plan.base_fingerprints = state_dict_fingerprints(model)
    edits = _attention_edits(gm, plan, adapter)
    _graph_passes(gm, plan)
    gm.train(model.training)
    layers = {item.site.module_path: gm.get_submodule(item.module_path) for item in plan.ttt_sites}
    named = capture_info(gm).example_inputs
    seg = plan.segmentation
    shape = CallShape(plan.layout.grid, seg.text_tokens_per_segment)
    install(model, edits, layers, shape)
    if isinstance(adapter, GenericAdapter):
        log.warning(
            "transform: %s has no adapter and its frame axis is ambiguous in the example (frames = channels?); "
            "the transformed model keeps the example's patch grid and text chunk length. Transform it at a frame "
            "count unlike its channel count, or register an adapter (tttgraph.register_adapter)", plan.model_class)
    else:  # the layout of every call, read off its inputs
        segments = SequenceLayout(0, 1, seg.frames_per_segment, seg.overlap_frames)
        model.forward = ModelForward(model, adapter, shape, segments, seg.text_tokens_per_segment)
    gm.meta[PLAN_KEY] = plan
    recordable = {name: value for name, value in named.items() if not opaque(value)}  # see _capture_and_plan
    model.__dict__[STATE_KEY] = TransformState(dataclasses.replace(plan, evaluate=None), recordable)
    record_recipe(model, plan, recordable)
    if verify:
        _verify(model, CapturedModel(gm), named)
    return model


STATE_KEY = "_tttgraph"


@dataclass
class TransformState:
    """What :func:`transform` leaves on the model (``model._tttgraph``): the plan and the example inputs."""

    plan: TransformPlan
    example_inputs: dict[str, Any] = field(repr=False)


def _attention_edits(gm: torch.fx.GraphModule, plan: TransformPlan, adapter) -> dict[str, Any]:
    """Attention path -> :class:`~tttgraph.inplace.AttentionEdit`, read off the graph before the passes."""
    from tttgraph.inplace import AttentionEdit, SDPAEdit
    from tttgraph.passes.insert_ttt import placement

    nodes = {n.name: n for n in gm.graph.nodes}
    ttt_by_path = {item.site.module_path: item for item in plan.ttt_sites}
    by_path: dict[str, list[AttentionSite]] = {}
    for item in plan.ttt_sites:
        by_path.setdefault(item.site.module_path, [])
    for _, (site, _) in plan.segment_sites.items():
        by_path.setdefault(site.module_path, [])
    for site in sorted((s for s in plan.attention_sites if s.module_path in by_path), key=lambda s: s.index):
        by_path[site.module_path].append(site)
    edits = {}
    for path, module_sites in by_path.items():
        if not path:
            raise TTTGraphError(
                f"{plan.model_class} computes attention in its own forward, not in a submodule; tttgraph edits "
                "attention modules: move the attention into a module of its own"
            )
        calls = []
        for site in (s for s in module_sites if s.computed_by == "sdpa"):
            seg = plan.segment_sites.get(site.name)
            kind = "self" if seg is None or seg[0].kind not in ("cross", "text") else seg[0].kind
            calls.append(SDPAEdit(seg[1] if seg else None, kind))
        ttt_at, joint = None, None
        item = ttt_by_path.get(path)
        if item is not None:
            module_output = item.site.computed_by == "module"
            ttt_at = "output" if module_output else placement(nodes[item.site.name], nodes[item.insertion])
            if item.site.kind == "joint":
                joint = item.layout
        masked = adapter.valid_text_mask is not None and joint is not None
        edits[path] = AttentionEdit(tuple(calls), ttt_at, joint, masked)
    return edits


def _verify(model: nn.Module, graph: CapturedModel, named: dict[str, Any]) -> None:
    """The edited model equals the graph form on ``named`` with every TTT gate at 0.5; else TTTGraphError."""
    from torch.utils import _pytree as pytree

    gates = [p for name, p in model.named_parameters() if "_gate_" in name.rsplit(".", 1)[-1]]
    saved = [g.detach().clone() for g in gates]
    training = model.training
    try:
        with torch.no_grad():
            for g in gates:
                g.fill_(0.5)
            model.eval()
            graph.eval()
            expected = [t for t in pytree.tree_leaves(graph(**named)) if isinstance(t, torch.Tensor)]
            got = [t for t in pytree.tree_leaves(model(**named)) if isinstance(t, torch.Tensor)]
    finally:
        with torch.no_grad():
            for g, value in zip(gates, saved, strict=True):
                g.copy_(value)
        model.train(training)
        graph.train(training)
    if len(expected) != len(got):
        raise TTTGraphError(f"the edited model returns {len(got)} tensors, its graph form {len(expected)}")
    for a, b in zip(got, expected, strict=True):
        tol = 1e-4 if b.dtype in (torch.float32, torch.float64) else 3e-2
        scale = b.detach().abs().max().item() if b.numel() else 0.0
        diff = (a.float() - b.float()).abs().max().item() if b.numel() else 0.0
        if a.shape != b.shape or not diff <= tol * max(scale, 1.0):
            raise TTTGraphError(
                f"the edited {type(model).__name__} differs from its graph form on the example inputs (shape "
                f"{tuple(a.shape)} vs {tuple(b.shape)}, max difference {diff:.3g} at scale {scale:.3g}): the plan "
                "could not be carried over to this model's own forward. Please report it; "
                "tttgraph.transform_graph gives the graph form"
            )


def graph_form(model: nn.Module, example_inputs: Any = None) -> CapturedModel:
    """The graph form of a model edited by :func:`transform`, sharing its TTT layers and weights.

    Captured afresh from the model as it is now (its dtype, device, fused or added LoRA), at
    ``example_inputs`` (default: the transform's).
    """
    from tttgraph.inplace import removed

    if isinstance(model, CapturedModel):
        return model
    state = _state(model)
    named = state.example_inputs if example_inputs is None else bind_inputs(model, example_inputs)[1]
    named = inputs_like_model(model, named)
    cfg = state.plan.config
    with removed(model) as layers, _root_forward_removed(model):
        gm, plan, _ = _capture_and_plan(model, cfg, named, progress=False)
        plan.base_fingerprints = state.plan.base_fingerprints
        _graph_passes(gm, plan, {f"{path}.gated_ttt": layer for path, layer in layers.items()})
    gm.meta[PLAN_KEY] = plan
    gm.train(model.training)
    return CapturedModel(gm)


@contextlib.contextmanager
def _root_forward_removed(model: nn.Module):
    forward = model.__dict__.pop("forward", None)
    try:
        yield
    finally:
        if forward is not None:
            model.forward = forward


def inputs_like_model(model: nn.Module, named: dict[str, Any]) -> dict[str, Any]:
    """``named`` on the model's device, floating tensors in its dtype."""
    from torch.utils import _pytree as pytree

    ref = next(model.parameters(), None)
    if ref is None:
        return named

    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        return x.to(ref.device, ref.dtype) if x.is_floating_point() else x.to(ref.device)

    return pytree.tree_map(move, named)


def _state(model: nn.Module) -> TransformState:
    state = getattr(model, "__dict__", {}).get(STATE_KEY)
    if state is None:
        raise TTTGraphError(
            f"{type(model).__name__} was not produced by tttgraph.transform; transform it first"
        )
    return state


def example_inputs_of(model: nn.Module) -> dict[str, Any]:
    """The example inputs a transformed model (either form) was captured with, by argument name."""
    if isinstance(model, CapturedModel):
        return capture_info(model.graph_module).example_inputs
    return _state(model).example_inputs


def plan_of(model: nn.Module) -> TransformPlan:
    """The :class:`TransformPlan` of a model returned by :func:`transform` (or :func:`transform_graph`)."""
    gm = getattr(model, "graph_module", None) if isinstance(model, CapturedModel) else None
    if gm is not None:
        plan = gm.meta.get(PLAN_KEY)
        if plan is not None:
            return plan
    return _state(model).plan
