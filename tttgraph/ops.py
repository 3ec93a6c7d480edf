"""Public ops of tttgraph: ``tttgraph.ops.ttt_mlp`` (defined with its op in ``kernels/ttt_mlp/api.py``)."""

from __future__ import annotations

from tttgraph.kernels.ttt_mlp.api import DEFAULT_CHECKPOINT_EVERY, ttt_mlp

__all__ = ["DEFAULT_CHECKPOINT_EVERY", "ttt_mlp"]
