"""Class-balanced cross-entropy weights counted from a training set's labels, as CamVid papers train:
median-frequency balancing (Eigen and Fergus 2015, SegNet) and ENet's `1 / ln(1.02 + p_c)`.

Counting reads each label once, as the dataset loads it (resized to its `resize`, before any
augmentation), without decoding the images where the dataset can. Pixels of the ignore index
count nowhere. A class that no training label holds gets weight 0, with a warning: no pixel of
the training set can be weighted by it, and a made-up weight would only say something false.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from difnet.data.base import SegmentationDataset
from difnet.data.palettes import IGNORE_INDEX

MEDIAN_FREQUENCY, ENET = "median-frequency", "enet"
CLASS_WEIGHTINGS = (MEDIAN_FREQUENCY, ENET)
ENET_C = 1.02  # ENet's constant: weights stay within (0, 1 / ln 1.02 = 50.5]


@dataclass(frozen=True)
class LabelCounts:
    """Per class: `pixels`, its labelled pixels, and `image_pixels`, the labelled pixels of the
    images that hold the class (median frequency's denominator); both int64 `[C]`."""

    pixels: np.ndarray
    image_pixels: np.ndarray


def count_labels(dataset: Dataset, num_classes: int) -> LabelCounts:
    """The `LabelCounts` of every label of `dataset`, a `SegmentationDataset` or a `Subset` of one."""
    base, indices = _segmentation_items(dataset)
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for index in indices:
        counts = np.bincount(base.untransformed_label(index).ravel(), minlength=IGNORE_INDEX + 1)
        counts = counts[:num_classes].astype(np.int64)
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    return LabelCounts(pixels, image_pixels)


def weights_from_counts(counts: LabelCounts, method: str, class_names: Sequence[str] | None = None) -> Tensor:
    """The float32 `[C]` class weights of `method` (one of `CLASS_WEIGHTINGS`) for `counts`;
    absent classes get 0 and are named in a warning (`class_names`, else their ids)."""
    present = counts.pixels > 0
    if not present.any():
        raise ValueError("class weighting: the training labels hold no labelled pixel to count")
    weights = np.zeros(len(counts.pixels), dtype=np.float64)
    if method == MEDIAN_FREQUENCY:
        frequency = counts.pixels[present] / counts.image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    elif method == ENET:
        share = counts.pixels[present] / counts.pixels.sum()
        weights[present] = 1.0 / np.log(ENET_C + share)
    else:
        raise ValueError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)} (got {method!r})")
    if not present.all():
        names = class_names or [str(c) for c in range(len(counts.pixels))]
        absent = ", ".join(str(names[c]) for c in np.flatnonzero(~present))
        warnings.warn(
            f"class weighting {method}: no training label holds class(es) {absent}; their weight is 0",
            stacklevel=2,
        )
    return torch.tensor(weights, dtype=torch.float32)


def class_weights(dataset: Dataset, num_classes: int, method: str) -> Tensor:
    """`method`'s float32 `[C]` class weights counted from the labels of `dataset`."""
    base, _ = _segmentation_items(dataset)
    return weights_from_counts(count_labels(dataset, num_classes), method, base.class_names)


def _segmentation_items(dataset: Dataset) -> tuple[SegmentationDataset, list[int]]:
    """The `SegmentationDataset` under `dataset` (itself, or below nested `Subset`s) and the indices
    of its items that `dataset` holds."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    if not isinstance(dataset, SegmentationDataset):
        raise TypeError(
            "class weighting counts the labels of a SegmentationDataset (or a Subset of one), "
            f"got {type(dataset).__name__}"
        )
    return dataset, indices
