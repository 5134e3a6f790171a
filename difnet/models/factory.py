"""Building models by name, and the parameter counts of Sec. 5 (DifNet-50 ~ Sim-DeepLab-101)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from difnet.models.base import SegmentationModel
from difnet.models.difnet import DifNet
from difnet.models.options import MODEL_OPTIONS, ModelOptions
from difnet.models.parameters import count_parameters
from difnet.models.resnet import RESNET_DEPTHS
from difnet.models.simdeeplab import SimDeepLab

MODELS: dict[str, type[SegmentationModel]] = {"difnet": DifNet, "simdeeplab": SimDeepLab}


def build_model(name: str, depth: int | None = None, num_classes: int = 21, **kwargs: Any) -> nn.Module:
    """`DifNet` or `SimDeepLab` (by `name`, case-insensitive) with the given depth (the ResNet
    shorthand; None: the model's default, or `encoder=`) and classes.

    Extra keyword arguments go to the model's constructor (e.g. `encoder`, `aspp`, `walk`,
    `diffusion_stride`, `pretrained_backbone`).
    """
    return model_class(name)(depth=depth, num_classes=num_classes, **kwargs)


def register_model(model_class: type[SegmentationModel], options: ModelOptions) -> None:
    """Make a `SegmentationModel` subclass buildable (`build_model`), trainable
    (`TrainConfig(model=...)`) and loadable by its `name`, taking the recipe `options` declared;
    a name already taken is refused."""
    if not (isinstance(model_class, type) and issubclass(model_class, SegmentationModel)):
        raise TypeError(f"a registered model must be a SegmentationModel subclass (got {model_class!r})")
    name = model_class.__dict__.get("name")
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(
            f"{model_class.__name__} needs its own lower-case `name` to be registered (got {name!r})"
        )
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = model_class
    MODEL_OPTIONS[name] = options


def model_class(name: str) -> type[SegmentationModel]:
    """The model class registered as `name` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"model name must be one of {tuple(MODELS)} (got {name!r})")
    return MODELS[key]


def parameter_counts(
    depths: Sequence[int] = RESNET_DEPTHS,
    num_classes: int = 21,
    models: Sequence[str] = ("difnet", "simdeeplab"),
) -> dict[str, dict[int, int]]:
    """`{model name: {depth: parameter count}}` of `models` (the paper's two by default), built on the
    meta device (no memory, no init)."""
    with torch.device("meta"):
        return {
            name: {depth: count_parameters(build_model(name, depth, num_classes)) for depth in depths}
            for name in models
        }


def format_parameter_counts(counts: dict[str, dict[int, int]]) -> str:
    """A markdown table of `parameter_counts` in millions, one row per depth."""
    names = list(counts)
    depths = list(next(iter(counts.values())))
    lines = ["| depth | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for depth in depths:
        cells = " | ".join(f"{counts[name][depth] / 1e6:.2f} M" for name in names)
        lines.append(f"| {depth} | {cells} |")
    return "\n".join(lines)
