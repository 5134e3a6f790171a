"""Checks a training run makes before it writes anything, so that bad data or a crop that does
not fit the images is reported while the output folder is still untouched: the first sample of
each split is read and transformed, and the crop is compared with the first training image."""

from __future__ import annotations

import warnings

from torch.utils.data import Dataset

from difnet.data.base import SegmentationDataset

MAX_CROP_RATIO = 4.0  # beyond this many times the largest scaled image, a crop is mostly padding


def check_first_samples(
    train_set: Dataset, val_set: Dataset | None, crop_size: tuple[int, int], scale_range: tuple[float, float]
) -> None:
    """Read item 0 of the training and validation splits (a file that cannot be read raises its
    `ValueError` now, not mid-run) and check `crop_size` against the first training image."""
    for dataset in (train_set, val_set):
        if dataset is None or len(dataset) == 0:
            continue
        if not isinstance(dataset, SegmentationDataset):
            dataset[0]
            continue
        image, label = dataset.untransformed(0)
        dataset.transform(image, label)
        if dataset is train_set:
            check_crop(crop_size, scale_range[1], image.shape[:2])


def check_crop(crop_size: tuple[int, int], largest_scale: float, image_size: tuple[int, int]) -> None:
    """Warn when a `crop_size` crop is larger than an `image_size` image at `largest_scale`
    (every crop then holds padding), and refuse it beyond `MAX_CROP_RATIO` times."""
    largest = [side * largest_scale for side in image_size]
    ratio = max(crop / side for crop, side in zip(crop_size, largest, strict=True))
    if ratio <= 1:
        return
    crop, image = "x".join(map(str, crop_size)), "x".join(map(str, image_size))
    fitting = "x".join(str(int(side)) for side in largest)
    where = (
        f"the crop {crop} is {ratio:.1f} times the first training image ({image} pixels) at the "
        f"largest random scale {largest_scale:g}"
    )
    if ratio > MAX_CROP_RATIO:
        raise ValueError(
            f"{where}: most of every crop would be padding (refused beyond {MAX_CROP_RATIO:g} times); "
            f"use --crop-size {fitting} or smaller"
        )
    warnings.warn(
        f"{where}: every crop is padded with ignored pixels, which costs time and teaches nothing; "
        f"--crop-size {fitting} or smaller avoids it",
        stacklevel=2,
    )
