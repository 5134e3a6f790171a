"""Segmentation datasets, the paper's transforms and class palettes.

Every dataset yields `(image float32 [3, H, W] ImageNet-normalised, label int64 [H, W])` with
255 = ignore, and carries `num_classes`, `class_names`, `palette` and `ignore_index`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from difnet.data.ade20k import ADE20K, ADE20K_CLASSES
from difnet.data.base import FilePairDataset, Sample, SegmentationDataset, Transform, read_mask
from difnet.data.camvid import CAMVID_CLASSES, CamVid
from difnet.data.cityscapes import CITYSCAPES_CLASSES, Cityscapes
from difnet.data.context import CONTEXT_CLASSES, PascalContext
from difnet.data.folder import FolderDataset
from difnet.data.palettes import (
    ADE20K_PALETTE,
    CAMVID_PALETTE,
    CITYSCAPES_PALETTE,
    CONTEXT_PALETTE,
    IGNORE_INDEX,
    VOC_PALETTE,
    colorize,
    generic_palette,
    palette_image,
)
from difnet.data.synthetic import SyntheticShapes
from difnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    denormalize,
)
from difnet.data.voc import VOC_CLASSES, VOCSegmentation

DATASETS = ("voc", "context", "camvid", "cityscapes", "ade20k", "folder", "synthetic")
RESIZABLE = ("voc", "context", "camvid", "cityscapes", "ade20k", "folder")  # take the option `resize`
FILE_DATASETS: dict[str, type[FilePairDataset]] = {
    "voc": VOCSegmentation, "context": PascalContext, "camvid": CamVid, "cityscapes": Cityscapes,
    "ade20k": ADE20K, "folder": FolderDataset,
}  # fmt: skip
SYNTHETIC_SPLITS = {"train": (400, 0), "val": (100, 1), "test": (100, 2)}  # size, seed offset


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    transform: Transform | None = None,
    **options: Any,
) -> SegmentationDataset:
    """The `split` of dataset `name` (one of `DATASETS`) stored under `root`.

    Every file dataset takes the option `resize=(H, W)` (each item resized on load). "folder"
    reads `root/<split>/images` and `root/<split>/masks` and needs the option `num_classes`. "synthetic" ignores `root`; its options are those of `SyntheticShapes`, with
    400 train / 100 val / 100 test scenes by default and seeds `seed`, `seed + 1`, `seed + 2`.
    """
    if name == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise ValueError(
                f"unknown synthetic split {split!r}; choose one of {', '.join(SYNTHETIC_SPLITS)}"
            )
        num_images, seed_offset = SYNTHETIC_SPLITS[split]
        options = {"num_images": num_images, **options}
        options["seed"] = options.get("seed", 0) + seed_offset
        return SyntheticShapes(transform=transform, **options)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root (the folder that holds its files)")
    if name == "folder":
        if "num_classes" not in options:
            raise ValueError("dataset 'folder' needs the option num_classes")
        root = Path(root)
        return FolderDataset(root / split / "images", root / split / "masks", transform=transform, **options)
    if set(options) - {"resize"}:
        raise TypeError(f"dataset {name!r} takes only the option resize (got {', '.join(sorted(options))})")
    return FILE_DATASETS[name](root, split, transform, **options)


def read_label(path: str | Path, num_classes: int, dataset: str | None = None) -> np.ndarray:
    """A lone mask file as `uint8` class ids, read as `dataset`'s masks are (CamVid's void 11
    ignored, Cityscapes' label ids mapped, ...) and refused as they are; any dataset's values
    when `dataset` is None or generated."""
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    path = Path(path)
    reader = FILE_DATASETS.get(dataset, FilePairDataset).mask_reader(num_classes)
    return reader.class_ids(read_mask(path), path)


__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CONTEXT_CLASSES",
    "CONTEXT_PALETTE",
    "DATASETS",
    "RESIZABLE",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "CamVid",
    "Cityscapes",
    "EvalTransform",
    "FilePairDataset",
    "FolderDataset",
    "PascalContext",
    "Sample",
    "SegmentationDataset",
    "SyntheticShapes",
    "TrainTransform",
    "Transform",
    "VOCSegmentation",
    "build_dataset",
    "read_label",
    "colorize",
    "denormalize",
    "generic_palette",
    "palette_image",
]
