"""JoyImage Edit Plus: joint self-attention over ``[patches | text]``, the latents already cut into 6-D patches.

``hidden_states`` is ``[B, N, C, pt, ph, pw]``: the target image and each reference image patchified on their own
and packed one after another (``shape_list[b]`` gives each one's ``(t, h, w)`` in patches), then padded to
N = ``max_patches``; the text ``[B, L, D]`` follows the N patches in the joint sequence (``"video_first"``).
The packed images are grids of their own sizes, not the frames of one video: one packed token frame
(``tttgraph/adapters/_packed.py``). The padding patches stay in the sequence the TTT reads, as they stay in the
attention's queries (the model masks them out of the keys only).
"""

from __future__ import annotations

from tttgraph.adapters._packed import PackedAdapter, packed_length, stream_length


class JoyImageEditPlusAdapter(PackedAdapter):
    name = "joyimage-edit-plus"
    model_classes = ("JoyImageEditPlusTransformer3DModel",)
    order = "video_first"
    text_inputs = {"encoder_hidden_states": (1,), "encoder_hidden_states_mask": (1,)}
    segments_reason = "it edits images: its patches are a target image and reference images, with no time axis"

    def packed_tokens(self, model, inputs) -> int:
        return packed_length(self.name, inputs, "hidden_states", "[B, max_patches, C, pt, ph, pw]", 1,
                             "JoyImageEditPlus")

    def text_tokens(self, model, inputs) -> int:
        return stream_length(inputs)
