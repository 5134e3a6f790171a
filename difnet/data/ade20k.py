"""ADE20K as the MIT Scene Parsing benchmark (SceneParsing, 150 classes) distributes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difnet.data.base import PublishedDataset, Sample, require_dir
from difnet.data.palettes import ADE20K_PALETTE, IGNORE_INDEX

# objectInfo150's order: annotation value v is class v - 1
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
OTHER = 0  # the annotations' "other objects" value, not evaluated

LAYOUT = (
    "the ADEChallengeData2016 folder holding images/{training,validation}/*.jpg and "
    "annotations/{training,validation}/*.png"
)


class ADE20K(PublishedDataset):
    """ADE20K SceneParsing: 150 classes; annotation values 1-150 become class ids 0-149 and 0
    ("other") becomes 255 (ignored), as the benchmark evaluates it.

    `root` is `ADEChallengeData2016` (or a folder holding it). Split "train" reads
    `images/training/<name>.jpg` (20,210) with `annotations/training/<name>.png`, "val" the
    `validation` folders (2,000).
    """

    NAME, SPLITS = "ADE20K", ("train", "val")
    FOLDERS = {"train": "training", "val": "validation"}  # each split's folder
    MARKERS, NESTED, LAYOUT = "images", ("ADEChallengeData2016",), LAYOUT
    CLASSES, PALETTE = ADE20K_CLASSES, ADE20K_PALETTE

    def list_split(self, split: str) -> tuple[list[Sample], str]:
        images = require_dir(self.root / "images" / self.FOLDERS[split], LAYOUT)
        labels = require_dir(self.root / "annotations" / self.FOLDERS[split], LAYOUT)
        return [Sample(path, labels / f"{path.stem}.png") for path in sorted(images.glob("*.jpg"))], str(
            images
        )

    def class_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        stray = np.unique(raw[raw > len(ADE20K_CLASSES)])
        if stray.size:
            raise ValueError(
                f"mask {path} holds values {stray[:10].tolist()} above {len(ADE20K_CLASSES)}; ADE20K's "
                f"annotations hold {OTHER} (other) and the classes 1-{len(ADE20K_CLASSES)}"
            )
        return np.where(raw == OTHER, IGNORE_INDEX, raw.astype(np.int64) - 1).astype(np.uint8)
