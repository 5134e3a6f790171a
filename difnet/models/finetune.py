"""Loading a trained model's weights into a model for other classes (fine-tuning): every tensor
whose shape fits is copied; the layers sized by the class count keep their fresh initialisation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneReport:
    """What a class-changing load did: the source, its class count and the new one, and the
    layers (module names) re-initialised because their tensors are sized by the class count."""

    source: str
    source_classes: int
    num_classes: int
    reinitialized: tuple[str, ...]


def load_for_fine_tuning(
    model: nn.Module, state: Mapping[str, Tensor], source: str, source_classes: int
) -> FineTuneReport:
    """Copy into `model` every tensor of `state` (a model of the same architecture trained for
    `source_classes` classes) except those of layers holding a tensor of another shape; those
    layers stay as `model` initialised them. Logs and returns the report."""
    own = model.state_dict()
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(
            f"{source} does not hold this architecture: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    changed = {_layer(key) for key, value in state.items() if value.shape != own[key].shape}
    kept = {key: value for key, value in state.items() if _layer(key) not in changed}
    with torch.no_grad():
        for key, value in kept.items():
            own[key].copy_(value)
    report = FineTuneReport(source, source_classes, getattr(model, "num_classes", -1), tuple(sorted(changed)))
    logger.info(
        "loaded %s (%d classes) for %d classes: re-initialised %s; every other tensor loaded",
        source, source_classes, report.num_classes, ", ".join(report.reinitialized) or "nothing",
    )  # fmt: skip
    return report


def _layer(key: str) -> str:
    """The module a state-dict key belongs to (`head.importance.0.weight` -> `head.importance.0`)."""
    return key.rpartition(".")[0]
