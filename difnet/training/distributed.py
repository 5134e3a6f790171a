"""Process-group setup for `torchrun`: env:// initialisation, NCCL on CUDA and gloo on CPU, and
which process writes logs and checkpoints. Under torchrun a run joins a process group even as its
only process, so one GPU takes the same path as many (DDP, SyncBatchNorm, NCCL collectives)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from difnet.devices import resolve_device


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes, its device, and whether
    it runs in a process group (`distributed`: DDP, SyncBatchNorm and collectives, also for one
    process under torchrun)."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, checkpoints and progress bars (rank 0)."""
        return self.rank == 0


ENV_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")  # what env:// reads; torchrun sets it


def setup(device: str) -> Context:
    """The run's context: a process group from torchrun's environment when it describes one (every
    name of `ENV_RENDEZVOUS` set, or `WORLD_SIZE` > 1), joined here unless the caller already did;
    else a single process on `device`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    requested = resolve_device(device)
    launched = world_size > 1 or all(name in os.environ for name in ENV_RENDEZVOUS)
    if not launched and not dist.is_initialized():
        return Context(0, 1, requested)
    if requested.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        requested = torch.device("cuda", local_rank)
    owns_group = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if requested.type == "cuda" else "gloo", init_method="env://")
        owns_group = True
    return Context(dist.get_rank(), dist.get_world_size(), requested, owns_group, distributed=True)


def teardown(context: Context) -> None:
    """Leave the process group if `setup` joined it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def any_true(flag: bool, context: Context) -> bool:
    """Whether `flag` holds on any process (all processes must call this together)."""
    if not context.distributed:
        return flag
    value = torch.tensor([float(flag)], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_processes(value: Tensor, context: Context) -> Tensor:
    """The mean of a scalar tensor over all processes (itself when not distributed)."""
    if not context.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size
