"""Writers of tiny datasets in the real on-disk layouts (VOC 2012 + SBD, Pascal Context, CamVid,
paired folders), for tests of every part that reads data.

Import it from a test module as `import data_fixtures` (pytest puts `tests/` on `sys.path`).
Every writer is deterministic given `seed`, takes `size` as (height, width) and returns the
folder to pass to the dataset class or `build_dataset` as its root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from difnet.data import CAMVID_PALETTE, VOC_PALETTE

Size = tuple[int, int]
IGNORE = 255


def random_image(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A random `uint8 [H, W, 3]` image."""
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def random_labels(
    rng: np.random.Generator,
    size: Size,
    num_classes: int,
    *,
    objects: int = 3,
    border: bool = False,
) -> np.ndarray:
    """A `uint8 [H, W]` label map: background 0 with `objects` rectangles of random classes in
    `[1, num_classes)`; with `border`, each rectangle is outlined by 255 like VOC's objects."""
    height, width = size
    labels = np.zeros(size, dtype=np.uint8)
    for _ in range(objects):
        top, left = rng.integers(1, height // 2), rng.integers(1, width // 2)
        bottom, right = top + rng.integers(3, height // 2), left + rng.integers(3, width // 2)
        if border:
            labels[top - 1 : bottom + 1, left - 1 : right + 1] = IGNORE
        labels[top:bottom, left:right] = rng.integers(1, num_classes)
    return labels


def save_image(path: Path, image: np.ndarray) -> Path:
    """Write an RGB image (JPEG or PNG by the suffix of `path`), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def save_mask(path: Path, labels: np.ndarray, palette: Sequence[tuple[int, int, int]] | None = None) -> Path:
    """Write class ids as a PNG: mode "P" coloured by `palette` (VOC style), else grayscale "L"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(labels.astype(np.uint8))
    if palette is not None:
        colours = [*palette, *[(0, 0, 0)] * (256 - len(palette))]
        colours[IGNORE] = (224, 224, 192)  # VOC's border colour
        mask.putpalette([value for colour in colours for value in colour])
    mask.save(path)
    return path


def write_list(path: Path, lines: Sequence[str]) -> Path:
    """Write a split list file, one entry per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def voc_ids(count: int, start: int = 0) -> list[str]:
    """VOC-style image ids: 2007_000000, 2007_000001, ..."""
    return [f"2007_{index:06d}" for index in range(start, start + count)]


def write_voc_fixture(
    root: Path,
    n_train: int = 3,
    n_val: int = 2,
    size: Size = (40, 52),
    *,
    n_aug_only: int = 2,
    seed: int = 0,
) -> Path:
    """A Pascal VOC 2012 tree under `root/VOCdevkit/VOC2012` (returned).

    `JPEGImages/<id>.jpg`; `SegmentationClass/<id>.png` palette PNGs (21 classes, 255 borders)
    for the train and val ids; `ImageSets/Segmentation/{train,val,trainval}.txt`; SBD's
    grayscale `SegmentationClassAug/<id>.png` for every id, and
    `ImageSets/Segmentation/train_aug.txt` listing the train ids plus `n_aug_only` SBD-only ids.
    """
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    train, val = voc_ids(n_train), voc_ids(n_val, start=n_train)
    aug_only = voc_ids(n_aug_only, start=n_train + n_val)
    for index, image_id in enumerate([*train, *val, *aug_only]):
        save_image(voc / "JPEGImages" / f"{image_id}.jpg", random_image(rng, size))
        labels = random_labels(rng, size, 21, border=True)
        if index < n_train + n_val:
            save_mask(voc / "SegmentationClass" / f"{image_id}.png", labels, VOC_PALETTE)
        save_mask(voc / "SegmentationClassAug" / f"{image_id}.png", labels)
    lists = voc / "ImageSets" / "Segmentation"
    write_list(lists / "train.txt", train)
    write_list(lists / "val.txt", val)
    write_list(lists / "trainval.txt", [*train, *val])
    write_list(lists / "train_aug.txt", [*train, *aug_only])
    return voc


def write_context_fixture(
    root: Path, n_train: int = 3, n_val: int = 2, size: Size = (40, 52), *, seed: int = 0
) -> Path:
    """A Pascal Context tree under `root/VOCdevkit/VOC2010` (returned): `JPEGImages/<id>.jpg`,
    60-class grayscale `SegmentationClassContext/<id>.png`, `ImageSets/SegmentationContext/
    {train,val}.txt`."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2010"
    train, val = voc_ids(n_train), voc_ids(n_val, start=n_train)
    for image_id in [*train, *val]:
        save_image(voc / "JPEGImages" / f"{image_id}.jpg", random_image(rng, size))
        labels = random_labels(rng, size, 60, objects=4)
        save_mask(voc / "SegmentationClassContext" / f"{image_id}.png", labels)
    write_list(voc / "ImageSets" / "SegmentationContext" / "train.txt", train)
    write_list(voc / "ImageSets" / "SegmentationContext" / "val.txt", val)
    return voc


CAMVID_FOREIGN_ROOT = "/SegNet/CamVid"


def write_camvid_fixture(
    root: Path,
    n_train: int = 3,
    n_val: int = 2,
    n_test: int = 2,
    size: Size = (36, 48),
    *,
    seed: int = 0,
) -> Path:
    """A CamVid tree in the SegNet tutorial's layout under `root/camvid` (returned).

    `<split>/<name>.png` RGB images, `<split>annot/<name>.png` grayscale labels 0-11 (11 =
    unlabelled, in every mask), and `<split>.txt` lists whose lines hold two absolute paths
    under `CAMVID_FOREIGN_ROOT`, another machine's, as in the real files.
    """
    rng = np.random.default_rng(seed)
    camvid = root / "camvid"
    splits = (("train", n_train, "0001TP"), ("val", n_val, "0016E5"), ("test", n_test, "Seq05VD"))
    for split, count, prefix in splits:
        lines = []
        for index in range(count):
            name = f"{prefix}_{index:06d}.png"
            save_image(camvid / split / name, random_image(rng, size))
            labels = random_labels(rng, size, len(CAMVID_PALETTE), objects=4)
            labels[0, :] = 11
            save_mask(camvid / f"{split}annot" / name, labels)
            lines.append(f"{CAMVID_FOREIGN_ROOT}/{split}/{name} {CAMVID_FOREIGN_ROOT}/{split}annot/{name}")
        if count:
            write_list(camvid / f"{split}.txt", lines)
    return camvid


def write_folder_fixture(
    root: Path, n: int = 3, num_classes: int = 4, size: Size = (40, 52), *, seed: int = 0
) -> tuple[Path, Path]:
    """Paired folders `root/images` (JPEGs and PNGs alternating) and `root/masks` (grayscale PNGs
    of the same stems, ids in `[0, num_classes)` and 255 borders); returns both folders.

    `write_folder_fixture(root / split)` gives the layout `build_dataset("folder", root, split)`
    reads.
    """
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    for index in range(n):
        suffix = ".jpg" if index % 2 == 0 else ".png"
        save_image(images / f"scene{index}{suffix}", random_image(rng, size))
        save_mask(masks / f"scene{index}.png", random_labels(rng, size, num_classes, border=True))
    return images, masks


def write_cityscapes_fixture(
    root: Path,
    n_train: int = 3,
    n_val: int = 2,
    size: Size = (32, 64),
    *,
    train_ids: bool = False,
    seed: int = 0,
) -> Path:
    """A Cityscapes tree in the official layout under `root/cityscapes` (returned): images
    `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` and grayscale label-id
    masks (values 0-33, every mask holding void ids) `gtFine/<split>/<city>/..._gtFine_labelIds.png`;
    with `train_ids`, also the `..._gtFine_labelTrainIds.png` masks (all 7 = traffic sign)."""
    rng = np.random.default_rng(seed)
    cityscapes = root / "cityscapes"
    for split, count, city in (("train", n_train, "aachen"), ("val", n_val, "frankfurt")):
        for index in range(count):
            name = f"{city}_{index:06d}_000019"
            save_image(
                cityscapes / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", random_image(rng, size)
            )
            labels = random_labels(rng, size, 34, objects=4)  # background 0: "unlabeled", not evaluated
            labels[-1, :] = 7  # a strip of road in every mask
            save_mask(cityscapes / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)
            if train_ids:
                trained = np.full(size, 7, dtype=np.uint8)
                save_mask(cityscapes / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", trained)
    return cityscapes


def write_ade20k_fixture(
    root: Path, n_train: int = 3, n_val: int = 2, size: Size = (36, 48), *, seed: int = 0
) -> Path:
    """An ADE20K SceneParsing tree under `root/ADEChallengeData2016` (returned): JPEG images
    `images/{training,validation}/ADE_<split>_<n>.jpg` and grayscale annotations of the same
    stems in `annotations/`, values 0 (other) and 1-150, with 150 in every mask."""
    rng = np.random.default_rng(seed)
    ade = root / "ADEChallengeData2016"
    for folder, count, prefix in (("training", n_train, "ADE_train"), ("validation", n_val, "ADE_val")):
        for index in range(count):
            name = f"{prefix}_{index + 1:08d}"
            save_image(ade / "images" / folder / f"{name}.jpg", random_image(rng, size))
            labels = random_labels(rng, size, 151, objects=4)
            labels[-1, :] = 150
            save_mask(ade / "annotations" / folder / f"{name}.png", labels)
    return ade
