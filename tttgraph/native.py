"""Transform a model IN PLACE (prototype, issue #19; CogVideoX only): the user's own object comes back.

:func:`transform` returns a :class:`~tttgraph.capture.CapturedModel` wrapping a rewritten graph.
:func:`transform_in_place` runs the same capture and analysis (the graph stays the source of truth
for *where* things go), then edits the eager model instead:

- each planned :class:`~tttgraph.layers.GatedBidirectionalTTT` is built by the graph pass itself
  (``passes/insert_ttt.py``, so construction, RNG draws, dtype and device are those of the graph
  form) and registered as ``<attention path>.gated_ttt``, a submodule of the attention it follows;
- each such attention gets a diffusers attention processor (:class:`CogVideoXSegmentTTTProcessor`)
  that computes what diffusers' ``CogVideoXAttnProcessor2_0`` computes, through the attention's own
  ``to_q``/``to_k``/``to_v``/``norm_q``/``norm_k``/``to_out`` (so PEFT LoRA on them applies), with
  segment-local SDPA instead of full SDPA, and ``attn.gated_ttt`` on the joint ``[text | video]``
  output of ``to_out`` before the split into the two streams.

Nothing is fixed at the capture's frame count, batch, dtype, device or train/eval mode: the
processor reads the frame count off the video tokens at every call. What *is* fixed is what the
layout fixes in the graph form too: the patch grid (tokens per frame, the TTT's RoPE grid) and the
text tokens per segment.

Text chunks. The layout expects one text chunk of ``text_tokens_per_segment`` tokens per segment
(``[B, n*Lt, C]``). A stock ``CogVideoXPipeline`` passes one prompt (``[B, Lt, C]``). When the text is
exactly one chunk and the video has n > 1 segments, the processor repeats that chunk per segment
(every segment attends to the same prompt; the TTT reads ``[txt | vid_0 | txt | vid_1 | ...]``) and
returns the text stream's output as the **mean over the n chunks**, so the block's text residual
keeps its length ``Lt``. At the attention this is exactly "n equal chunks given explicitly, their
text outputs averaged" (tests/test_native.py): the video stream is identical, and each chunk's text
output differs only by what its segment saw. Over several blocks it is not the same as passing n
equal chunks (there each chunk's text stream evolves on its own through the block's feed-forward).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout
from tttgraph.segment_attention import SegmentIndex, segment_sdpa, self_attention_index

__all__ = ["CogVideoXSegmentTTTProcessor", "load_ttt_state_dict", "transform_in_place", "ttt_state_dict"]

_SUPPORTED_PROCESSORS = ("CogVideoXAttnProcessor2_0",)


class CogVideoXSegmentTTTProcessor:
    """diffusers attention processor: CogVideoX joint attention, segment-local, then the gated TTT.

    Args:
        layout: the attention's joint-sequence layout (text chunks first, then video frames), with
            ``frames_per_segment`` set for segment-local attention, or None for full attention.
        tokens_per_frame: video tokens of one latent (token) frame; used to read the frame count off
            the video tokens when ``layout`` is None.

    ``__call__(attn, hidden_states [B, Nv, C], encoder_hidden_states [B, Lt or n*Lt, C],
    attention_mask=None, image_rotary_emb=(cos, sin) [Nv, D] each)`` -> ``(video [B, Nv, C],
    text [B, same length as given, C])``, as ``CogVideoXAttnProcessor2_0``. A plain object (no tensors,
    no module): pickles, deep-copies, and is not part of the state dict.
    """

    def __init__(self, layout: SequenceLayout | None, tokens_per_frame: int):
        self.layout, self.tokens_per_frame = layout, tokens_per_frame
        self._indices: dict[tuple, SegmentIndex] = {}  # (frames, device type, device index) -> index

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_indices": {}}  # index tensors are a cache, not state

    def segment_index(self, frames: int, device: torch.device) -> SegmentIndex:
        """The segment gather/scatter indices for ``frames``, built once per frame count and device.

        A plain dict, not an lru_cache: torch.compile ignores lru_cache wrappers and would trace the
        index construction (whose ``bool(tensor)`` is data-dependent, so fullgraph fails); a dict hit
        is read as constants. The first call at a new frame count must therefore run eagerly.
        """
        key = (frames, device.type, device.index)
        index = self._indices.get(key)
        if index is None:
            if torch.compiler.is_compiling():
                raise TTTGraphError(
                    f"the segment index for {frames} frames is built eagerly: run one eager forward at this frame "
                    "count before the compiled one"
                )
            index = self._indices[key] = self_attention_index(self.layout, frames).to(device)
        return index

    # ---------------------------------------------------------------- shapes

    def num_frames(self, video_tokens: int) -> int:
        """Latent (token) frames of a video stream of ``video_tokens`` tokens."""
        if video_tokens % self.tokens_per_frame:
            raise TTTGraphError(
                f"{video_tokens} video tokens are not whole frames of {self.tokens_per_frame} tokens; this model was "
                "transformed for another resolution (the patch grid is fixed at transform time)"
            )
        return video_tokens // self.tokens_per_frame

    def text_chunks(self, text_tokens: int, frames: int) -> int:
        """How many times the given text must be repeated to give one chunk per segment (1 or n)."""
        if self.layout is None:
            return 1
        needed, per = self.layout.text_tokens(frames), self.layout.text_tokens_per_segment
        if text_tokens == needed:
            return 1
        if text_tokens == per:
            return self.layout.num_segments(frames)
        raise TTTGraphError(
            f"{frames} latent frames make {self.layout.num_segments(frames)} segments, which need one text chunk of "
            f"{per} tokens each ({needed} tokens) or a single chunk of {per} tokens to repeat; got {text_tokens}"
        )

    # ---------------------------------------------------------------- the call

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        image_rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        frames = self.num_frames(hidden_states.shape[1])
        given_text = encoder_hidden_states.shape[1]
        repeats = self.text_chunks(given_text, frames)
        text = encoder_hidden_states.repeat(1, repeats, 1) if repeats > 1 else encoder_hidden_states
        text_len = text.shape[1]
        joint = torch.cat([text, hidden_states], dim=1)  # [B, N, C], N = n*Lt + Nv
        query, key, value = _project(attn, joint, text_len, image_rotary_emb)  # [B, H, N, D] each
        mask = _prepare_mask(attn, attention_mask, joint)
        out = self._attend(query, key, value, mask, frames)  # [B, H, N, D]
        out = out.transpose(1, 2).flatten(2)  # [B, N, H*D]
        out = attn.to_out[1](attn.to_out[0](out))  # out-projection, dropout
        ttt = getattr(attn, "gated_ttt", None)
        if ttt is not None:  # the insertion point of passes/insert_ttt.py: after to_out, before the split
            out = ttt(out, num_frames=frames)
        text_out, video_out = out.split([text_len, out.shape[1] - text_len], dim=1)
        if repeats > 1:  # one chunk was repeated per segment: give back its length (mean over the chunks)
            text_out = text_out.unflatten(1, (repeats, given_text)).mean(1)
        return video_out, text_out

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, frames: int) -> Tensor:
        """Segment-local SDPA (full SDPA without segments). q, k, v: [B, H, N, D] -> [B, H, N, D]."""
        if self.layout is None or self.layout.frames_per_segment is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return segment_sdpa(q, k, v, self.segment_index(frames, q.device), attn_mask=mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout}, tokens_per_frame={self.tokens_per_frame})"


def _project(attn: nn.Module, joint: Tensor, text_len: int, rope: tuple[Tensor, Tensor] | None):
    """q, k, v [B, H, N, D] of the joint sequence [B, N, C], as CogVideoXAttnProcessor2_0 makes them.

    RoPE is applied to the video part; unlike diffusers (``query[:, :, L:] = ...``) without writing
    into the projections in place: the same values, and nothing for autograd or compile to version.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    q, k, v = (_heads(x, attn.heads) for x in (attn.to_q(joint), attn.to_k(joint), attn.to_v(joint)))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if rope is not None:
        q = torch.cat([q[:, :, :text_len], apply_rotary_emb(q[:, :, text_len:], rope)], dim=2)
        if not attn.is_cross_attention:
            k = torch.cat([k[:, :, :text_len], apply_rotary_emb(k[:, :, text_len:], rope)], dim=2)
    return q, k, v


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, H*D] -> [B, H, N, D]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _prepare_mask(attn: nn.Module, mask: Tensor | None, joint: Tensor) -> Tensor | None:
    """diffusers' mask preparation ([B, H, Nq|1, N]); CogVideoX itself never passes a mask."""
    if mask is None:
        return None
    bsz, n, _ = joint.shape
    mask = attn.prepare_attention_mask(mask, n, bsz)
    return mask.view(bsz, attn.heads, -1, mask.shape[-1])


