"""The edits :func:`tttgraph.transform` makes to the user's own model, and how they run.

The compiler works on a captured graph (``tttgraph/rewrite.py``): it finds the attention sites, the
token layout and where each TTT layer goes. This module carries that plan over to the eager model,
**in place**: the same object, the same class and config, every pretrained module untouched (so
``to_q`` is still the ``nn.Linear`` PEFT knows), and

- each TTT layer registered as ``<attention>.gated_ttt``, a submodule of the attention it follows;
- each edited attention module's ``forward`` wrapped by an :class:`EditedForward`, which runs the
  module's own forward (and so its own diffusers processor, whatever the user set) inside a
  :class:`SegmentedSDPA` scope. That scope replaces every ``F.scaled_dot_product_attention`` call of
  the module with segment-local attention (``tttgraph/segment_attention.py``) and, where the graph
  put the TTT layer right after the attention heads are merged (HunyuanVideo, Mochi: the heads are
  split into two streams before their projections), applies the TTT there; where the TTT follows the
  attention's out-projection (CogVideoX, Wan, LTX, Allegro, Latte), it is applied to the module's
  output (a ``(video, text)`` pair is joined in the layout's order, passed through the TTT and split).

Nothing is fixed at the capture's frame count, batch, dtype, device, text length or train/eval mode:
every length is read from the tensors of each call. A ``TorchFunctionMode`` entered inside the
module's forward is traced by ``torch.compile`` (``fullgraph=True`` holds) and by ``torch.export``.

One text chunk, several segments: a stock pipeline passes one prompt (``[B, Lt, C]``) where the
layout wants one chunk per segment (``[B, n*Lt, C]``). At joint attention the chunk is then repeated
per segment (each segment attends to the prompt, the TTT reads ``[txt | vid_0 | txt | vid_1 | ...]``)
and the text stream's output is the mean over the n chunks, so the block's text residual keeps its
length. Cross-attention to one chunk needs nothing: every window reads the same keys.

Sizes per call: the model's own ``forward`` is wrapped by :class:`ModelForward`, which reads each
call's patch grid and text length (through the family adapter) into the :class:`CallShape` every
edited module shares. Padded prompts whose attention drops the padding per sample (Mochi): the edit
keeps every token and masks the padded ones out of the keys instead (``AttentionEdit.valid_text_mask``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout
from tttgraph.segment_attention import segment_attend

__all__ = [
    "AttentionEdit",
    "CallShape",
    "EditedForward",
    "ModelForward",
    "SDPAEdit",
    "SegmentedSDPA",
    "edited_modules",
    "install",
    "removed",
]

TTT_NAME = "gated_ttt"
_SDPA = F.scaled_dot_product_attention


@dataclass(frozen=True)
class SDPAEdit:
    """One SDPA call of an attention module: segment-local (``layout`` and ``kind``) or left global.

    ``kind``: ``"self"`` (queries and keys over ``layout``'s sequence), ``"cross"`` (video queries,
    one text chunk per segment as keys) or ``"text"`` (text-only, each chunk to itself).
    """

    layout: SequenceLayout | None
    kind: str = "self"


@dataclass(frozen=True)
class AttentionEdit:
    """What happens inside one attention module.

    Attributes:
        calls: one :class:`SDPAEdit` per SDPA call the module makes, in call order (a module that
            calls SDPA more often, e.g. Mochi once per sample, repeats the list).
        ttt_at: ``"sdpa"`` (the TTT reads the merged heads of the SDPA output), ``"output"`` (the
            module's output) or None (no TTT layer here).
        joint: the sequence layout of the module's attention when it is joint text+video attention
            with separate text and video streams (for the one-chunk rule), else None.
        valid_text_mask: the module's processor drops the text tokens its ``attention_mask`` marks
            invalid, one SDPA call per sample (Mochi); the edit passes an all-valid mask instead and
            masks the invalid tokens out of each sample's keys (their own outputs are zero, as the
            processor pads them).
    """

    calls: tuple[SDPAEdit, ...]
    ttt_at: str | None
    joint: SequenceLayout | None = None
    valid_text_mask: bool = False  # the module's ``attention_mask`` [B, L] marks valid text (Mochi)


class CallShape:
    """The patch grid and text chunk length of the model's current call, shared by all its edited modules.

    The plan's layouts hold the sizes of the example inputs; a model called at another resolution or
    with another prompt length is read through :meth:`layout`. Set per call by :class:`ModelForward`
    from the model's own inputs; a block called on its own sees the last call's (initially the
    example's) sizes.
    """

    def __init__(self, grid: tuple[int, int], text_chunk: int):
        self.example_tokens_per_frame = grid[0] * grid[1]
        self.grid, self.text_chunk = grid, text_chunk

    def layout(self, base: SequenceLayout | None) -> SequenceLayout | None:
        """``base`` with this call's tokens per frame (where it counts a frame's patches) and text chunk."""
        if base is None:
            return None
        tpf = base.video_tokens_per_frame
        if tpf == self.example_tokens_per_frame:
            tpf = self.grid[0] * self.grid[1]
        text = self.text_chunk if base.text_tokens_per_segment else 0
        if tpf == base.video_tokens_per_frame and text == base.text_tokens_per_segment:
            return base
        return dataclasses.replace(base, video_tokens_per_frame=tpf, text_tokens_per_segment=text)

    def __repr__(self) -> str:
        return f"CallShape(grid={self.grid}, text_chunk={self.text_chunk})"


class SegmentedSDPA(TorchFunctionMode):
    """Within one call of an edited attention module: segment-local SDPA, and the TTT where it reads heads.

    Entered by :class:`EditedForward` around the module's own forward. ``F.scaled_dot_product_attention``
    calls are taken in order from ``edit.calls`` (cycling); every other torch function runs unchanged.
    """

    def __init__(self, module: nn.Module, edit: AttentionEdit, shape: CallShape, attend=None,
                 text_mask: Tensor | None = None):
        super().__init__()
        self.module, self.edit, self.shape, self.count = module, edit, shape, 0
        self.attend = attend or segment_attend
        self.text_mask = text_mask  # [B, L] bool: valid text tokens, one SDPA call per sample

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not _SDPA or not self.edit.calls:
            return func(*args, **kwargs)
        call = self.edit.calls[self.count % len(self.edit.calls)]
        sample = self.count
        self.count += 1
        q, k, v = (kwargs.pop(name) if name in kwargs else None for name in ("query", "key", "value"))
        args = tuple(x for x in (q, k, v) if x is not None) + tuple(args)
        valid = None
        if self.text_mask is not None:  # this call is sample ``sample`` of the batch, with every text token
            valid = _valid_tokens(self.text_mask[sample % self.text_mask.shape[0]], args[0].shape[2],
                                  self.edit.joint)
            kwargs["attn_mask"] = valid[None, None, None, :]
        out = self.attend(self.shape.layout(call.layout), call.kind, *args, **kwargs)  # [B, H, N, D]
        if valid is not None:
            out = out * valid[:, None].to(out.dtype)  # invalid text rows are zero, as the processor pads them
        if self.edit.ttt_at == "sdpa":
            merged = out.transpose(1, 2).flatten(2)  # [B, N, H*D]: what the processor merges next
            merged = _ttt(self.module, self.shape, merged)
            out = merged.unflatten(2, (out.shape[1], -1)).transpose(1, 2)
        return out


def _valid_tokens(text_mask: Tensor, tokens: int, layout: SequenceLayout) -> Tensor:
    """[N] bool over the joint sequence: video tokens and the valid text tokens of ``text_mask`` [L]."""
    text = text_mask.bool()
    video = text.new_ones(tokens - text.shape[0])
    return torch.cat([text, video] if layout.text_first else [video, text])


def _ttt(module: nn.Module, shape: CallShape, x: Tensor) -> Tensor:
    """The module's TTT layer on ``x`` [B, N, C], at this call's grid and text chunk."""
    layer = getattr(module, TTT_NAME)
    return layer(x, layout=shape.layout(layer.layout), grid=shape.grid)


class EditedForward:
    """The ``forward`` of an edited attention module: its own forward, segment-local, then the TTT.

    Stored as the module's instance attribute ``forward`` (``nn.Module.__call__`` calls it), so the
    module keeps its class, its processor and every submodule; ``original`` is the class's forward.
    A plain object: pickles and deep-copies with the module, holds no tensors.
    """

    def __init__(self, module: nn.Module, edit: AttentionEdit, shape: CallShape):
        self.module, self.edit, self.shape = module, edit, shape
        self.original = type(module).forward  # a plain function: torch.compile traces it, pickle names it
        self.attend = segment_attend  # how each SDPA call is computed (generate/distributed.py splits heads)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, edit, shape = self.module, self.edit, self.shape
        repeats, text_mask = 1, None
        joint = shape.layout(edit.joint)
        if joint is not None:
            args, kwargs, repeats = _one_chunk_per_segment(module, joint, args, kwargs)
        if edit.valid_text_mask:
            args, kwargs, text_mask = _all_text_valid(module, args, kwargs)
        with SegmentedSDPA(module, edit, shape, self.attend, text_mask):
            out = self.original(module, *args, **kwargs)
        if edit.ttt_at == "output":
            out = _ttt_on_output(module, shape, joint, out)
        if repeats > 1:  # give the text stream back its one chunk: the mean over the segments' copies
            video, text = out
            out = (video, text.unflatten(1, (repeats, -1)).mean(1))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.module).__name__}, ttt_at={self.edit.ttt_at!r})"


def _ttt_on_output(module: nn.Module, shape: CallShape, layout: SequenceLayout | None, out: Any) -> Any:
    """The TTT on the module's output: a [B, N, C] tensor, or a (video, text) pair joined in layout order."""
    if isinstance(out, Tensor):
        return _ttt(module, shape, out)
    if isinstance(out, tuple) and len(out) == 2 and layout is not None:
        video, text = out
        joint = _ttt(module, shape, layout.join(text, video))
        nv = video.shape[1]
        if layout.text_first:
            return joint[:, joint.shape[1] - nv:], joint[:, : joint.shape[1] - nv]
        return joint[:, :nv], joint[:, nv:]
    raise TTTGraphError(
        f"the attention returned {type(out).__name__}; tttgraph inserts its TTT layer after an attention that returns "
        "a [B, N, C] tensor or a (video, text) pair"
    )


