"""Capture a video transformer into an editable, trainable ``torch.fx.GraphModule``.

Non-strict ``torch.export`` traces the model with its example inputs into an ATen graph in
which every attention is one ``aten.scaled_dot_product_attention.default`` node (the default
decomposition table would split it into bmm + softmax, so no decomposition is run: even
``run_decompositions({})`` only re-traces, and it doubled the capture time of CogVideoX-5B);
``ep.module()`` unlifts parameters back into submodules under their original names. The graph
keeps the model's in-place ops (RoPE's slice ``copy_``): passes must not move reads across them.
The latent frame count becomes a dynamic dimension where the model's adapter allows it, so a
model captured at F frames runs at other frame counts.

:class:`CapturedModel` wraps the graph so that it takes the original call: same argument names,
positional or keyword, ``return_dict``, same output type.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from tttgraph.adapters import get_adapter
from tttgraph.errors import CaptureError, InputMismatchError, TTTGraphError
from tttgraph.progress import progress_bar

__all__ = ["CaptureInfo", "CapturedModel", "bind_inputs", "capture", "capture_info", "opaque"]

log = logging.getLogger(__name__)

_META_KEY = "tttgraph_capture"


@dataclass
class CaptureInfo:
    """What a capture fixed, kept on the GraphModule (``gm.meta["tttgraph_capture"]``).

    ``constants`` holds every non-tensor argument value (passed or defaulted) the graph baked in;
    ``graph_inputs`` the argument names the GraphModule takes, in order; ``frame_range`` the
    (min, max) latent frames the graph accepts (``max`` None when unbounded), equal bounds when
    frames are static.
    """

    model_class: str
    adapter: str
    signature: inspect.Signature
    graph_inputs: tuple[str, ...]
    constants: dict[str, Any]
    example_inputs: dict[str, Any] = field(repr=False)
    latent_frames: int | None
    dynamic_frames: bool
    frame_range: tuple[int, int | None] | None
    frames_note: str = ""
    config: Any = field(default=None, repr=False)
    # Python values the model read off tensors (truth values it branched on, ``.item()``, ``.tolist()``), as the
    # example gave them: the graph follows these values only (export refuses such a graph; the edited eager model
    # reads them at every call).
    branches: tuple[Any, ...] = ()


def capture_info(gm: torch.fx.GraphModule) -> CaptureInfo:
    """The :class:`CaptureInfo` that :func:`capture` attached to ``gm``."""
    info = getattr(gm, "meta", {}).get(_META_KEY)
    if info is None:
        raise TTTGraphError(
            f"{type(gm).__name__} carries no capture information; build it with "
            f"tttgraph.capture.capture(model, inputs) (tttgraph.transform captures the model itself)"
        )
    return info


def bind_inputs(model: nn.Module, example_inputs: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    """Name the example inputs by the model's forward signature.

    ``example_inputs`` is a dict of keyword arguments, a tuple of positional ones, or a single
    tensor; ``return_dict`` is dropped (the wrapper handles it).
    """
    sig = inspect.signature(type(model).forward.__get__(model))  # the class's: tttgraph may wrap the instance's
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        args, kwargs = (example_inputs,), {}
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputMismatchError(
            f"example_inputs do not fit {type(model).__name__}.forward{sig}: {exc}; pass a dict of the "
            f"forward's keyword arguments (tttgraph.models.example_inputs builds one for tiny models)"
        ) from exc
    named = dict(bound.arguments)
    named.pop("return_dict", None)
    return sig, named


def _has_tensor(value: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value))


def _frame_symbol(gm: torch.fx.GraphModule, where: tuple[str, int] | None):
    """The size of the frame dim in the captured graph: a SymInt if dynamic, else an int."""
    if where is None:
        return None
    name, dim = where
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.name == name and "val" in node.meta:
            return node.meta["val"].shape[dim]
    return None


def _export(model, kwargs, dynamic_shapes, branches: list[bool] | None = None):
    with _Branches(branches) if branches is not None else contextlib.nullcontext(), _dim_marks_removed(kwargs):
        return torch.export.export(model, (), kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False)


@contextlib.contextmanager
def _dim_marks_removed(kwargs):
    """torch.export marks the input tensors it makes dynamic (``_dynamo_dynamic_indices`` ...) and leaves the marks:
    a later static export of the same tensors (the fallback after a failed dynamic one) would read them as
    dynamic, and so would torch.compile. Within the block, the marks it adds are removed afterwards."""
    tensors = [x for x in pytree.tree_leaves(kwargs) if isinstance(x, torch.Tensor)]
    before = [set(getattr(x, "__dict__", {})) for x in tensors]
    try:
        yield
    finally:
        for x, had in zip(tensors, before, strict=True):
            for attr in [a for a in getattr(x, "__dict__", {}) if a not in had and a.startswith(("_dynamo_",
                                                                                                  "_has_dynamo_"))]:
                delattr(x, attr)


# Reads of a tensor's values into Python: a branch (``if tensor:``), a number (Wan-Animate 2's RoPE offsets), a
# list (its grid sizes, ``grid_sizes.tolist()``).
_VALUE_READS = (torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist)


class _Branches(TorchFunctionMode):
    """Records (``replay`` None) or replays the Python values the model reads off tensors (``_VALUE_READS``).

    Such a read stops torch.export (a data-dependent value); the values the example inputs give, recorded in an
    eager run, are replayed during the capture, which then follows the branches and sizes the example took. The
    record is flat, one scalar per element read: under export, ``tolist()`` reads its elements one ``item()`` at
    a time.
    """

    def __init__(self, replay: list | None = None):
        super().__init__()
        self.replay = None if replay is None else list(replay)
        self.seen: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _VALUE_READS:
            return func(*args, **kwargs)
        if self.replay is not None:
            count = args[0].numel() if func is torch.Tensor.tolist else 1
            if len(self.replay) < count:
                raise CaptureError("the capture read more tensor values into Python than the eager run did")
            values, self.replay = self.replay[:count], self.replay[count:]
            return _nested(values, tuple(args[0].shape)) if func is torch.Tensor.tolist else values[0]
        value = func(*args, **kwargs)
        if func is torch.Tensor.tolist:
            self.seen.extend(_flat(value))
        else:
            self.seen.append(bool(value) if func is torch.Tensor.__bool__ else value)
        return value


def _flat(value) -> list:
    return [x for item in value for x in _flat(item)] if isinstance(value, list) else [value]


def _nested(values: list, shape: tuple[int, ...]):
    """``values`` (flat, row-major) as the nested lists ``tolist()`` gives for ``shape``."""
    if not shape:
        return values[0]
    step = len(values) // shape[0] if shape[0] else 0
    return [_nested(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _example_branches(model, named) -> list:
    """The Python values the model reads off tensors on the example inputs, in order (an eager run)."""
    with torch.no_grad(), _Branches() as branches:
        model(**named)
    return branches.seen


def _data_dependent(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc} {exc.__cause__!r}"
    # A number read off a tensor and then hashed (Wan-Animate 2 keys a cache by it) fails as an unhashable SymInt.
    return any(sign in text for sign in ("GuardOnDataDependentSymNode", "data-dependent", "non-nested SymInt"))


def capture(
    model: nn.Module,
    example_inputs: Any,
    *,
    dynamic_frames: bool | str = "auto",
    progress: bool = True,
    dynamic_text: bool = False,
    adapter: Any = None,
) -> torch.fx.GraphModule:
    """Capture ``model`` called with ``example_inputs`` into a trainable GraphModule.

    Args:
        model: a video transformer (any ``nn.Module``; frame handling needs a registered adapter).
        example_inputs: dict of forward keyword arguments (or a tuple of positional ones).
        dynamic_frames: ``True`` makes the latent frame count a dynamic dimension or raises
            :class:`CaptureError`; ``False`` keeps it fixed; ``"auto"`` makes it dynamic where the
            model's adapter allows it (CogVideoX, Wan, HunyuanVideo, Mochi, Allegro) and the example
            has at least 2 frames (export specialises sizes 0 and 1).
        progress: show a progress bar of the capture stages.
        dynamic_text: with dynamic frames, make the text length dynamic too (segments that each
            carry a text chunk: a longer video brings more text).
        adapter: the model's adapter, when the caller has looked it up already.

    Returns:
        An unlifted ``torch.fx.GraphModule`` whose parameters and buffers are the model's own
        tensors under their original names; its graph calls attention as
        ``aten.scaled_dot_product_attention.default``. It takes the non-``return_dict`` inputs by
        keyword and returns what the model returns with its default ``return_dict``. ``.train()``
        and ``.eval()`` set the mode flag only: dropout is traced as it was at capture (every
        supported family has dropout 0). Wrap it in :class:`CapturedModel` for the original call.
        Inputs that are objects torch.export cannot take (Wan-Animate 2's KV cache) are no graph
        inputs: export traces with a copy of each, and :class:`CapturedModel` accepts only the object given.
    """
    if dynamic_frames not in (True, False, "auto"):
        raise CaptureError(f"dynamic_frames={dynamic_frames!r} is not one of True, False, 'auto'")
    sig, named = bind_inputs(model, example_inputs)
    adapter = adapter or get_adapter(model)
    constants = {
        name: (named[name] if name in named else p.default)
        for name, p in sig.parameters.items()
        if name != "return_dict" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and not _has_tensor(named.get(name))
    }
    frames = _latent_frames(adapter, model, named)
    want_dynamic, note = _decide_dynamic(adapter, dynamic_frames, frames)
    objects = {name: value for name, value in named.items() if opaque(value)}
    graph_named = {name: value for name, value in named.items() if name not in objects}

    bar = progress_bar(total=2, desc=f"capture {type(model).__name__}", disable=not progress, leave=False)
    try:
        bar.set_postfix_str("torch.export (non-strict)")
        log.info("capture: exporting %s (dynamic frames: %s)", type(model).__name__, want_dynamic)
        with adapter.capture_patches(model), _objects_bound(model, objects):
            ep, branches = _export_with_frames(model, graph_named, adapter, want_dynamic, dynamic_frames,
                                               dynamic_text)
        bar.update()
        bar.update()
        bar.set_postfix_str("unlift parameters")
        gm = ep.module()
        bar.update()
    finally:
        bar.close()
    # ep.module() forbids train()/eval() through instance attributes; the class methods work.
    for attr in ("train", "eval"):
        gm.__dict__.pop(attr, None)
    _differentiable_copies(gm)
    _devices_follow_inputs(gm)
    gm.train(model.training)

    sym = _frame_symbol(gm, _frame_dim(adapter, named))
    is_dynamic = isinstance(sym, torch.SymInt)
    if want_dynamic and not is_dynamic:
        note = "torch.export specialised the frame count (the model's code fixes it)"
        if dynamic_frames is True:
            raise CaptureError(
                f"{type(model).__name__}: {note}; capture with dynamic_frames=False at the frame count "
                f"you will run, or dynamic_frames='auto'"
            )
    frame_range = _frame_range(ep, sym, frames, is_dynamic, adapter, model)
    gm.meta[_META_KEY] = CaptureInfo(
        model_class=type(model).__name__, adapter=adapter.name, signature=sig,
        graph_inputs=tuple(graph_named), constants=constants, example_inputs=named, latent_frames=frames,
        dynamic_frames=is_dynamic, frame_range=frame_range, frames_note=note,
        config=getattr(model, "config", None), branches=tuple(branches or ()),
    )
    log.info("capture: done, frames %s", frame_range)
    return gm


def _devices_follow_inputs(gm: torch.fx.GraphModule) -> int:
    """Make the graph run on the device of its inputs, not on the device it was captured on.

    torch.export bakes the capture device into the graph: the checks of
    ``aten._assert_tensor_metadata`` (device and dtype of the inputs of ``.to(...)``), and the
    ``device=`` of ``.to(...)`` and of factory ops (``arange``, ``zeros`` ...). A model captured on the
    CPU (or the meta device) and then moved with ``.to("cuda")`` would fail those checks ("Tensor
    device mismatch") or create CPU tensors, and autocast or FSDP mixed precision would fail their
    dtype checks. The checks are removed (they compute nothing) and every other baked device becomes
    the device of the first tensor input, read at run time. Returns the nodes changed or removed.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    ref = next((n for n in placeholders if isinstance(n.meta.get("val"), torch.Tensor)), None)
    if ref is None:
        return 0
    device = None
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            gm.graph.erase_node(node)
            changed += 1
            continue
        in_kwargs = isinstance(node.kwargs.get("device"), torch.device)
        in_args = [i for i, a in enumerate(node.args) if isinstance(a, torch.device)]
        if not in_kwargs and not in_args:
            continue
        changed += 1
        if device is None:
            with gm.graph.inserting_after(placeholders[-1]):
                device = gm.graph.call_function(getattr, (ref, "device"))
            device.meta["val"] = ref.meta["val"].device
        if in_kwargs:
            node.kwargs = {**node.kwargs, "device": device}
        node.args = tuple(device if i in in_args else a for i, a in enumerate(node.args))
    if changed:
        gm.recompile()
    return changed


def _differentiable_copies(gm: torch.fx.GraphModule) -> int:
    """Replace functional ``aten.copy(dst, src)`` by ``src`` where shapes and dtypes agree.

    Functionalisation turns in-place slice writes (``q[:, :, n:] = rope(q[:, :, n:])``, CogVideoX
    RoPE) into ``slice_scatter(x, copy(slice(x), src))``; ``aten.copy`` has no autograd formula, so
    backward would fail. Its value is ``src`` (and ``dst`` gets no gradient), which is what the
    replacement computes. Returns the number of copies replaced.
    """
    replaced = 0
    for node in list(gm.graph.nodes):
        if node.target is not torch.ops.aten.copy.default:
            continue
        dst, src = node.args[:2]
        vd, vs = dst.meta.get("val"), src.meta.get("val")
        if not (isinstance(vd, torch.Tensor) and isinstance(vs, torch.Tensor)):
            continue
        if vd.dtype != vs.dtype or [str(d) for d in vd.shape] != [str(d) for d in vs.shape]:
            log.warning("capture: %s broadcasts or casts; backward through it is not supported", node.name)
            continue
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        if not dst.users:
            gm.graph.erase_node(dst)
        replaced += 1
    if replaced:
        gm.graph.lint()
        gm.recompile()
    return replaced


_PLAIN = (int, float, bool, str, complex, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


def opaque(value: Any) -> bool:
    """Whether ``value`` holds an object torch.export cannot take as an input (not a tensor, a Python scalar or
    a container of them): a cache object such as Wan-Animate 2's ``WanAnimate2KVCache``."""
    return any(not isinstance(leaf, (torch.Tensor, *_PLAIN)) for leaf in pytree.tree_leaves(value))


@contextlib.contextmanager
def _objects_bound(model: nn.Module, objects: dict[str, Any]):
    """Within the block, ``model`` is called without the arguments ``objects``: its forward gets a copy of each
    bound, so that export never sees them, and what the traced forward writes into them (fake tensors) lands in
    the copies, not in the caller's objects. The graph holds them as constants (``CaptureInfo.constants``)."""
    if not objects:
        yield
        return
    had = model.__dict__.get("forward")
    model.forward = functools.partial(model.forward, **copy.deepcopy(objects))
    try:
        yield
    finally:
        if had is None:
            del model.forward
        else:
            model.forward = had


def _latent_frames(adapter, model, named) -> int | None:
    try:
        return adapter.latent_frames(model, named)
    except (TTTGraphError, NotImplementedError):
        return None


def _frame_dim(adapter, named) -> tuple[str, int] | None:
    axis = getattr(adapter, "frame_axis", None)
    if axis is None or not isinstance(named.get("hidden_states"), torch.Tensor):
        return None
    return ("hidden_states", axis)


def _decide_dynamic(adapter, dynamic_frames, frames) -> tuple[bool, str]:
    """Whether to ask export for a dynamic frame dim, and why not when it is not asked."""
    if dynamic_frames is False:
        return False, "dynamic_frames=False"
    if not adapter.dynamic_frames:
        reason = adapter.frames_reason or f"the {adapter.name} adapter keeps frames static"
        if dynamic_frames is True:
            raise CaptureError(
                f"cannot make the frame count dynamic: {reason}; capture with dynamic_frames=False "
                f"(or 'auto') at the frame count you will run"
            )
        return False, reason
    if frames is not None and frames < 2:
        reason = f"the example has {frames} latent frame(s); export specialises sizes 0 and 1"
        if dynamic_frames is True:
            raise CaptureError(f"cannot make the frame count dynamic: {reason}; capture with >= 2 frames")
        return False, reason
    return True, ""


# Model classes seen to read tensor values into Python: their later captures record the values first, rather
# than find out from a failed torch.export.
_BRANCHING: set[type] = set()


def _export_with_frames(model, named, adapter, want_dynamic, dynamic_frames, dynamic_text=False):
    """(ExportedProgram, the tensor truth values replayed or None): dynamic frames where wanted, else or on
    failure (unless ``dynamic_frames is True``) static; a branch on tensor values follows the example's."""
    spec = adapter.frame_dynamic_shapes(model, named) if want_dynamic else None
    if spec is not None and dynamic_text:
        spec = adapter.text_dynamic_shapes(spec, named)
    failure = None
    if type(model) not in _BRANCHING:
        try:
            return _export(model, named, spec), None
        except Exception as exc:
            failure = exc
    branches = None
    if (failure is None or _data_dependent(failure)) and (branches := _example_branches(model, named) or None):
        _BRANCHING.add(type(model))
        log.warning("capture: %s reads tensor values into Python (branches, .item(), .tolist()); capturing with "
                    "the values the example gives (%s)", type(model).__name__, branches)
    if branches is not None or failure is None:
        try:
            return _export(model, named, spec, branches), branches
        except Exception as exc:
            failure = exc
    if spec is None or dynamic_frames is True:
        raise CaptureError(
            f"torch.export (non-strict) failed on {type(model).__name__}: {type(failure).__name__}: "
            f"{str(failure)[:2000]}\nCheck that example_inputs are the model's real forward inputs"
            + ("; retry with dynamic_frames=False" if spec is not None else "")
        ) from failure
    log.warning("capture: dynamic frames failed (%s); capturing with static frames", type(failure).__name__)
    try:
        return _export(model, named, None, branches), branches
    except Exception as again:
        raise CaptureError(
            f"torch.export (non-strict) failed on {type(model).__name__}: {type(again).__name__}: "
            f"{str(again)[:2000]}\nCheck that example_inputs are the model's real forward inputs"
        ) from again


def _frame_range(ep, sym, frames, is_dynamic, adapter, model) -> tuple[int, int | None] | None:
    if frames is None:
        return None
    if not is_dynamic:
        return (frames, frames)
    vr = ep.range_constraints.get(sym.node.expr)
    if vr is None:
        return (2, None)
    # Unbounded ranges end at torch's IntInfinity, which int() cannot convert.
    upper = None if str(vr.upper) in ("int_oo", "oo") else int(vr.upper)
    return (int(vr.lower), upper)


def _same(a: Any, b: Any) -> bool:
    """Python-value equality as the graph's guards see it (``True`` is not ``1`` here)."""
    if a is b:
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


class CapturedModel(nn.Module):
    """Drop-in replacement for the captured model: takes its original call, returns its output type.

    The GraphModule's children are registered as this module's children (the same objects), so
    ``named_parameters()`` and ``state_dict()`` use the model's own names, and ``.to()``, ``.train()``
    and optimizers act on the tensors the graph reads. ``self.graph_module`` is the graph itself
    (held outside the module tree so that nothing is listed twice). ``config``, ``dtype``
    and ``device`` answer as the original's do, so a diffusers pipeline can use the wrapper.

    Arguments that were Python values at capture (ints, bools, tuples of floats, ``None``) are
    accepted with the captured value and refused with any other; tensor shapes are checked
    against the graph (only the frame count of a dynamic-frame capture may change).
    """

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__()
        self.__dict__["graph_module"] = graph_module
        for name, child in graph_module.named_children():
            self.add_module(name, child)
        for name, param in graph_module.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in graph_module.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        self._info = capture_info(graph_module)
        self.config = self._info.config

    def _apply(self, fn, recurse=True):
        # .to()/.half()/... replace this module's own parameter and buffer entries; the graph module
        # holds the same names at its root and must read the new tensors, not the old ones.
        super()._apply(fn, recurse)
        gm = self.graph_module
        for name in gm._parameters:
            gm._parameters[name] = self._parameters[name]
        for name in gm._buffers:
            gm._buffers[name] = self._buffers[name]
        return self

    @classmethod
    def capture(cls, model: nn.Module, example_inputs: Any, **kwargs) -> CapturedModel:
        """``CapturedModel(capture(model, example_inputs, **kwargs))``."""
        return cls(capture(model, example_inputs, **kwargs))

    @property
    def info(self) -> CaptureInfo:
        return self._info

    @property
    def dtype(self) -> torch.dtype:
        return next(self.graph_module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.graph_module.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        info = self._info
        try:
            bound = info.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputMismatchError(f"{info.model_class}.forward{info.signature}: {exc}") from exc
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        return_dict = arguments.pop("return_dict", True)
        for name, captured in info.constants.items():
            given = arguments.get(name)
            if not _same(given, captured):
                raise InputMismatchError(
                    f"argument {name!r} was the constant {captured!r} when {info.model_class} was captured, "
                    f"got {given!r}; the graph has that value baked in. Call with {name}={captured!r}, "
                    f"or re-capture with {{..., {name!r}: {given!r}}} in the example inputs "
                    f"(tttgraph.transform, or tttgraph.capture.capture for a plain capture)"
                )
        graph_kwargs = {name: arguments[name] for name in info.graph_inputs}
        self._check_shapes(graph_kwargs)
        out = self.graph_module(**graph_kwargs)
        if return_dict or not hasattr(out, "to_tuple"):
            return out
        return out.to_tuple()

    def _check_shapes(self, graph_kwargs: dict[str, Any]) -> None:
        """Refuse tensors whose static dims differ from the capture, naming input and dim."""
        leaves, spec = pytree.tree_flatten_with_path(graph_kwargs)
        captured_spec = pytree.tree_structure({k: self._info.example_inputs[k] for k in self._info.graph_inputs})
        if spec != captured_spec:
            raise InputMismatchError(
                f"the tensor inputs are structured as {spec}, the captured graph takes {captured_spec}; "
                f"pass tensors where tensors were passed at capture, or re-capture with these inputs"
            )
        placeholders = [n for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        for (path, value), node in zip(leaves, placeholders, strict=False):
            expected = node.meta.get("val")
            if not isinstance(value, torch.Tensor) or not isinstance(expected, torch.Tensor):
                continue
            where = pytree.keystr(path)
            if value.dim() != expected.dim():
                raise InputMismatchError(
                    f"input {where} has {value.dim()} dims, the captured graph takes {expected.dim()} "
                    f"(shape {tuple(expected.shape)}); re-capture with example inputs of the new shape"
                )
            for dim, (got, want) in enumerate(zip(value.shape, expected.shape, strict=True)):
                if isinstance(want, int) and got != want:
                    hint = self._info.frames_note or "it was static at capture"
                    raise InputMismatchError(
                        f"input {where} has size {got} at dim {dim}, the captured graph fixed it to {want} "
                        f"({hint}); re-capture (tttgraph.transform, or tttgraph.capture.capture for a plain "
                        f"capture) with example inputs of this size"
                    )

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        # Pipelines read config-like attributes of their transformer (e.g. transformer.config).
        config = self.__dict__.get("config")
        if config is not None and hasattr(config, name):
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
