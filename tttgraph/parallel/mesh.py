"""The data x context layout of a fine-tuning job and FSDP2's gradient reduction on it.

``W`` processes form a ``DeviceMesh`` of shape ``(W / P, P)`` named ``("data", "context")``: the P
ranks of a context group (consecutive ranks, so on one host when P divides the GPUs per host) share
one sample's sequence; the data-parallel groups see different samples. FSDP2 shards the parameters
over all W ranks (the trainer's 1-D mesh) and averages the gradients over all of them; with the loss
scaled by P (:func:`fsdp_loss_scale`) that is the mean over samples of the sum over each sample's
token shares, which is the gradient of one process.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tttgraph.errors import TTTGraphError
from tttgraph.parallel.context import ContextGroup

__all__ = ["ContextLayout", "check_heads", "context_layout", "fsdp_loss_scale"]


@dataclass(frozen=True)
class ContextLayout:
    """This process's data-parallel rank and size, and its context group (None when P = 1)."""

    data_rank: int
    data_size: int
    context: ContextGroup | None
    mesh: object | None = None

    @property
    def context_size(self) -> int:
        return 1 if self.context is None else self.context.size


def context_layout(rank: int, world: int, context: int, device_type: str) -> ContextLayout:
    """Split ``world`` processes into ``world / context`` data-parallel groups of ``context`` ranks."""
    if context < 1 or world % context:
        raise TTTGraphError(
            f"parallel.context={context} does not divide the {world} process(es); use a context size dividing "
            f"{world} (torchrun --nproc-per-node) or launch a multiple of {context} processes"
        )
    if context == 1:
        return ContextLayout(rank, world, None)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (world // context, context), mesh_dim_names=("data", "context"))
    group = mesh.get_group("context")
    return ContextLayout(rank // context, world // context, ContextGroup.of(group), mesh)


def fsdp_loss_scale(layout: ContextLayout) -> float:
    """Factor on the loss before ``backward`` under FSDP2 over all ranks (the module docstring).

    FSDP2 averages the gradients over all ``W = D * P`` ranks; each rank holds its tokens' share of
    its sample's gradient, whose sum over the P ranks is the sample's gradient. Scaling every rank's
    loss by P turns the average into ``sum / D``: the mean over samples. (FSDP2's own
    ``set_gradient_divide_factor`` would say the same, but it reduces with ``PREMUL_SUM``, which gloo
    lacks.) P is a power of two in the usual layouts, so the scaling is exact.
    """
    return float(layout.context_size)


def check_heads(model: nn.Module, context: int) -> None:
    """A clear error when the attention heads don't split over ``context`` ranks (the TTT scans need it)."""
    heads = int(getattr(getattr(model, "config", None), "num_attention_heads", 0) or 0)
    if heads and heads % context:
        raise TTTGraphError(f"the model's {heads} heads can't be split over parallel.context={context}; use a "
                            f"context size dividing {heads}")