_STREAM_ARGS = ("hidden_states", "encoder_hidden_states", "attention_mask")


def _one_chunk_per_segment(module: nn.Module, layout: SequenceLayout, args: tuple, kwargs: dict):
    """Repeat a one-chunk text stream once per segment (see the module docstring). Returns (args, kwargs, n)."""
    bound = _bind(module, args, kwargs)
    video, text = bound.get("hidden_states"), bound.get("encoder_hidden_states")
    if not isinstance(video, Tensor) or not isinstance(text, Tensor) or layout.frames_per_segment is None:
        return args, kwargs, 1
    frames = video.shape[1] // layout.video_tokens_per_frame
    segments = layout.num_segments(frames)
    if segments == 1 or text.shape[1] != layout.text_tokens_per_segment:
        return args, kwargs, 1
    mask = bound.get("attention_mask")
    if mask is not None:
        if mask.shape[-1] != text.shape[1]:
            raise TTTGraphError(
                f"one text chunk of {text.shape[1]} tokens for {segments} segments, with an attention mask over "
                f"{mask.shape[-1]} tokens: pass one text chunk per segment ({layout.text_tokens(frames)} tokens)"
            )
        bound["attention_mask"] = mask.repeat(*([1] * (mask.dim() - 1)), segments)
    bound["encoder_hidden_states"] = text.repeat(1, segments, 1)
    args, kwargs = _unbind(module, args, kwargs, bound)
    return args, kwargs, segments


