"""MiniMax-H3: one packed sequence of video, text and audio rows, placed by index tensors.

The model scatters its video rows ``hidden_states`` ``[B, Nv, C']``, text rows and audio rows into one sequence of
``position_ids.shape[0]`` rows (``video_indices``, ``text_indices``, ``audio_indices`` say where), and every block
attends over all of it; ``position_ids`` ``[N, 3]`` carries each row's (t, h, w). The rows of the three streams
interleave as the pipeline placed them, so the TTT reads the whole packed sequence in that order
(``tttgraph/adapters/_packed.py``), text and audio rows included, as the attention does.
"""

from __future__ import annotations

from tttgraph.adapters._packed import PackedAdapter, packed_length


class MiniMaxH3Adapter(PackedAdapter):
    name = "minimax-h3"
    model_classes = ("MiniMaxH3Transformer3DModel",)
    text_inputs = {}
    segments_reason = ("its video, text and audio rows share one packed sequence placed by index tensors: no frame "
                       "axis separates a segment's rows (its self-attention sees them all)")

    def packed_tokens(self, model, inputs) -> int:
        return packed_length(self.name, inputs, "position_ids", "[N, 3]", 0, "MiniMax-H3")
