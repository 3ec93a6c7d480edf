"""Graph passes of tttgraph (installed as ``tttgraph.passes``).

Each pass follows the contract of :mod:`tttgraph.passes.infra`: ``requires`` -> ``call`` ->
``ensures``, returning a :class:`PassResult` with counters of what it rewrote.
"""

from tttgraph.passes.infra import GraphPass, PassResult
from tttgraph.passes.normalize_attention import NormalizeAttention, normalize_attention

__all__ = ["GraphPass", "NormalizeAttention", "PassResult", "normalize_attention"]