def _all_text_valid(module: nn.Module, args: tuple, kwargs: dict):
    """The module's ``attention_mask`` [B, L] replaced by ones; returns (args, kwargs, the mask as bool)."""
    bound = _bind(module, args, kwargs)
    mask = bound.get("attention_mask")
    if not isinstance(mask, Tensor) or bool(mask.all()):
        return args, kwargs, None
    bound["attention_mask"] = torch.ones_like(mask)
    args, kwargs = _unbind(module, args, kwargs, bound)
    return args, kwargs, mask.bool()


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    names = _positional_names(type(module))
    return {**{n: a for n, a in zip(names, args, strict=False) if n in _STREAM_ARGS},
            **{k: v for k, v in kwargs.items() if k in _STREAM_ARGS}}


def _unbind(module: nn.Module, args: tuple, kwargs: dict, bound: dict[str, Any]) -> tuple[tuple, dict]:
    names = _positional_names(type(module))
    args = tuple(bound.get(n, a) if n in _STREAM_ARGS else a for n, a in zip(names, args, strict=False)) + args[
        len(names):]
    kwargs = {k: bound.get(k, v) if k in _STREAM_ARGS else v for k, v in kwargs.items()}
    return args, kwargs


_POSITIONAL: dict[type, tuple[str, ...]] = {}
_SIGNATURES: dict[Any, inspect.Signature] = {}


