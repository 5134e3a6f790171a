"""Cityscapes (19 evaluated classes) in its official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difnet.data.base import PublishedDataset, Sample, require_dir
from difnet.data.palettes import CITYSCAPES_PALETTE, IGNORE_INDEX

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
NUM_LABEL_IDS = 34  # the label ids 0-33 of *_gtFine_labelIds.png
# the train id of each evaluated label id; the other label ids are not evaluated (255)
LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
TRAIN_IDS = np.full(IGNORE_INDEX + 1, IGNORE_INDEX, dtype=np.uint8)  # label id -> train id, as a table
TRAIN_IDS[list(LABEL_TO_TRAIN_ID)] = list(LABEL_TO_TRAIN_ID.values())
LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX = "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"

LAYOUT = (
    "the Cityscapes folder holding leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "gtFine/<split>/<city>/*_gtFine_labelIds.png (or *_gtFine_labelTrainIds.png), splits train, val, test"
)


class Cityscapes(PublishedDataset):
    """Cityscapes fine annotations: 19 classes; the other label ids, void included, become 255.

    `root` holds `leftImg8bit/` and `gtFine/` (or is a folder holding `cityscapes/`). Each image
    `leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` is labelled by
    `gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png` when that file exists (written by
    cityscapesscripts' `createTrainIdLabelImgs`, read as it is), else by
    `<name>_gtFine_labelIds.png`, whose 34 label ids map through `LABEL_TO_TRAIN_ID`. Splits:
    "train" (2,975), "val" (500), "test" (1,525, unlabelled). `resize=(H, W)` resizes on load.
    """

    NAME, SPLITS = "Cityscapes", ("train", "val", "test")
    MARKERS, NESTED, LAYOUT = "leftImg8bit", ("cityscapes",), LAYOUT
    CLASSES, PALETTE = CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    def list_split(self, split: str) -> tuple[list[Sample], str]:
        images = require_dir(self.root / "leftImg8bit" / split, LAYOUT)
        labels = require_dir(self.root / "gtFine" / split, LAYOUT)
        samples = [
            Sample(
                path, self.label_file(labels / path.parent.name, path.name.removesuffix("_leftImg8bit.png"))
            )
            for path in sorted(images.glob("*/*_leftImg8bit.png"))
        ]
        return samples, str(images)

    @staticmethod
    def label_file(folder: Path, name: str) -> Path:
        """The train-id mask of image `name` in `folder` if there is one, else its label-id mask."""
        train_ids = folder / f"{name}{TRAIN_IDS_SUFFIX}"
        return train_ids if train_ids.is_file() else folder / f"{name}{LABEL_IDS_SUFFIX}"

    def class_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith(TRAIN_IDS_SUFFIX):
            return super().class_ids(raw, path)
        stray = np.setdiff1d(np.unique(raw), [*range(NUM_LABEL_IDS), IGNORE_INDEX])
        if stray.size:
            raise ValueError(
                f"mask {path} holds values {stray[:10].tolist()} that are no Cityscapes label ids "
                f"(0-{NUM_LABEL_IDS - 1}, or {IGNORE_INDEX})"
            )
        return TRAIN_IDS[raw]