# ------------------------------------------------------------------------------------------ transform


def transform_in_place(model: nn.Module, cfg, example_inputs: Any, *, progress: bool = False) -> nn.Module:
    """Edit ``model`` into the one-minute-video architecture and return it (same object, same class).

    Args:
        model: a diffusers ``CogVideoXTransformer3DModel`` (the prototype's only family).
        cfg: a :class:`~tttgraph.config.TTTConfig`.
        example_inputs: forward keyword arguments (as for :func:`tttgraph.transform`); used for the
            capture and analysis only.

    Pretrained modules are untouched (same tensors, same names); each planned attention gets a
    ``gated_ttt`` submodule and a :class:`CogVideoXSegmentTTTProcessor`. The graph form of the same
    plan is ``tttgraph.transform`` (the oracle: same outputs at any frame count, tests/test_native.py).
    """
    from tttgraph.passes.insert_ttt import InsertTTT
    from tttgraph.rewrite import _capture_and_plan

    gm, plan = _capture_and_plan(model, cfg, example_inputs, progress)
    # The graph pass builds the layers (and draws the RNG exactly as transform() does); we keep the
    # modules it made and discard the graph.
    InsertTTT(plan.ttt_sites, cfg, plan.evaluate)(gm)
    segment_layouts = {site.module_path: layout for site, layout in plan.segment_sites.values()}
    for item in plan.ttt_sites:
        attn = model.get_submodule(item.site.module_path)
        _check_processor(attn, item.site.module_path)
        layer = gm.get_submodule(item.module_path).train(model.training)
        attn.add_module("gated_ttt", layer)
        layout = segment_layouts.get(item.site.module_path)
        attn.set_processor(CogVideoXSegmentTTTProcessor(layout, item.layout.video_tokens_per_frame))
    for path, layout in segment_layouts.items():  # segment-local attention without a TTT layer
        attn = model.get_submodule(path)
        if not isinstance(attn.processor, CogVideoXSegmentTTTProcessor):
            _check_processor(attn, path)
            attn.set_processor(CogVideoXSegmentTTTProcessor(layout, layout.video_tokens_per_frame))
    return model


def _check_processor(attn: nn.Module, path: str) -> None:
    name = type(getattr(attn, "processor", None)).__name__
    if name not in _SUPPORTED_PROCESSORS:
        raise TTTGraphError(
            f"{path} uses the attention processor {name}; the in-place prototype knows only {_SUPPORTED_PROCESSORS} "
            "(diffusers CogVideoX). Use tttgraph.transform for other models"
        )


def ttt_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The tensors of every ``gated_ttt`` submodule, under their names in ``model``."""
    return {k: v for k, v in model.state_dict().items() if ".gated_ttt." in f".{k}"}


def load_ttt_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load the ``gated_ttt`` tensors of ``state`` (e.g. a ``save_pretrained`` file) into a transformed model.

    Every TTT tensor of ``model`` must be present; other keys of ``state`` are ignored.
    """
    ttt = {k: v for k, v in state.items() if ".gated_ttt." in f".{k}"}
    expected = set(ttt_state_dict(model))
    if set(ttt) != expected:
        missing, unexpected = sorted(expected - set(ttt))[:4], sorted(set(ttt) - expected)[:4]
        raise TTTGraphError(f"TTT tensors differ from the model's: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(ttt, strict=False)
