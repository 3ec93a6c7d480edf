"""HunyuanVideo 1.5: joint self-attention over ``[video | text]`` in dual-stream blocks. ``[B, C, F, H, W]``.

The text of the joint sequence is three streams: the image tokens (``image_embeds`` ``[B, Li, C']``,
all zero for text-to-video), the ByT5 tokens (``encoder_hidden_states_2`` ``[B, L2, C2]``) and the
MLLM tokens (``encoder_hidden_states`` ``[B, L1, C1]``), which the model's forward reorders per
sample with boolean masks: the valid tokens of each stream first, then the padding. The lengths of
those gathers depend on the masks' values (unbacked sizes in the graph, resolved at the example by
the analysis); their sum, the text length ``Li + L2 + L1``, does not. The attention then masks the
padding out ([B, 1, N, N] from the reordered mask), so the sequence layout is fixed.

With segments the reordered text is one prompt that every segment reads (the edit repeats it per
segment, see ``tttgraph/inplace.py``): transform at one segment's frames, like ConsisID.
"""

from __future__ import annotations

from tttgraph.adapters._video import VideoAdapter

_TEXT_STREAMS = ("image_embeds", "encoder_hidden_states_2", "encoder_hidden_states")


class HunyuanVideo15Adapter(VideoAdapter):
    name = "hunyuanvideo1.5"
    model_classes = ("HunyuanVideo15Transformer3DModel",)
    dynamic_frames = True
    order = "video_first"
    # The reordered text is one prompt: its length stays as captured, whatever the segments.
    text_inputs: dict[str, tuple[int, ...]] = {}

    def text_tokens(self, model, inputs) -> int:
        return sum(int(inputs[name].shape[1]) for name in _TEXT_STREAMS if inputs.get(name) is not None)
