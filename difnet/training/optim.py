"""The authors' optimiser: SGD with momentum over every parameter at one learning rate (the
heads' and walks' factors default to 1), decayed per iteration by the poly schedule
`lr * (1 - step / total) ** power`."""

from __future__ import annotations

from torch import nn
from torch.optim import SGD

from difnet.training.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> SGD:
    """SGD over the model's `param_groups()`: "backbone" at `lr`, "head" at `lr * head_lr_mult`,
    "walk" (DifNet's mu_t, beta_t, guided walk) at `lr * walk_lr_mult` with `walk_weight_decay`."""
    multipliers = {"backbone": 1.0, "head": config.head_lr_mult, "walk": config.walk_lr_mult}
    walk_decay = config.weight_decay if config.walk_weight_decay is None else config.walk_weight_decay
    return SGD(
        [
            {
                "params": params,
                "lr": config.lr * multipliers[name],
                "lr_mult": multipliers[name],
                "name": name,
                **({"weight_decay": walk_decay} if name == "walk" else {}),
            }
            for name, params in model.param_groups().items()
        ],  # fmt: skip
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """The poly schedule's learning rate at optimiser step `step` of `total_steps`."""
    return base_lr * (1 - min(step, total_steps) / total_steps) ** power


def set_learning_rate(optimizer: SGD, config: TrainConfig, step: int, total_steps: int) -> float:
    """Set every group's rate for `step`; returns the backbone's."""
    lr = poly_lr(config.lr, step, total_steps, config.poly_power)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr
