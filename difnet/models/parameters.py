"""Parameter bookkeeping shared by the models: counts and the backbone/head learning-rate groups."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `model` (only those requiring grad if `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def split_backbone_head(
    model: nn.Module, backbones: Iterable[nn.Module], walk: nn.Module | None = None
) -> dict[str, list[nn.Parameter]]:
    """`{"backbone": ..., "head": ...}`: the ResNets' weights and everything else; with `walk`,
    its parameters form a third group `"walk"`, so the recipe can give them a rate of their own."""
    backbone = [p for module in backbones for p in module.parameters()]
    walks = list(walk.parameters()) if walk is not None else []
    taken = {id(p) for p in (*backbone, *walks)}
    groups = {"backbone": backbone, "head": [p for p in model.parameters() if id(p) not in taken]}
    if walk is not None:
        groups["walk"] = walks
    return groups
