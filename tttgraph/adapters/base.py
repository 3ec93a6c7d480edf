"""The adapter contract: what tttgraph needs to know about one model family.

An adapter answers three questions that the graph alone cannot: which input dimensions are the
latent frame count (so capture can make it dynamic), how many text and video tokens the
attention sequences hold, and in which order. Everything else is read from the graph.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.export import Dim
from torch.utils import _pytree as pytree

Order = Literal["text_first", "video_first", "video_only"]


@dataclass(frozen=True)
class TokenLayout:
    """How text and video tokens sit in a model's attention sequences.

    Video tokens are frame-major: token ``t * tokens_per_frame + (y * grid_w + x)`` is at token
    frame ``t`` and patch ``(y, x)``, for every supported family. ``frames`` counts token frames
    (latent frames divided by the temporal patch ``patch_size[0]``); segment lengths in the
    passes are in these units.

    ``order`` is ``"text_first"`` or ``"video_first"`` for joint self-attention over
    ``[text | video]`` or ``[video | text]``, and ``"video_only"`` for models whose text enters
    through cross-attention (then ``text_tokens`` is the key/value length of that attention).

    ``raster`` is False when the tokens within a frame are in another fixed order than row-major (Kandinsky 6 SR
    groups them in 8x8 blocks for its NABLA attention): frames stay contiguous, but the TTT layer's 3D RoPE, whose
    spatial positions are row-major, would label them wrongly, so its TTT layers get no RoPE.
    """

    family: str
    batch_size: int
    text_tokens: int
    latent_frames: int
    frames: int
    tokens_per_frame: int
    grid: tuple[int, int]
    patch_size: tuple[int, int, int]
    order: Order
    raster: bool = True

    @property
    def video_tokens(self) -> int:
        """Video tokens per sample: ``frames * tokens_per_frame``."""
        return self.frames * self.tokens_per_frame

    @property
    def joint_tokens(self) -> int:
        """Length of a joint text+video sequence (``video_tokens`` for ``"video_only"``)."""
        return self.video_tokens + (0 if self.order == "video_only" else self.text_tokens)


def none_spec(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A torch.export ``dynamic_shapes`` spec marking every input static (``None`` leaves)."""
    return {k: pytree.tree_map(lambda _: None, v) for k, v in inputs.items()}


class ModelAdapter:
    """Per-family knowledge. Subclass it and pass an instance to :func:`register_adapter`.

    Attributes:
        name: the family name used in recipes and error messages.
        model_classes: class names (``type(model).__name__``) the adapter serves; matching by
            name keeps diffusers out of ``import tttgraph``.
        dynamic_frames: whether the frame count can be a dynamic dimension of the capture.
        frames_reason: why not, shown when a user asks for dynamic frames on this family.
    """

    name: str = "generic"
    model_classes: tuple[str, ...] = ()
    dynamic_frames: bool = False
    frames_reason: str = ""
    # Inputs whose given dims count text tokens: dynamic when segments carry one text chunk each,
    # so that a longer video (more segments) can bring more text.
    text_inputs: dict[str, tuple[int, ...]] = {"encoder_hidden_states": (1,), "encoder_attention_mask": (1,)}
    # Buffers ``[1, frames, C]`` of absolute temporal positions, by path (see tttgraph/positions.py).
    temporal_position_tables: tuple[str, ...] = ()
    # The model input ``[B, L]`` marking the valid text tokens, when the attention drops the others per
    # sample (Mochi): the capture sees every token valid, and the edited attention keeps every token and
    # masks the invalid ones instead (tttgraph/inplace.py), so the sequence keeps its layout.
    valid_text_mask: str | None = None
    # Attention modules (globs over module paths) whose self-attention over the video is not an SDPA call (linear
    # attention, FlexAttention): each gets its TTT layer on the module's output; their own attention stays global
    # (segment-local attention edits SDPA calls only).
    module_attention: tuple[str, ...] = ()
    # Why segment-local attention does not apply to this family (no time axis in its sequence); a config with
    # ``segment_latent_frames`` is refused with it. Empty: segments apply.
    segments_reason: str = ""

    def matches(self, model: torch.nn.Module) -> bool:
        return type(model).__name__ in self.model_classes

    def latent_frames(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> int:
        """Latent frame count of ``inputs``."""
        raise NotImplementedError

    def frame_dynamic_shapes(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """torch.export ``dynamic_shapes`` with the frame-dependent dims marked ``Dim.AUTO``."""
        raise NotImplementedError

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Token layout of ``model`` called with ``inputs``."""
        raise NotImplementedError

    def capture_patches(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Within the block, ``model`` computes the same values through code torch.export can trace.

        By default: :func:`traceable_sincos_tables` (CogVideoX 1.0 and the models built on its patch
        embedding, e.g. ConsisID). Families override it to add their own.
        """
        return traceable_sincos_tables(model)

    def fresh_objects(self, model: torch.nn.Module) -> dict[str, Any]:
        """Object inputs (a cache) that a recipe cannot record, built new: ``transform`` adds them to example
        inputs that lack them (a restore from a recipe). None by default."""
        return {}

    def text_dynamic_shapes(self, spec: dict[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``spec`` with the text-length dims of ``text_inputs`` marked ``Dim.AUTO`` as well."""
        for name, dims in self.text_inputs.items():
            if isinstance(inputs.get(name), torch.Tensor):
                mark(spec, name, *dims)
        return spec


@contextlib.contextmanager
def parameters_frozen(model: torch.nn.Module):
    """Within the block, no parameter of ``model`` requires grad (restored afterwards). For captures through
    FlexAttention, which raises NotImplementedError on CPU inputs that require grad even while tracing."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, had in grads:
            p.requires_grad_(had)


def mark(spec: dict[str, Any], name: str, *dims: int) -> None:
    """Mark ``dims`` of input ``name`` (a tensor or a nest of tensors) as ``Dim.AUTO``."""
    spec[name] = pytree.tree_map(lambda _: dict.fromkeys(dims, Dim.AUTO), spec[name])


@contextlib.contextmanager
def traceable_sincos_tables(model: torch.nn.Module):
    """CogVideoX's patch embedding rebuilds its sincos table in ``forward`` when the frames differ from
    ``sample_frames`` and writes it through ``.data``, which torch.export cannot trace; within the block
    each such embedding builds the same table without it."""
    embeds = [m for m in model.modules() if type(m).__name__ == "CogVideoXPatchEmbed"
              and getattr(m, "use_positional_embeddings", False)]
    for embed in embeds:
        embed._get_positional_embeddings = functools.partial(_traceable_table, embed)
    try:
        yield
    finally:
        for embed in embeds:
            del embed._get_positional_embeddings


def _traceable_table(embed, sample_height: int, sample_width: int, sample_frames: int, device=None):
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    frames = (sample_frames - 1) // embed.temporal_compression_ratio + 1
    grid = (sample_width // embed.patch_size, sample_height // embed.patch_size)
    table = get_3d_sincos_pos_embed(embed.embed_dim, grid, frames, embed.spatial_interpolation_scale,
                                    embed.temporal_interpolation_scale, device=device, output_type="pt")
    table = table.flatten(0, 1)[None]
    text = table.new_zeros(1, embed.max_text_seq_length, embed.embed_dim)
    return torch.cat([text, table], dim=1)
