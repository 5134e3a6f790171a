"""Any pair of folders: images in one, same-named single-channel class-id masks in the other."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from difnet.data.base import (
    IMAGE_SUFFIXES,
    MAX_CLASSES,
    FilePairDataset,
    Sample,
    Transform,
    require_dir,
)
from difnet.data.palettes import Colour, generic_palette


class FolderDataset(FilePairDataset):
    """Images of `images_dir` paired by file stem with the masks of `masks_dir`
    (`a.jpg` with `a.png`); masks hold class ids in `[0, num_classes)`, 255 = ignore.
    `channels` other than 3 reads grey (1) or multi-band images such as RGB-NIR PNGs (4); give
    the transform one `mean` / `std` value per channel. `resize=(H, W)` resizes each item on load."""

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path,
        num_classes: int,
        transform: Transform | None = None,
        *,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Colour] | None = None,
        channels: int = 3,
        resize: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes must be an int (got {num_classes!r})")
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}] (got {num_classes})")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer (got {channels!r})")
        self.channels = channels
        self.images_dir = require_dir(Path(images_dir).expanduser(), "a folder of images")
        self.masks_dir = require_dir(Path(masks_dir).expanduser(), "a folder of mask PNGs")
        masks = files_by_stem(self.masks_dir)
        samples = (
            Sample(image, masks.get(stem, self.masks_dir / f"{stem}.png"))
            for stem, image in files_by_stem(self.images_dir).items()
        )
        super().__init__(
            samples,
            class_names or [f"class {c}" for c in range(num_classes)],
            palette or generic_palette(num_classes),
            transform,
            source=f"folder {self.images_dir}",
            resize=resize,
        )


def files_by_stem(folder: Path) -> dict[str, Path]:
    """The image files of `folder` by stem, sorted; two files with one stem raise a `ValueError`."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise ValueError(f"{files[path.stem]} and {path} have the same name; pairing is by stem")
        files[path.stem] = path
    return files
