"""tttgraph: turn a pretrained video diffusion transformer into a one-minute video generator.

Importing this package loads only torch: diffusers, triton, onnx and tensorrt are imported lazily
by the parts that need them, and CUDA is not initialised.
"""

from tttgraph import ops
from tttgraph.errors import BackendUnavailableError, TTTGraphError
from tttgraph.kernels.ttt_mlp import TTTBackend
from tttgraph.layers import TTTMLP, GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "GatedBidirectionalTTT",
    "SequenceLayout",
    "TTTBackend",
    "TTTGraphError",
    "TTTMLP",
    "ops",
]
