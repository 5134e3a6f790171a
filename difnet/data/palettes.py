"""Class colour palettes (VOC, Pascal Context, CamVid, Cityscapes, ADE20K, generic) and label-map
colouring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

Colour = tuple[int, int, int]
Palette = list[Colour]

IGNORE_INDEX = 255
IGNORE_COLOUR: Colour = (255, 255, 255)


def generic_palette(num_classes: int) -> Palette:
    """The VOC development kit's colour map for `num_classes` classes: class bits spread over
    the high bits of R, G and B, so neighbouring ids get clearly different colours."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer (got {num_classes!r})")
    palette = []
    for index in range(num_classes):
        rgb = [0, 0, 0]
        bits, shift = index, 7
        while bits:
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
            shift -= 1
        palette.append((rgb[0], rgb[1], rgb[2]))
    return palette


VOC_PALETTE: Palette = generic_palette(21)
CONTEXT_PALETTE: Palette = generic_palette(60)
CAMVID_PALETTE: Palette = [
    (128, 128, 128),  # Sky
    (128, 0, 0),  # Building
    (192, 192, 128),  # Pole
    (128, 64, 128),  # Road
    (60, 40, 222),  # Pavement
    (128, 128, 0),  # Tree
    (192, 128, 128),  # SignSymbol
    (64, 64, 128),  # Fence
    (64, 0, 128),  # Car
    (64, 64, 0),  # Pedestrian
    (0, 128, 192),  # Bicyclist
]
# Cityscapes' own colours of its 19 evaluated classes, in train-id order
CITYSCAPES_PALETTE: Palette = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
ADE20K_PALETTE: Palette = generic_palette(150)


def _check_labels(labels: np.ndarray, palette: Sequence[Colour]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array [H, W] (got {labels.dtype} of shape {labels.shape})"
        )
    values = np.unique(labels)
    bad = values[((values < 0) | (values >= len(palette))) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(
            f"labels hold values {bad[:10].tolist()} outside the palette's "
            f"{len(palette)} classes and {IGNORE_INDEX} (ignore)"
        )
    return labels


def colorize(labels: np.ndarray, palette: Sequence[Colour]) -> np.ndarray:
    """Class ids `[H, W]` as an RGB `uint8 [H, W, 3]` picture; ignored pixels (255) are white."""
    labels = _check_labels(labels, palette)
    table = np.zeros((max(len(palette), IGNORE_INDEX + 1), 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table[labels]


def palette_image(labels: np.ndarray, palette: Sequence[Colour]) -> Image.Image:
    """Class ids `[H, W]` as a mode-"P" PIL image coloured by `palette`, the format of VOC's
    masks: saved as PNG, its pixel values stay class ids (255 = ignore, shown white)."""
    labels = _check_labels(labels, palette)
    if len(palette) > IGNORE_INDEX:
        raise ValueError(f"a palette image holds at most {IGNORE_INDEX} classes (got {len(palette)})")
    colours = [*palette, *[(0, 0, 0)] * (IGNORE_INDEX - len(palette)), IGNORE_COLOUR]
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette([value for colour in colours for value in colour])
    return image
