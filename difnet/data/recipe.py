"""Datasets and transforms built from a training recipe (a `TrainConfig`), declared beside the
datasets: each dataset names the recipe settings it is built with and the `build_dataset` keyword
each becomes, so the recipe reads no per-dataset rules of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from difnet.data import RESIZABLE, build_dataset
from difnet.data.base import SegmentationDataset, Transform
from difnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform


class DataRecipe(Protocol):
    """The recipe settings the datasets and transforms are built from (a `TrainConfig` has them)."""

    dataset: str
    data_root: str | None
    seed: int
    num_classes: int | None
    image_size: tuple[int, int] | None
    in_channels: int
    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    flip: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclass(frozen=True)
class DatasetOptions:
    """The recipe settings one dataset is built with. `keywords`: setting -> the `build_dataset`
    keyword it becomes (a setting left None is not passed, unless `defaults` fills it);
    `required`: settings it cannot do without."""

    keywords: Mapping[str, str]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


SYNTHETIC_DEFAULTS = {"num_classes": 5, "image_size": 64}  # the scenes' classes and size (pixels)
DATASET_OPTIONS: dict[str, DatasetOptions] = {
    **{name: DatasetOptions({"image_size": "resize"}) for name in RESIZABLE if name != "folder"},
    "folder": DatasetOptions(
        {"num_classes": "num_classes", "in_channels": "channels", "image_size": "resize"}, required=("num_classes",)
    ),
    "synthetic": DatasetOptions({"num_classes": "num_classes", "image_size": "size", "seed": "seed"},
                                defaults=SYNTHETIC_DEFAULTS),
}  # fmt: skip


def dataset_options(recipe: DataRecipe) -> dict[str, Any]:
    """`build_dataset`'s keyword options for `recipe`'s dataset, from its declaration."""
    declared = DATASET_OPTIONS[recipe.dataset]
    options = {}
    for setting, keyword in declared.keywords.items():
        value = getattr(recipe, setting)
        value = declared.defaults.get(setting) if value is None else value
        if value is not None:
            options[keyword] = value
    return options


def takes(dataset: str, setting: str) -> bool:
    """Whether `dataset` is built with recipe `setting` (e.g. only 'folder' reads `in_channels`)."""
    return setting in DATASET_OPTIONS[dataset].keywords


def resized_size(recipe: DataRecipe) -> tuple[int, int] | None:
    """The size every image of `recipe`'s dataset is resized to on load, if any (synthetic
    scenes are generated at `image_size`, not resized)."""
    resizes = DATASET_OPTIONS[recipe.dataset].keywords.get("image_size") == "resize"
    return recipe.image_size if resizes else None


def normalization(recipe: DataRecipe) -> dict[str, tuple[float, ...]]:
    """`{"mean": ..., "std": ...}` per channel: `recipe`'s, or ImageNet's for RGB."""
    if recipe.mean is None:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return {"mean": recipe.mean, "std": recipe.std}


def train_transform(recipe: DataRecipe) -> TrainTransform:
    """The paper's augmentation with `recipe`'s crop, scale range, flip and normalisation."""
    return TrainTransform(recipe.crop_size, recipe.scale_range, recipe.flip, **normalization(recipe))


def eval_transform(recipe: DataRecipe) -> EvalTransform:
    """Whole-image evaluation with `recipe`'s normalisation."""
    return EvalTransform(**normalization(recipe))


def build_split(recipe: DataRecipe, split: str, transform: Transform | None = None) -> SegmentationDataset:
    """The `split` of `recipe`'s dataset, read with `transform`."""
    return build_dataset(recipe.dataset, recipe.data_root, split, transform, **dataset_options(recipe))
