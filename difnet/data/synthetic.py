"""SyntheticShapes: generated scenes where both long-range context and boundaries matter, so a
model can be trained and inspected on a laptop with nothing downloaded."""

from __future__ import annotations

import colorsys
import math

import numpy as np

from difnet.data.base import SegmentationDataset, Transform
from difnet.data.palettes import generic_palette

SHAPES = ("disk", "square", "line", "triangle", "ring", "cross")
COLOUR_FAMILIES = (
    ("orange", 0.07), ("teal", 0.48), ("violet", 0.76), ("yellow", 0.15), ("blue", 0.60),
    ("pink", 0.90),
)  # fmt: skip
MAX_SYNTHETIC_CLASSES = 1 + 2 * len(COLOUR_FAMILIES)
MIN_SIZE = 16


def class_shape(class_id: int) -> str:
    """The shape drawn for foreground class `class_id` (>= 1)."""
    return SHAPES[(class_id - 1) % len(SHAPES)]


def class_family(class_id: int) -> tuple[str, float]:
    """The colour family (name, hue) of foreground class `class_id`; 2c+1 and 2c+2 share one."""
    return COLOUR_FAMILIES[(class_id - 1) // 2]


class SyntheticShapes(SegmentationDataset):
    """`num_images` generated scenes of `size` pixels with `num_classes` classes (2 to 13).

    Recipe of scene `i`, drawn from a NumPy generator seeded with `(seed, i)` (so a scene does
    not depend on which others were generated, nor in which order or worker):

    * class 0, background: a low-saturation colour with smooth blotches (bilinear upsampled
      coarse noise) and pixel noise;
    * foreground class `k` is a shape, `SHAPES[(k - 1) % 6]` (disk, square, line, triangle,
      ring, cross), in a colour family `(k - 1) // 2`: classes 1 and 2 (disk and square) share
      one colour family, 3 and 4 (line and triangle) the next, and so on. Shapes of one family
      are told apart only by their outline, which a pixel in a large shape cannot see nearby:
      long-range context matters;
    * every scene holds each shape class once, plus one more shape half of the time, each in its
      own cell of a grid with a random position, size and rotation, filled with the family
      colour (jittered hue, saturation and value) under random stripes and pixel noise;
    * "line" classes are 2-3 px wide segments across the scene, drawn last over the others:
      thin structures, where boundaries matter.

    Scenes are generated on the fly (about 2 ms per 64x64 scene) and never stored.
    """

    def __init__(
        self,
        num_images: int,
        size: int | tuple[int, int] = 64,
        num_classes: int = 5,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer (got {num_images!r})")
        shape = (size, size) if isinstance(size, int) else tuple(size)
        if len(shape) != 2 or any(not isinstance(s, int) or s < MIN_SIZE for s in shape):
            raise ValueError(f"size must be an int or (height, width) of ints >= {MIN_SIZE} (got {size!r})")
        if not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_SYNTHETIC_CLASSES:
            raise ValueError(
                f"num_classes must be an integer in [2, {MAX_SYNTHETIC_CLASSES}] (got {num_classes!r})"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer (got {seed!r})")
        names = ["background"]
        names += [f"{class_family(k)[0]} {class_shape(k)}" for k in range(1, num_classes)]
        super().__init__(names, generic_palette(num_classes), transform)
        self.num_images, self.size, self.seed = num_images, shape, seed
        self._rows, self._cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        image = self._background(rng)
        label = np.zeros(self.size, dtype=np.uint8)
        shape_classes = [k for k in range(1, self.num_classes) if class_shape(k) != "line"]
        objects = list(rng.permutation(shape_classes))
        if shape_classes and rng.random() < 0.5:
            objects.append(rng.choice(shape_classes))
        for class_id, (centre, cell) in zip(objects, self._cells(rng, len(objects)), strict=True):
            mask = self._shape_mask(rng, class_shape(class_id), centre, cell)
            self._paint(rng, image, label, mask, class_id)
        for class_id in range(1, self.num_classes):
            if class_shape(class_id) == "line":
                for _ in range(rng.integers(1, 3)):
                    self._paint(rng, image, label, self._line_mask(rng), class_id)
        return np.clip(image, 0, 255).astype(np.uint8), label

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Class 0: a greyish colour, smooth blotches and pixel noise, `float32 [H, W, 3]`."""
        colour = hsv_colour(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.75))
        blotches = 30 * smooth_noise(rng, self.size, cells=4)[..., None]
        tint = 8 * np.stack([smooth_noise(rng, self.size, cells=3) for _ in range(3)], axis=-1)
        noise = rng.normal(0, 7, (*self.size, 3))
        return (colour + blotches + tint + noise).astype(np.float32)

    def _cells(self, rng: np.random.Generator, count: int) -> list[tuple[tuple[float, float], float]]:
        """`count` distinct grid cells in random order: (jittered centre (y, x), cell side)."""
        if count == 0:
            return []
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        height, width = self.size
        cell_h, cell_w = height / rows, width / columns
        cells = []
        for cell in rng.permutation(rows * columns)[:count]:
            y = (cell // columns + 0.5 + rng.uniform(-0.1, 0.1)) * cell_h
            x = (cell % columns + 0.5 + rng.uniform(-0.1, 0.1)) * cell_w
            cells.append(((y, x), min(cell_h, cell_w)))
        return cells

    def _shape_mask(
        self, rng: np.random.Generator, shape: str, centre: tuple[float, float], cell: float
    ) -> np.ndarray:
        """Pixels of a `shape` of random size and rotation at `centre`, inside its grid cell."""
        radius = rng.uniform(0.3, 0.4) * cell
        angle = rng.uniform(0, 2 * math.pi)
        dy, dx = self._rows - centre[0], self._cols - centre[1]
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        distance = np.hypot(u, v)
        if shape == "disk":
            return distance <= radius
        if shape == "square":
            return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * radius
        if shape == "ring":
            return (distance <= radius) & (distance >= 0.55 * radius)
        if shape == "cross":
            arm = 0.3 * radius
            return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(v) <= radius) & (np.abs(u) <= arm))
        sides = [2 * math.pi * side / 3 for side in range(3)]  # triangle: three half-planes
        return np.all([u * math.cos(a) + v * math.sin(a) <= 0.6 * radius for a in sides], axis=0)

    def _line_mask(self, rng: np.random.Generator) -> np.ndarray:
        """A 2-3 px wide segment at least half the scene's shorter side long."""
        height, width = self.size
        scale = np.array([height - 1, width - 1])
        while True:
            start, end = rng.random(2) * scale, rng.random(2) * scale
            if np.hypot(*(end - start)) >= 0.5 * min(height, width):
                break
        direction = (end - start) / np.hypot(*(end - start))
        py, px = self._rows - start[0], self._cols - start[1]
        along = np.clip(py * direction[0] + px * direction[1], 0, np.hypot(*(end - start)))
        distance = np.hypot(py - along * direction[0], px - along * direction[1])
        return distance <= max(1.0, min(height, width) / 64)

    def _paint(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        label: np.ndarray,
        mask: np.ndarray,
        class_id: int,
    ) -> None:
        """Fill `mask` with class `class_id`: its family colour, random stripes and noise."""
        hue = class_family(class_id)[1] + rng.uniform(-0.04, 0.04)
        colour = hsv_colour(hue % 1.0, rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.95))
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 8)
        phase = (self._cols * math.cos(angle) + self._rows * math.sin(angle)) / period
        stripes = rng.uniform(8, 24) * np.sin(2 * math.pi * phase + rng.uniform(0, 2 * math.pi))
        noise = rng.normal(0, 6, (*self.size, 3))
        image[mask] = (colour + stripes[..., None] + noise)[mask]
        label[mask] = class_id


def hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    """An HSV colour (components in [0, 1]) as RGB floats in [0, 255]."""
    return 255 * np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Standard-normal noise on a `(cells + 1)^2` grid, bilinearly upsampled to `size`."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    knots = np.arange(cells + 1)

    def weights(length: int) -> np.ndarray:
        positions = np.linspace(0, cells, length)
        return np.stack([np.interp(positions, knots, np.eye(cells + 1)[k]) for k in knots], axis=1)

    return weights(size[0]) @ grid @ weights(size[1]).T
