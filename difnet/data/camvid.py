"""CamVid road scenes (11 classes) in the layout of the SegNet tutorial."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from difnet.data.base import (
    PublishedDataset,
    Sample,
    foreign_path,
    read_list,
)
from difnet.data.palettes import CAMVID_PALETTE, IGNORE_INDEX

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip
UNLABELLED = 11

LAYOUT = (
    "the SegNet tutorial's CamVid folder, holding train/, trainannot/, val/, valannot/ "
    "(test/, testannot/) and the list files train.txt, val.txt (test.txt)"
)


class CamVid(PublishedDataset):
    """CamVid at 360x480: 11 classes, the "unlabelled" value 11 becomes 255 (ignored).

    `root` holds `train/`, `val/`, `test/` RGB PNGs, their label PNGs in `trainannot/`,
    `valannot/`, `testannot/`, and list files `<split>.txt` whose lines are `image label` paths
    on the tutorial author's machine; each path is resolved by its folder and file name under
    `root`. Split "trainval" joins train and val. `resize=(H, W)` (e.g. `(180, 240)` for the
    half-resolution experiment) resizes each item on load: bilinear image, nearest label.
    """

    NAME, SPLITS = "CamVid", ("train", "val", "test", "trainval")
    # found by any list file, so that a root holding only the split in use will do
    MARKERS, NESTED, LAYOUT = ("train.txt", "val.txt", "test.txt"), ("CamVid",), LAYOUT
    CLASSES, PALETTE = CAMVID_CLASSES, CAMVID_PALETTE
    label_remap: ClassVar[Mapping[int, int]] = {UNLABELLED: IGNORE_INDEX}

    def list_split(self, split: str) -> tuple[list[Sample], str]:
        parts = ("train", "val") if split == "trainval" else (split,)
        list_files = [self.root / f"{part}.txt" for part in parts]
        samples = [sample for path in list_files for sample in self.list_samples(path)]
        return samples, " and ".join(str(path) for path in list_files)

    def list_samples(self, list_file: Path) -> list[Sample]:
        """The pairs of a list file, its foreign paths resolved under `root`."""
        samples = []
        for number, fields in enumerate(read_list(list_file, LAYOUT), start=1):
            if len(fields) != 2:
                raise ValueError(
                    f"{list_file} line {number}: expected two paths, image and label "
                    f"(got {' '.join(fields)!r})"
                )
            image, mask = (foreign_path(field) for field in fields)
            samples.append(
                Sample(
                    self.root / image.parent.name / image.name,
                    self.root / mask.parent.name / mask.name,
                )
            )
        return samples
