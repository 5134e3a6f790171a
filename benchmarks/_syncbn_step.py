"""One DDP training step of DifNet-18 per torchrun process, each on its own shard of one batch, then
every rank saves its BatchNorm running statistics; rank 0 also saves those of single-process steps on
its shard alone and on the whole batch, so `benchmarks.gpu` can tell whether statistics synchronised.

    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks._syncbn_step BACKEND DEVICE SIZE DIR

BACKEND is the process group's (nccl, gloo); on CUDA each rank takes the GPU of its local rank (NCCL
refuses two ranks on one GPU) and the model's BatchNorms become SyncBatchNorm, on CPU (where
SyncBatchNorm cannot run) they stay per-process, which the caller checks instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from difnet.models import build_model
from difnet.training.config import TrainConfig
from difnet.training.losses import pixel_loss
from difnet.training.optim import build_optimizer

CLASSES = 5
IMAGES_PER_RANK = 2


def batch(world_size: int, size: int) -> tuple[Tensor, Tensor]:
    """The whole batch every process draws alike: `IMAGES_PER_RANK` images per process."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES_PER_RANK * world_size, 3, size, size, generator=generator)
    images[IMAGES_PER_RANK:] += 1.0  # later shards differ in mean, so unsynchronised statistics differ
    labels = torch.randint(CLASSES, (len(images), size, size), generator=generator)
    return images, labels


def running_statistics(model: nn.Module) -> dict[str, Tensor]:
    """Every BatchNorm's running mean and variance, on the CPU."""
    return {name: b.detach().cpu() for name, b in model.named_buffers() if "running_" in name}


def train_step(model: nn.Module, images: Tensor, labels: Tensor, wrapper: nn.Module | None = None) -> None:
    """One step of the paper's SGD on `model` in train mode, forward through `wrapper` (DDP) if given."""
    optimizer = build_optimizer(model, TrainConfig(model="difnet", depth=18, device="cpu"))
    forward = (wrapper or model).train()
    optimizer.zero_grad(set_to_none=True)
    pixel_loss(forward(images), labels).backward()
    optimizer.step()


def fresh_model(device: torch.device) -> nn.Module:
    """DifNet-18 with the same initial weights in every process."""
    torch.manual_seed(0)
    return build_model("difnet", 18, CLASSES).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backend", choices=["nccl", "gloo"])
    parser.add_argument("device", choices=["cuda", "cpu"])
    parser.add_argument("size", type=int)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # exact comparisons
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, init_method="env://")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    images, labels = batch(world_size, args.size)
    shard = slice(rank * IMAGES_PER_RANK, (rank + 1) * IMAGES_PER_RANK)

    model = fresh_model(device)
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    train_step(model, images[shard].to(device), labels[shard].to(device), ddp)
    args.directory.mkdir(parents=True, exist_ok=True)
    torch.save(running_statistics(model), args.directory / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:  # the single-process references, outside any process group
        for name, part in (("shard0", slice(0, IMAGES_PER_RANK)), ("whole", slice(None))):
            reference = fresh_model(device)
            train_step(reference, images[part].to(device), labels[part].to(device))
            torch.save(running_statistics(reference), args.directory / f"{name}.pt")


if __name__ == "__main__":
    main()
