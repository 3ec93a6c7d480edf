"""Fallback adapter: infer the token layout from the example inputs and the attention shapes.

It assumes a 5-D ``hidden_states`` latent (``[B, C, F, H, W]`` or ``[B, F, C, H, W]``) and an
``encoder_hidden_states`` text input ``[B, L, D]``, and looks for the one reading of frame axis
and patch sizes under which the longest self-attention is the video tokens (video-only) or video
plus text (joint; the order is read from the concatenation feeding the query). Anything else
raises :class:`~tttgraph.errors.LayoutInferenceError` naming the adapter to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tttgraph.adapters._video import VideoAdapter
from tttgraph.adapters.base import ModelAdapter, TokenLayout, none_spec
from tttgraph.errors import LayoutInferenceError

_PATCHES = (1, 2, 4)
_TEMPORAL_PATCHES = (1, 2)


def _fix(model: torch.nn.Module, why: str) -> LayoutInferenceError:
    name = type(model).__name__
    return LayoutInferenceError(
        f"cannot infer the token layout of {name}: {why}. Write an adapter for it: subclass "
        f"tttgraph.adapters.ModelAdapter (set model_classes=({name!r},) and implement layout(), "
        f"latent_frames() and frame_dynamic_shapes()) and call tttgraph.register_adapter(name, adapter)"
    )


class GenericAdapter(ModelAdapter):
    """Used when no registered adapter matches the model class; frames stay static."""

    name = "generic"
    dynamic_frames = False
    frames_reason = "no adapter for this model says which input dimensions are frames"

    def matches(self, model):
        return True

    def latent_frames(self, model, inputs):
        raise _fix(model, "the generic fallback cannot tell frames from channels without attention shapes")

    def frame_dynamic_shapes(self, model, inputs):
        return none_spec(inputs)

    def layout(self, model, inputs):
        raise _fix(model, "the generic fallback needs the captured attention shapes (tttgraph.analysis.analyse "
                          "infers the layout from them)")

    def infer(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], self_attn_lengths: Sequence[int],
        joint_order: str | None,
    ) -> TokenLayout:
        """Layout from ``inputs`` and the query lengths of the graph's self-attentions.

        ``joint_order`` is what the graph says about the joint sequence (``"text_first"``,
        ``"video_first"`` or None when no text/video concatenation feeds an attention).
        """
        video = inputs.get("hidden_states")
        if not isinstance(video, torch.Tensor) or video.dim() != 5:
            got = getattr(video, "shape", video)
            raise _fix(model, f"hidden_states is not a 5-D latent video (got {got!r})")
        text_in = inputs.get("encoder_hidden_states")
        text = int(text_in.shape[1]) if isinstance(text_in, torch.Tensor) and text_in.dim() == 3 else 0
        if not self_attn_lengths:
            raise _fix(model, "the graph has no self-attention to measure")
        longest = max(self_attn_lengths)
        joint = joint_order is not None and text > 0
        video_len = longest - text if joint else longest
        readings = set()
        for axis in (2, 1):
            f, h, w = int(video.shape[axis]), int(video.shape[-2]), int(video.shape[-1])
            for p in _PATCHES:
                for p_t in _TEMPORAL_PATCHES:
                    if f % p_t or h % p or w % p:
                        continue
                    if (f // p_t) * (h // p) * (w // p) == video_len:
                        readings.add((axis, f, p_t, p, h // p, w // p))
        if len(readings) > 1:  # the model's config says which axis holds the channels, and its patch
            readings = {r for r in readings if _fits_config(model, video, r)} or readings
        found = {r[1:] for r in readings}
        if len(found) != 1:
            why = "no" if not found else f"{len(found)} ambiguous"
            raise _fix(
                model, f"{why} reading(s) of hidden_states {tuple(video.shape)} give {video_len} video "
                f"tokens (longest self-attention {longest}, text {text})"
            )
        (f, p_t, p, gh, gw), = found
        axes = {r[0] for r in readings}
        order = joint_order if joint else "video_only"
        # The reading, as an adapter that reads the same layout off any later call's inputs.
        self.inferred = InferredVideoAdapter(axes.pop(), (p_t, p, p), order) if len(axes) == 1 else None
        return TokenLayout(
            family=self.name, batch_size=int(video.shape[0]), text_tokens=text, latent_frames=f,
            frames=f // p_t, tokens_per_frame=gh * gw, grid=(gh, gw), patch_size=(p_t, p, p),
            order=joint_order if joint else "video_only",
        )


def _fits_config(model, video: torch.Tensor, reading: tuple) -> bool:
    """Whether a reading (frame axis, frames, temporal patch, patch, grid) agrees with ``model.config``:
    the other axis holds ``in_channels``, the patch is ``patch_size`` (and ``patch_size_t``)."""
    config = getattr(model, "config", None)
    get = (lambda k: config.get(k)) if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    axis, _, p_t, p = reading[:4]
    channels = get("in_channels") if config is not None else None
    if isinstance(channels, int) and int(video.shape[3 - axis]) != channels:
        return False
    patch = get("patch_size") if config is not None else None
    if isinstance(patch, int) and p != patch:
        return False
    if isinstance(patch, (tuple, list)) and len(patch) == 3 and (p_t, p) != (patch[0], patch[1]):
        return False
    patch_t = get("patch_size_t") if config is not None else None
    return not (isinstance(patch_t, int) and p_t != patch_t)


class InferredVideoAdapter(VideoAdapter):
    """The layout :meth:`GenericAdapter.infer` read off a model's graph, applied to each later call's
    inputs (so a transformed model of an unregistered class runs at any resolution and text length)."""

    name = "generic"
    dynamic_frames = False

    def __init__(self, frame_axis: int, patch: tuple[int, int, int], order: str):
        self.frame_axis, self.patch, self.order = frame_axis, tuple(patch), order

    def patch_size(self, model):
        return self.patch