def _signature(fn) -> inspect.Signature:
    """``inspect.signature(fn)``, computed once per function (the model's forward runs it every call)."""
    sig = _SIGNATURES.get(fn)
    if sig is None:
        sig = _SIGNATURES[fn] = inspect.signature(fn)
    return sig


def _positional_names(cls: type) -> tuple[str, ...]:
    names = _POSITIONAL.get(cls)
    if names is None:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
        names = _POSITIONAL[cls] = tuple(
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
    return names


# ------------------------------------------------------------------------------------------ install


def install(model: nn.Module, edits: dict[str, AttentionEdit], layers: dict[str, nn.Module], shape: CallShape) -> None:
    """Edit ``model`` in place: ``layers`` (attention path -> TTT layer) and each module's :class:`EditedForward`."""
    for path, edit in edits.items():
        module = model.get_submodule(path)
        if isinstance(module.__dict__.get("forward"), EditedForward):
            raise TTTGraphError(f"{path} is already edited by tttgraph; transform the original model")
        if path in layers:
            module.add_module(TTT_NAME, layers[path])
        elif edit.ttt_at is not None:
            raise TTTGraphError(f"{path}: the plan puts a TTT layer here but none was built")
        module.forward = EditedForward(module, edit, shape)


def edited_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, AttentionEdit]]:
    """(path, module, edit) of every module of ``model`` that tttgraph edited."""
    for path, module in model.named_modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, EditedForward):
            yield path, module, forward.edit


@contextlib.contextmanager
def removed(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Within the block, ``model`` is as before :func:`install` (yields path -> TTT layer); then edited again."""
    taken = []
    for path, module, _ in list(edited_modules(model)):
        forward = module.__dict__.pop("forward")
        layer = module._modules.pop(TTT_NAME, None)
        taken.append((path, module, forward, layer))
    try:
        yield {path: layer for path, _, _, layer in taken if layer is not None}
    finally:
        for _, module, forward, layer in taken:
            if layer is not None:
                module.add_module(TTT_NAME, layer)
            module.forward = forward


class ModelForward:
    """The ``forward`` of a transformed model: reads this call's sizes into the :class:`CallShape`, then runs.

    The adapter reads the patch grid and text length off the model's own inputs. The text is one chunk
    per segment when it holds ``segments * text_tokens_per_segment`` tokens, else one chunk for all.
    Families with per-frame position tables (``tables``: Latte's ``[1, L, C]``) read them
    segment-relative (``tttgraph/positions.py``): each frame takes the row of its position in its segment.
    """

    def __init__(self, model: nn.Module, adapter: Any, shape: CallShape, segments: SequenceLayout, text_chunk: int):
        # The adapter is resolved by the caller: wrappers such as FSDP2's fully_shard rename the class later.
        self.model, self.adapter, self.shape = model, adapter, shape
        self.segments, self.text_chunk = segments, text_chunk
        self.tables = tuple(adapter.temporal_position_tables)
        self.original = type(model).forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from tttgraph.positions import segment_relative_positions

        model = self.model
        named = dict(_signature(self.original).bind(model, *args, **kwargs).arguments)
        call = self.adapter.layout(model, named)
        n = self.segments.num_segments(call.frames)
        text = call.text_tokens
        self.shape.grid = call.grid
        self.shape.text_chunk = self.text_chunk if text in (0, n * self.text_chunk) else text
        if not self.tables:
            return self.original(model, *args, **kwargs)
        with segment_relative_positions(model, self.tables, self.segments, call.frames):
            return self.original(model, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, {self.shape})"
