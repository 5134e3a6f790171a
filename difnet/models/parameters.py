"""Parameter bookkeeping shared by the models: counts and the backbone/head learning-rate groups."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `model` (only those requiring grad if `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def split_backbone_head(
    model: nn.Module, backbones: Iterable[nn.Module]
) -> dict[str, list[nn.Parameter]]:
    """`{"backbone": ..., "head": ...}`: ResNet weights (base lr) and everything else (10x lr)."""
    backbone = [p for module in backbones for p in module.parameters()]
    taken = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in taken]
    return {"backbone": backbone, "head": head}
