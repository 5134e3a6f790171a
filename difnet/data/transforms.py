"""The paper's augmentation (random scale, padded random crop, flip) and whole-image evaluation.

Transforms take `(image, label)` — a PIL image or `uint8 [H, W, C]` array, and an integer
`[H, W]` array — and return `(float32 [C, H, W] normalised, int64 [H, W])` tensors. `C` is
the number of `mean` / `std` values: 3 with ImageNet's (the default), or e.g. 1 (grey) or 4
(RGB-NIR) with statistics of the user's data.
Random draws come from torch's global RNG, so `torch.manual_seed`, DataLoader worker seeding
and a restored RNG state all reproduce the same augmentations.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from difnet.data.palettes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channel counts PIL converts other modes to

ImageLike = Image.Image | np.ndarray
LabelLike = Image.Image | np.ndarray


def as_arrays(image: ImageLike, label: LabelLike, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`(uint8 [H, W, C], integer [H, W])` arrays of an image and its label, checked to match."""
    image = as_image_array(image, channels)
    if isinstance(label, Image.Image):
        label = np.asarray(label)
    if not _is_array(label, 2) or not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"label must be an integer [H, W] array or PIL image (got {_describe(label)})")
    if image.shape[:2] != label.shape:
        raise ValueError(
            f"image is {image.shape[0]}x{image.shape[1]} (HxW) but its label is "
            f"{label.shape[0]}x{label.shape[1]}"
        )
    return image, label


