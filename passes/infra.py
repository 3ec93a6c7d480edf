"""The pass contract: ``requires`` -> ``call`` -> ``ensures``, returning a :class:`PassResult`.

A pass is a small object; calling it checks its preconditions on the input graph, rewrites,
then checks its postconditions and lints the graph, so a broken invariant is reported by the
pass that broke it rather than by a later one.

>>> result = NormalizeAttention()(gm)
>>> result.modified, result.counts
(True, {'rewritten': 2, ...})
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tttgraph.errors import PassContractError

__all__ = ["GraphPass", "PassResult"]


@dataclass
class PassResult:
    """What a pass returns: the (possibly same, edited in place) GraphModule, whether it changed,
    and counters of what it rewrote or skipped (keys are pass-specific)."""

    graph_module: torch.fx.GraphModule
    modified: bool
    counts: dict[str, int] = field(default_factory=dict)


class GraphPass:
    """Base class. Subclasses implement :meth:`call` and may extend :meth:`requires`/:meth:`ensures`."""

    name: str = "pass"

    def requires(self, gm: torch.fx.GraphModule) -> None:
        """Raise :class:`PassContractError` if ``gm`` is not a graph this pass can take."""
        if not isinstance(gm, torch.fx.GraphModule):
            raise PassContractError(
                f"{self.name} takes a torch.fx.GraphModule, got {type(gm).__name__}; capture the model "
                f"first with tttgraph.capture.capture(model, example_inputs)"
            )
        gm.graph.lint()

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        raise NotImplementedError

    def ensures(self, gm: torch.fx.GraphModule) -> None:
        """Raise :class:`PassContractError` if the rewritten graph breaks this pass's promise."""
        gm.graph.lint()

    def __call__(self, gm: torch.fx.GraphModule) -> PassResult:
        self.requires(gm)
        result = self.call(gm)
        if result.modified:
            result.graph_module.recompile()
        self.ensures(result.graph_module)
        return result
