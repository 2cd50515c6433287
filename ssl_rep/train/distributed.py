"""torch.distributed for the training loop: started by torchrun (or SLURM's srun through torchrun).

``torchrun --nproc_per_node N -m ssl_rep.cli.pretrain CONFIG ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; :func:`init_distributed` joins the process group (NCCL on
GPUs, gloo on CPUs). Every process draws its own slice of each global batch (see
``EpochSampler``), DDP averages the gradients, and SimCLR/CPC gather negatives from every process
(``method.global_negatives``). Rank 0 alone logs and writes checkpoints; every process resumes from
them, each with its own RNG state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (a no-op for a single process)."""
    if not launched_distributed():
        return DistInfo(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``values`` over every process (the same tensor on each afterwards)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / info.world_size


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj``, in rank order (a one-item list for a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
