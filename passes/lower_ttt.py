"""Pass: choose the ``tttgraph::ttt_mlp`` backend of every inserted TTT layer.

The op itself dispatches; this pass fixes the choice per layer from the config and the device
the layer lives on, and records why each other backend was not taken (``reasons``), so that
``inspect`` can say it. An explicitly requested backend that can't run raises at transform time
rather than at the first forward.
"""

from __future__ import annotations

from collections import Counter

import torch

from tttgraph.errors import BackendUnavailableError
from tttgraph.kernels.ttt_mlp import backends
from tttgraph.kernels.ttt_mlp.backends import TTTBackend
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.passes.infra import GraphPass, PassResult

__all__ = ["LowerTTT", "probe_args"]


def probe_args(layer: GatedBidirectionalTTT, seq_len: int = 64) -> tuple:
    """Small op inputs with the layer's shapes, dtype and device, to ask backends about."""
    ttt = layer.ttt
    p = next(ttt.parameters())
    h, d = ttt.num_heads, ttt.head_dim
    qkv = torch.empty(1, h, seq_len, d, dtype=p.dtype, device=p.device)
    return (qkv, qkv, qkv, torch.empty(1, h, seq_len, device=p.device), ttt.ttt_norm_weight, ttt.ttt_norm_bias,
            ttt.w1, ttt.b1, ttt.w2, ttt.b2)


class LowerTTT(GraphPass):
    """Set ``backend`` on each TTT layer. Counts: layers per chosen backend."""

    name = "lower_ttt"

    def __init__(self, backend: str = "auto"):
        self.backend = backends.parse_backend(backend)
        self.reasons: dict[str, dict[str, str]] = {}
        self.chosen: dict[str, str] = {}

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        counts: Counter = Counter()
        for path, module in gm.named_modules():
            if not isinstance(module, GatedBidirectionalTTT):
                continue
            ttt = module.ttt
            args = probe_args(module)
            self.reasons[path] = backends.explain(args, ttt.mini_batch_size, ttt.eps)
            if self.backend is TTTBackend.AUTO:
                chosen = backends.resolve("auto", args, ttt.mini_batch_size, ttt.eps).__name__.rsplit(".", 1)[-1]
                ttt.backend = "auto"  # re-resolved per call: the layer may move to another device later
            else:
                reason = self.reasons[path][self.backend.value]
                if reason != "ok":
                    raise BackendUnavailableError(
                        f"{path}: backend={self.backend.value!r} can't run this layer here: {reason}. "
                        "Use backend='auto' or another backend"
                    )
                chosen = ttt.backend = self.backend.value
            self.chosen[path] = chosen
            counts[chosen] += 1
        return PassResult(gm, False, dict(counts))
