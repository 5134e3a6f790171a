"""Dataset base classes: class metadata and the transform for every dataset, plus reading and
checking of image/mask file pairs, so that each concrete dataset only lists where its files live.

When each check runs:

* at construction (cheap, and a mistake in the layout should fail before training starts): the
  root, folders and split list exist, the split is not empty, and every listed image and mask
  file exists;
* when an item is read (it needs the file decoded): the image and mask decode (corrupt or
  truncated files), the mask is single-channel, both have the same size, and every label value
  lies in `[0, num_classes)` or is 255 (ignore); an image that loses bands on its way to RGB
  (RGBA, grey+alpha, CMYK) is warned about, once per dataset.

Every error names the file, folder or value at fault.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from difnet.data.palettes import IGNORE_INDEX, Colour
from difnet.data.transforms import EvalTransform, resize_bilinear, resize_nearest

Transform = Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor]]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
MASK_MODES = ("P", "L", "I;16", "I")
MAX_CLASSES = IGNORE_INDEX  # class ids must stay below the ignore value
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
FOUR_BAND_MODES = ("RGBA", "RGBa", "CMYK")


@dataclass(frozen=True)
class Sample:
    """One image file and the mask file that labels it."""

    image: Path
    mask: Path


class SegmentationDataset(Dataset[tuple[Tensor, Tensor]]):
    """A segmentation dataset: `(image float32 [3, H, W], label int64 [H, W])` items, 255 = ignore.

    Subclasses implement `__len__` and `load`; the transform (by default `EvalTransform`, whole
    image and ImageNet normalisation) is applied here.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        class_names: Sequence[str],
        palette: Sequence[Colour],
        transform: Transform | None = None,
        *,
        resize: tuple[int, int] | None = None,
    ) -> None:
        if not 1 <= len(class_names) <= MAX_CLASSES:
            raise ValueError(f"a dataset needs 1 to {MAX_CLASSES} classes (got {len(class_names)})")
        if len(palette) != len(class_names):
            raise ValueError(f"palette has {len(palette)} colours for {len(class_names)} classes")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable as transform(image, label) (got {transform!r})")
        self.class_names = list(class_names)
        self.palette = [tuple(int(v) for v in colour) for colour in palette]
        self.transform = transform if transform is not None else EvalTransform()
        self.resize = check_resize(resize)

    @property
    def num_classes(self) -> int:
        """Number of classes; labels hold ids in `[0, num_classes)` and 255."""
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` before the transform: `(uint8 [H, W, C] image, uint8 [H, W] label)`."""
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """Item `index`'s `uint8 [H, W]` label before the transform (file datasets skip the image)."""
        return self.load(index)[1]

    def untransformed(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as read (and resized to `resize`), before the transform."""
        image, label = self.load(self._checked_index(index))
        if self.resize is not None and image.shape[:2] != self.resize:
            image, label = resize_bilinear(image, self.resize), resize_nearest(label, self.resize)
        return image, label

    def untransformed_label(self, index: int) -> np.ndarray:
        """Item `index`'s label as `untransformed` gives it, read without the image where the
        dataset can (label statistics such as class weights read every label once)."""
        label = self.load_label(self._checked_index(index))
        if self.resize is not None and label.shape != self.resize:
            label = resize_nearest(label, self.resize)
        return label

    def _checked_index(self, index: int) -> int:
        """`index` in `[0, len)` (a negative one counts from the end); out of range an `IndexError`."""
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} is out of range for a dataset of {size} items")
        return index % size

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(*self.untransformed(index))


class FilePairDataset(SegmentationDataset):
    """Image/mask file pairs read with PIL and checked (see the module docstring for when).

    `label_remap` maps raw mask values to class ids or 255 before the values are checked (CamVid
    stores its "unlabelled" class as 11).
    """

    label_remap: ClassVar[Mapping[int, int]] = {}
    channels: int = 3  # image channels read from each file (FolderDataset takes others)

    def __init__(
        self,
        samples: Iterable[Sample],
        class_names: Sequence[str],
        palette: Sequence[Colour],
        transform: Transform | None = None,
        *,
        source: str,
        resize: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(class_names, palette, transform, resize=resize)
        self.samples = list(samples)
        if not self.samples:
            raise ValueError(f"{source} lists no images")
        check_files_exist(self.samples, source)
        self.source = source
        self.conversion_warned = False  # warn once per dataset, not once per file

    @classmethod
    def mask_reader(cls, num_classes: int) -> FilePairDataset:
        """An instance without files, for `num_classes` classes, whose `class_ids` reads a lone
        mask as this dataset reads its own (e.g. `difnet visualize --label`)."""
        reader = cls.__new__(cls)
        SegmentationDataset.__init__(
            reader, [f"class {c}" for c in range(num_classes)], [(0, 0, 0)] * num_classes
        )
        return reader

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image, mode = decode_image(sample.image, self.channels)
        note = None if self.conversion_warned else conversion_note(mode, self.channels, sample.image)
        if note is not None:
            self.conversion_warned = True
            warnings.warn(f"{note} (the first such file of {self.source}; no further warning)", stacklevel=2)
        label = read_mask(sample.mask)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"image {sample.image} is {image.shape[0]}x{image.shape[1]} (HxW) but its mask "
                f"{sample.mask} is {label.shape[0]}x{label.shape[1]}"
            )
        return image, self.class_ids(label, sample.mask)

    def load_label(self, index: int) -> np.ndarray:
        """Item `index`'s mask as class ids, its image left unread."""
        mask = self.samples[index].mask
        return self.class_ids(read_mask(mask), mask)

    def class_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Mask values read from `path` as `uint8` class ids, after `label_remap` and checks."""
        return check_class_ids(remap_labels(raw, self.label_remap), self.num_classes, path)


class PublishedDataset(FilePairDataset):
    """A public dataset in its published layout, `Dataset(root, split, transform, *, resize=None)`:
    the split checked against `SPLITS`, the root found by `MARKERS` (at `root` or one of the
    `NESTED` folders below it, `LAYOUT` describing it in errors) and the split's pairs listed by
    `list_split`."""

    NAME: ClassVar[str]
    SPLITS: ClassVar[Sequence[str]]
    MARKERS: ClassVar[str | Sequence[str]]
    NESTED: ClassVar[Sequence[str]] = ()
    LAYOUT: ClassVar[str]
    CLASSES: ClassVar[Sequence[str]]
    PALETTE: ClassVar[Sequence[Colour]]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        *,
        resize: tuple[int, int] | None = None,
    ) -> None:
        check_split(split, tuple(self.SPLITS), self.NAME)
        self.root = dataset_root(root, self.MARKERS, nested=self.NESTED, expected=self.LAYOUT)
        self.split = split
        samples, source = self.list_split(split)
        super().__init__(samples, self.CLASSES, self.PALETTE, transform, source=source, resize=resize)

    def list_split(self, split: str) -> tuple[Iterable[Sample], str]:
        """The split's image/label pairs under `self.root`, and where they were listed (for errors)."""
        raise NotImplementedError


def id_list_samples(root: Path, list_file: Path, masks: Path, expected: str) -> Iterable[Sample]:
    """`JPEGImages/<id>.jpg` with `masks/<id>.png` for each id that `list_file` names (VOC's lists)."""
    ids = [foreign_path(fields[0]).stem for fields in read_list(list_file, expected)]
    return [Sample(root / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png") for i in ids]


def remap_labels(raw: np.ndarray, remap: Mapping[int, int]) -> np.ndarray:
    """A copy of mask values `raw` with each key of `remap` replaced by its class id (or 255)."""
    label = raw.copy()
    for value, class_id in remap.items():
        label[raw == value] = class_id
    return label


def check_class_ids(label: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """`label` as `uint8` if every value is a class id in `[0, num_classes)` or 255 (ignore),
    else a `ValueError` naming the file and the stray values."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(
            f"mask {path} holds values {bad[:10].tolist()} outside [0, {num_classes}) "
            f"and {IGNORE_INDEX} (ignore)"
        )
    return label.astype(np.uint8)


def check_resize(resize: Sequence[int] | None) -> tuple[int, int] | None:
    """`resize` as `(height, width)` of positive ints, or None (keep each file's size)."""
    if resize is None:
        return None
    if len(resize) != 2 or not all(isinstance(v, int) and v > 0 for v in resize):
        raise ValueError(f"resize must be (height, width) of positive ints (got {resize!r})")
    return int(resize[0]), int(resize[1])


def check_files_exist(samples: Sequence[Sample], source: str) -> None:
    """Raise `FileNotFoundError` naming the first listed image or mask that is missing."""
    missing_images = [s.image for s in samples if not s.image.is_file()]
    if missing_images:
        raise FileNotFoundError(
            f"image {missing_images[0]} listed by {source} does not exist "
            f"({len(missing_images)} of {len(samples)} images missing)"
        )
    missing_masks = [s for s in samples if not s.mask.is_file()]
    if missing_masks:
        raise FileNotFoundError(
            f"image {missing_masks[0].image} has no mask: expected {missing_masks[0].mask} "
            f"({len(missing_masks)} of {len(samples)} masks missing)"
        )


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """An image file as `uint8 [H, W, channels]`: RGB for 3, grey for 1 (any file converts);
    for other counts (e.g. 4, RGB-NIR) the file must hold that many bands. A file PIL cannot
    decode raises a `ValueError`."""
    return decode_image(path, channels)[0]


def conversion_note(mode: str, channels: int, path: Path) -> str | None:
    """What reading a mode-`mode` file as `channels` channels loses, said for a warning (None:
    nothing): an alpha band dropped, CMYK converted; 4-band files may be data bands."""
    if channels != 3 or (mode not in ALPHA_MODES and mode != "CMYK"):
        return None
    what = "converted from CMYK to RGB" if mode == "CMYK" else "read as RGB, its alpha band dropped"
    note = f"image {path} is a mode-{mode!r} image, {what}"
    if mode in FOUR_BAND_MODES:
        note += (
            "; if its 4 bands are data (e.g. RGB-NIR), read them all with --dataset folder "
            "--in-channels 4 and one --mean/--std value per band"
        )
    return note


def decode_image(path: Path, channels: int = 3) -> tuple[np.ndarray, str]:
    """`read_image`'s array and the file's own PIL mode (to tell what a conversion dropped)."""
    try:
        with Image.open(path) as image:
            image.load()
            if channels in (1, 3):
                pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
                return pixels.reshape(image.height, image.width, channels), image.mode
            bands, mode = image.getbands(), image.mode
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    if len(bands) != channels or pixels.dtype != np.uint8:
        raise ValueError(
            f"image {path} has {len(bands)} band(s) {''.join(bands)} of {pixels.dtype}; "
            f"expected {channels} 8-bit channels"
        )
    return pixels.reshape(*pixels.shape[:2], channels), mode


def read_mask(path: Path) -> np.ndarray:
    """A single-channel mask file as its integer `[H, W]` values (palette indices, not colours)."""
    try:
        with Image.open(path) as mask:
            mask.load()
            mode, values = mask.mode, np.asarray(mask)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read mask {path}: {error}") from error
    if mode not in MASK_MODES:
        raise ValueError(
            f"mask {path} is a mode-{mode!r} image; expected single-channel class ids "
            "(a palette 'P' or grayscale 'L' PNG), not colours"
        )
    return values


def dataset_root(
    root: str | Path, marker: str | Sequence[str], *, nested: Sequence[str] = (), expected: str
) -> Path:
    """`root`, or the folder `root / nested[i]` below it, whichever holds `marker` (or one of
    several markers).

    `expected` describes the layout for the error raised when neither does.
    """
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist; expected {expected}")
    for candidate in (root, *(root / folder for folder in nested)):
        if any((candidate / name).exists() for name in markers):
            return candidate
    raise FileNotFoundError(f"dataset root {root} has no {' or '.join(markers)}; expected {expected}")


def require_dir(path: Path, expected: str) -> Path:
    """`path` if it is a folder, else a `FileNotFoundError` saying what it should hold."""
    if not path.is_dir():
        raise FileNotFoundError(f"folder {path} not found; expected {expected}")
    return path


def check_split(split: str, splits: Sequence[str], dataset: str) -> None:
    """Raise a `ValueError` unless `split` is one of `splits`."""
    if split not in splits:
        raise ValueError(f"unknown {dataset} split {split!r}; choose one of {', '.join(splits)}")


def read_list(path: Path, expected: str) -> list[list[str]]:
    """The whitespace-separated fields of each non-empty line of a split list file."""
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found; expected {expected}")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"split file {path} is empty")
    return lines


def foreign_path(text: str) -> PurePosixPath:
    """A path written on another machine (POSIX or Windows separators), for its last parts."""
    return PurePosixPath(text.replace("\\", "/"))
