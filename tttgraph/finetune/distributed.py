"""Process-group setup for ``torchrun`` and FSDP2 sharding of a transformed model, block by block.

One process per device; ``torchrun --nproc_per_node N -m tttgraph finetune ...`` sets ``RANK``,
``WORLD_SIZE`` and the rendezvous variables. NCCL on CUDA, gloo on the CPU (tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process sits: ``rank`` of ``world`` processes, its ``device``, the FSDP mesh."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: object | None = None
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a float over all processes (every process gets it)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device, local) if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ctx = DistContext(rank, world, local, dev)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            ctx.initialized_here = True
        from torch.distributed.device_mesh import init_device_mesh

        ctx.mesh = init_device_mesh(dev.type, (world,))
    return ctx


def shard(model: nn.Module, blocks: list[nn.Module], ctx: DistContext, *, bf16: bool) -> None:
    """FSDP2: ``fully_shard`` each block, then the root (what is left: embeddings, output head).

    With ``bf16`` gradients are reduced in float32 and the products run in bf16 under the trainer's
    autocast; the parameters stay float32 (the optimizer's master copy).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=ctx.mesh, mp_policy=policy)
    fully_shard(model, mesh=ctx.mesh, mp_policy=policy)


USABLE_FRACTION = 0.9  # the rest: CUDA context, NCCL buffers, allocator fragmentation


def device_memory(device: torch.device) -> float | None:
    """Bytes a run may plan to use on ``device`` (a fraction of a GPU's memory); None on the CPU (no limit)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory * USABLE_FRACTION


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every process must call it), or the tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