def as_image_array(image: ImageLike, channels: int = 3) -> np.ndarray:
    """A PIL image or `uint8 [H, W, C]` array (`C = channels`) as that array; anything else is
    a `TypeError` (a float image in [0, 1] would otherwise be normalised as if it were 0-255)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert(PIL_MODES[channels]) if channels in PIL_MODES else image)
    if _is_array(image, 2) and channels == 1:
        image = image[..., None]
    if not _is_array(image, 3) or image.dtype != np.uint8 or image.shape[2] != channels:
        raise TypeError(
            f"image must be a PIL image or a uint8 [H, W, {channels}] array (got {_describe(image)})"
        )
    return image


def _is_array(value: object, ndim: int) -> bool:
    """Whether `value` is an `ndim`-dimensional NumPy array."""
    return isinstance(value, np.ndarray) and value.ndim == ndim


def _describe(value: object) -> str:
    """An array's dtype and shape, or another object's type, for error messages."""
    return f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__


def _channel_values(values: Sequence[float], name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError(f"{name} must hold one value per image channel (got {values})")
    return values


def normalize(
    image: ImageLike, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """A PIL or `uint8 [H, W, C]` image as float32 `[C, H, W]`, `(x / 255 - mean) / std`, with
    one `mean` and `std` value per channel."""
    channels = len(mean)
    tensor = torch.from_numpy(np.array(as_image_array(image, channels))).permute(2, 0, 1).float().div_(255)
    return tensor.sub_(torch.tensor(mean).view(channels, 1, 1)).div_(torch.tensor(std).view(channels, 1, 1))


def denormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """A normalised `[3, H, W]` tensor back to a `uint8 [H, W, 3]` picture, for figures."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a [3, H, W] tensor (got {shape})")
    std_, mean_ = torch.tensor(std).view(3, 1, 1), torch.tensor(mean).view(3, 1, 1)
    pixels = image.detach().float().cpu() * std_ + mean_
    return (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A `uint8 [H, W, C]` image resized to `size` (h, w) bilinearly by PIL, channel by channel
    when PIL has no mode for `C` channels."""
    if image.shape[2] == 3:
        return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))
    bands = [Image.fromarray(image[..., c]).resize(size[::-1], Image.Resampling.BILINEAR)
             for c in range(image.shape[2])]  # fmt: skip
    return np.stack([np.asarray(band) for band in bands], axis=-1)


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An integer `[H, W]` label map resized to `size` (h, w) by PIL's nearest neighbour."""
    return np.asarray(Image.fromarray(label).resize(size[::-1], Image.Resampling.NEAREST))


def label_tensor(label: np.ndarray) -> Tensor:
    """An integer `[H, W]` array as the int64 tensor the loss and metrics take."""
    return torch.from_numpy(np.array(label, dtype=np.int64))


def nearest_sources(source: int, target: int) -> np.ndarray:
    """For each of `target` output pixels, the source pixel under its centre (nearest-neighbour
    resize of `source` pixels)."""
    centres = (np.arange(target) + 0.5) * source / target
    return np.minimum(centres.astype(np.int64), source - 1)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _freeze_mean_std(transform: EvalTransform | TrainTransform) -> None:
    """Store a frozen transform's `mean` and `std` as checked floats, one per channel."""
    object.__setattr__(transform, "mean", _channel_values(transform.mean, "mean"))
    object.__setattr__(transform, "std", _channel_values(transform.std, "std"))
    if len(transform.mean) != len(transform.std):
        raise ValueError(
            f"mean and std need one value per channel each (got {transform.mean} and {transform.std})"
        )
    if min(transform.std) <= 0:
        raise ValueError(f"std must be positive (got {transform.std})")


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation on the whole image: no resizing or cropping, only normalisation."""

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        _freeze_mean_std(self)

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        image, label = as_arrays(image, label, len(self.mean))
        return normalize(image, self.mean, self.std), label_tensor(label)


@dataclass(frozen=True)
class TrainTransform:
    """The paper's training augmentation: random scale in `scale_range` (bilinear for the image,
    nearest for the label), a random `crop_size` crop of the image padded at its bottom and
    right with the mean colour (label: 255 = ignore) when smaller, and a random horizontal flip."""

    crop_size: int | tuple[int, int] = 321
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        _freeze_mean_std(self)
        crop = self.crop_size
        pair = tuple(crop) if isinstance(crop, tuple | list) else (crop, crop)
        if len(pair) != 2 or not all(_is_positive_int(c) for c in pair):
            raise ValueError(f"crop_size must be a positive int or an (h, w) pair of them (got {crop!r})")
        object.__setattr__(self, "crop_size", (int(pair[0]), int(pair[1])))
        try:
            low, high = (float(s) for s in self.scale_range)
        except (TypeError, ValueError):
            low, high = 0.0, 0.0
        if not 0 < low <= high:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high (got {self.scale_range!r})"
            )
        object.__setattr__(self, "scale_range", (low, high))

    def __call__(self, image: ImageLike, label: LabelLike) -> tuple[Tensor, Tensor]:
        image, label = self.rescale(*as_arrays(image, label, len(self.mean)))
        image, label = self.crop(image, label)
        if self.flip and bool(torch.rand(()) < 0.5):
            image, label = image[:, ::-1], label[:, ::-1]
        return normalize(image, self.mean, self.std), label_tensor(label)

    def rescale(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both resized by one factor drawn uniformly from `scale_range`."""
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        height, width = label.shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size == label.shape:
            return image, label
        rows, cols = nearest_sources(height, size[0]), nearest_sources(width, size[1])
        return resize_bilinear(image, size), label[rows[:, None], cols[None, :]]

    def crop(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A random `crop_size` window, after padding the image with the mean colour and the
        label with 255 up to at least the crop size."""
        crop_h, crop_w = self.crop_size
        height, width = label.shape
        padded_h, padded_w = max(height, crop_h), max(width, crop_w)
        if (padded_h, padded_w) != (height, width):
            fill = np.round(np.asarray(self.mean) * 255).astype(np.uint8)
            padded_image = np.empty((padded_h, padded_w, image.shape[2]), dtype=np.uint8)
            padded_image[:] = fill
            padded_image[:height, :width] = image
            dtype = np.promote_types(label.dtype, np.uint8)
            padded_label = np.full((padded_h, padded_w), IGNORE_INDEX, dtype=dtype)
            padded_label[:height, :width] = label
            image, label = padded_image, padded_label
        top = int(torch.randint(padded_h - crop_h + 1, ()))
        left = int(torch.randint(padded_w - crop_w + 1, ()))
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        return image[window], label[window]
