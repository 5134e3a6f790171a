"""Pascal VOC 2012 segmentation, and its SBD-augmented training set ("train_aug")."""

from __future__ import annotations

from pathlib import Path

from difnet.data.base import (
    FilePairDataset,
    Sample,
    Transform,
    check_split,
    dataset_root,
    foreign_path,
    read_list,
    require_dir,
)
from difnet.data.palettes import VOC_PALETTE

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

LAYOUT = (
    "the VOC2012 folder of VOCdevkit, holding JPEGImages/, SegmentationClass/ and "
    "ImageSets/Segmentation/{train,val,trainval}.txt (and, for split 'train_aug', SBD's "
    "SegmentationClassAug/ with ImageSets/Segmentation/train_aug.txt)"
)
TRAIN_AUG = (
    "the 10,582 ids of SBD's augmented training set in ImageSets/Segmentation/train_aug.txt, "
    "one id per line (DeepLab's list of 'JPEGImages/<id>.jpg SegmentationClassAug/<id>.png' "
    "pairs works too), and SBD's masks converted to grayscale class-id PNGs in "
    "SegmentationClassAug/ (as distributed with DeepLab's SegmentationClassAug.zip)"
)


class VOCSegmentation(FilePairDataset):
    """Pascal VOC 2012: 21 classes (background + 20 objects), 255 marks object borders (ignored).

    `root` is the `VOC2012` folder (or a folder holding `VOCdevkit/VOC2012` or `VOC2012`).
    Splits "train" (1,464), "val" (1,449) and "trainval" read `SegmentationClass/`, whose palette
    PNGs are read as palette indices, i.e. class ids. Split "train_aug" (10,582) reads SBD's
    grayscale `SegmentationClassAug/<id>.png` for the ids of
    `ImageSets/Segmentation/train_aug.txt`.
    """

    SPLITS = ("train", "val", "trainval", "train_aug")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        *,
        resize: tuple[int, int] | None = None,
    ) -> None:
        check_split(split, self.SPLITS, "VOC")
        self.root = dataset_root(root, "JPEGImages", nested=("VOC2012", "VOCdevkit/VOC2012"), expected=LAYOUT)
        self.split = split
        augmented = split == "train_aug"
        masks = require_dir(
            self.root / ("SegmentationClassAug" if augmented else "SegmentationClass"),
            TRAIN_AUG if augmented else f"VOC's palette PNG masks; {LAYOUT}",
        )
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        ids = [
            foreign_path(fields[0]).stem
            for fields in read_list(list_file, TRAIN_AUG if augmented else LAYOUT)
        ]
        samples = (Sample(self.root / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png") for i in ids)
        super().__init__(samples, VOC_CLASSES, VOC_PALETTE, transform, source=str(list_file), resize=resize)
