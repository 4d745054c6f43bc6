"""Multi-process training on PyTorch's own engine: ``torchrun`` sets the environment, ``torch.distributed``
carries the collectives (NCCL between GPUs, gloo between CPU processes), DistributedDataParallel the gradients.

``Context.from_environment()`` reads what ``torchrun`` exports (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` or its rendezvous) and, when there is more than one process, joins the process
group; a plain ``python -m fastflow`` run is the one-process context and touches nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context"]


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world_size``, its device, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and samples."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> Context:
        """The context of this process; joins the process group when ``WORLD_SIZE > 1`` (torchrun)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' was asked for but no CUDA device is visible")
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
            where = torch.device("cuda", torch.cuda.current_device())
        else:
            where = torch.device("cpu")
        owns_group = False
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
            owns_group = True
        if world_size > 1:
            rank, world_size = dist.get_rank(), dist.get_world_size()
        return cls(rank, world_size, local_rank, where, owns_group)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every process, on this process's device (a copy; itself in one process).

        NCCL reduces GPU tensors only, so CPU values are moved to the device first.
        """
        values = values.to(self.device, copy=True)
        if self.distributed:
            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
