"""Pascal VOC 2012 segmentation, and its SBD-augmented training set ("train_aug")."""

from __future__ import annotations

from difnet.data.base import (
    PublishedDataset,
    Sample,
    id_list_samples,
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


class VOCSegmentation(PublishedDataset):
    """Pascal VOC 2012: 21 classes (background + 20 objects), 255 marks object borders (ignored).

    `root` is the `VOC2012` folder (or a folder holding `VOCdevkit/VOC2012` or `VOC2012`).
    Splits "train" (1,464), "val" (1,449) and "trainval" read `SegmentationClass/`, whose palette
    PNGs are read as palette indices, i.e. class ids. Split "train_aug" (10,582) reads SBD's
    grayscale `SegmentationClassAug/<id>.png` for the ids of
    `ImageSets/Segmentation/train_aug.txt`.
    """

    NAME, SPLITS = "VOC", ("train", "val", "trainval", "train_aug")
    MARKERS, NESTED, LAYOUT = "JPEGImages", ("VOC2012", "VOCdevkit/VOC2012"), LAYOUT
    CLASSES, PALETTE = VOC_CLASSES, VOC_PALETTE

    def list_split(self, split: str) -> tuple[list[Sample], str]:
        augmented = split == "train_aug"
        masks = require_dir(
            self.root / ("SegmentationClassAug" if augmented else "SegmentationClass"),
            TRAIN_AUG if augmented else f"VOC's palette PNG masks; {LAYOUT}",
        )
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        return id_list_samples(self.root, list_file, masks, TRAIN_AUG if augmented else LAYOUT), str(
            list_file
        )
