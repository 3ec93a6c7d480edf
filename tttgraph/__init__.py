"""tttgraph: turn a pretrained video diffusion transformer into a one-minute video generator.

    cfg = tttgraph.TTTConfig(segment_latent_frames=12, segment_overlap_frames=1)  # or tttgraph.presets.*
    print(tttgraph.inspect(model, cfg, example_inputs=inputs))                   # dry run
    model = tttgraph.transform(model, cfg, example_inputs=inputs)                # edits model in place
    tttgraph.save(model, "run/ttt");  model = tttgraph.restore(fresh_base, "run/ttt")
    model.save_pretrained("out");     model = tttgraph.from_pretrained("out")

Importing this package loads only torch: the compiler parts load on first use, and diffusers,
triton, onnx and tensorrt are imported only by the code that needs them; CUDA is not initialised.
"""

from __future__ import annotations

import importlib

from tttgraph import ops
from tttgraph.errors import BackendUnavailableError, TTTGraphError
from tttgraph.kernels.ttt_mlp import TTTBackend
from tttgraph.layers import TTTMLP, GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout

__version__ = "0.2.0"

# Public names loaded on first use: name -> module.
_LAZY = {
    "TTTConfig": "tttgraph.config",
    "transform": "tttgraph.rewrite",
    "transform_graph": "tttgraph.rewrite",
    "graph_form": "tttgraph.rewrite",
    "plan_of": "tttgraph.rewrite",
    "from_pretrained": "tttgraph.pretrained",
    "inspect": "tttgraph.rewrite",
    "TransformPlan": "tttgraph.rewrite",
    "save": "tttgraph.checkpoint",
    "restore": "tttgraph.checkpoint",
    "CapturedModel": "tttgraph.capture",
    "register_adapter": "tttgraph.adapters",
    "presets": "tttgraph.presets",
    "export": "tttgraph.exporter",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if name == "presets" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tttgraph' has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "GatedBidirectionalTTT",
    "SequenceLayout",
    "TTTBackend",
    "TTTGraphError",
    "TTTMLP",
    "ops",
    *_LAZY,
]
