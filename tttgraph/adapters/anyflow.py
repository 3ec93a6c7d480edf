"""AnyFlow-FAR: chunk-causal FlexAttention over the video, text through cross-attention. ``[B, F, C, H, W]``.

Its training-rollout forward (``kv_cache=None``) takes ``chunk_partition`` (frames per chunk, a Python list
summing to F) and attends each chunk to itself and the chunks before it through a FlexAttention
``BlockMask`` built inside ``forward``. That self-attention (``blocks.*.attn1``) is not an SDPA call: its TTT
layer reads the module's output (``module_attention``) and the chunk-causal attention itself stays as it is
under segments; the cross-attention to the prompt is SDPA and is segmented (one text chunk per segment).

Refused: more chunks than ``config.full_chunk_limit`` (the oldest chunks are then patchified at
``compressed_patch_size``, so a frame's token count depends on its chunk), ``clean_hidden_states`` (a second
copy of the video in the sequence) and the KV-cache paths (one chunk per call). FlexAttention has no CPU
backward, so the capture runs with the parameters' ``requires_grad`` off (the graph is traced for values; the
edited model trains as the model itself does).
"""

from __future__ import annotations

import contextlib

from tttgraph.adapters._video import VideoAdapter
from tttgraph.adapters.base import parameters_frozen
from tttgraph.errors import LayoutInferenceError


class AnyFlowFARAdapter(VideoAdapter):
    name = "anyflow-far"
    model_classes = ("AnyFlowFARTransformer3DModel",)
    # chunk_partition, a Python list, fixes the frame count of a capture; the edited model reads it per call.
    dynamic_frames = False
    frames_reason = "its chunk_partition input, a Python list of frames per chunk, fixes the frame count"
    frame_axis = 1
    order = "video_only"
    module_attention = ("blocks.*.attn1",)

    def patch_size(self, model):
        return tuple(model.config.patch_size)

    def layout(self, model, inputs):
        chunks = inputs.get("chunk_partition")
        limit = model.config.full_chunk_limit
        if inputs.get("kv_cache") is not None:
            raise LayoutInferenceError(
                "AnyFlowFARTransformer3DModel with a kv_cache runs one chunk per call (its inference and cache "
                "paths); transform and train it on the training rollout (kv_cache=None, all chunks in one call)"
            )
        if inputs.get("clean_hidden_states") is not None:
            raise LayoutInferenceError(
                "AnyFlowFARTransformer3DModel with clean_hidden_states appends a second copy of the video to the "
                "sequence, which the TTT layer's frame layout does not describe; call it with clean_hidden_states=None"
            )
        if isinstance(chunks, (list, tuple)) and len(chunks) > limit:
            raise LayoutInferenceError(
                f"AnyFlowFARTransformer3DModel with chunk_partition={list(chunks)} ({len(chunks)} chunks, more than "
                f"full_chunk_limit={limit}) patchifies its oldest chunks at compressed_patch_size, so their frames "
                f"have fewer tokens than the others; pass at most {limit} chunks per call"
            )
        return super().layout(model, inputs)

    @contextlib.contextmanager
    def capture_patches(self, model):
        with parameters_frozen(model), super().capture_patches(model):
            yield
