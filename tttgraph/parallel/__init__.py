"""Scale-out of long sequences: context parallelism over segments and the per-rank memory plan (issue #25).

- :mod:`tttgraph.parallel.context`: split a transformed CogVideoX's sequence across processes by
  whole segments (halo for the overlap frame, all-to-all to head-sharded layout for the TTT scans).
- :mod:`tttgraph.parallel.collectives`: the autograd collectives it runs on (torch.distributed).
- :mod:`tttgraph.parallel.mesh`: the data x context mesh of ``tttgraph finetune`` and FSDP2 on it.
- :mod:`tttgraph.parallel.memory_plan`: parameters, gradients, optimizer state, saved activations
  and the largest transient per rank, before anything heavy starts; settings that fit.
"""

from __future__ import annotations

from tttgraph.parallel.collectives import all_reduce_gradients, gather_tokens, heads_to_tokens, shift, tokens_to_heads
from tttgraph.parallel.context import ContextError, ContextGroup, Shard, plan_shard, shard_context, unshard_context

__all__ = [
    "ContextError",
    "ContextGroup",
    "Shard",
    "all_reduce_gradients",
    "gather_tokens",
    "heads_to_tokens",
    "plan_shard",
    "shard_context",
    "shift",
    "tokens_to_heads",
    "unshard_context",
]
