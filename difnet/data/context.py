"""Pascal Context (59 classes + background) in a VOC-style folder of label PNGs."""

from __future__ import annotations

from difnet.data.base import (
    PublishedDataset,
    Sample,
    id_list_samples,
    require_dir,
)
from difnet.data.palettes import CONTEXT_PALETTE

CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip

LAYOUT = (
    "the VOC2010 folder of VOCdevkit, holding JPEGImages/, SegmentationClassContext/ (60-class "
    "label PNGs) and ImageSets/SegmentationContext/{train,val}.txt"
)


class PascalContext(PublishedDataset):
    """Pascal Context: 60 classes, background (0) and the 59 most frequent categories (1-59).

    `root` is the `VOC2010` folder (or a folder holding `VOCdevkit/VOC2010` or `VOC2010`) with
    `JPEGImages/<id>.jpg`, `SegmentationClassContext/<id>.png` and
    `ImageSets/SegmentationContext/{train,val}.txt` (4,998 / 5,105 ids, one per line).

    The label PNGs are single-channel class ids 0-59 (255 = ignore, if used). They come from the
    459-category annotations (`trainval_merged.json`, read with the detail API's `getMask`):
    keep the 59 categories of `CONTEXT_CLASSES[1:]`, numbered 1-59 in increasing order of their
    459-category id (2 aeroplane, 9 bag, 18 bed, ..., 458 wood: the order of `CONTEXT_CLASSES`),
    and set every other pixel, unlabelled ones included, to 0 = background. This is the common
    60-class conversion (e.g. MMSegmentation's `pascal_context.py` converter).
    """

    NAME, SPLITS = "Pascal Context", ("train", "val")
    MARKERS, NESTED, LAYOUT = "JPEGImages", ("VOC2010", "VOCdevkit/VOC2010"), LAYOUT
    CLASSES, PALETTE = CONTEXT_CLASSES, CONTEXT_PALETTE

    def list_split(self, split: str) -> tuple[list[Sample], str]:
        masks = require_dir(self.root / "SegmentationClassContext", f"the 60-class label PNGs; {LAYOUT}")
        list_file = self.root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        return id_list_samples(self.root, list_file, masks, LAYOUT), str(list_file)
