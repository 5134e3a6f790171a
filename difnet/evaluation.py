"""Evaluation the way papers report it: whole images, optional multi-scale and flip averaging,
and a confusion matrix over the whole split (summed over processes under DDP). For images too
large for one pass, sliding windows (mmseg's placement, overlaps averaged) or a size cap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from difnet.data.palettes import IGNORE_INDEX
from difnet.devices import resolve_device
from difnet.metrics import ConfusionMatrix, SegmentationMetrics
from difnet.models.heads import upsample
from difnet.models.validation import MIN_IMAGE_SIZE, check_finite
from difnet.progress import progress_bar


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """`scales` as a non-empty tuple of positive floats, or a `ValueError` naming the bad one."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales must hold at least one scale factor (e.g. 1.0)")
    bad = [s for s in scales if not s > 0]
    if bad:
        raise ValueError(f"scales must be positive (got {bad[0]})")
    return scales


@dataclass(frozen=True)
class SlidingWindow:
    """Predict `size` (h, w) windows every `stride` (h, w) pixels instead of the whole image.

    Windows are placed as mmseg places them: a grid of `ceil((H - h) / stride_h) + 1` rows (and
    likewise columns), the last row and column shifted back inside the image; overlapping
    windows' probabilities are averaged. DifNet then diffuses within each window only.
    """

    size: tuple[int, int]
    stride: tuple[int, int]

    def __post_init__(self) -> None:
        for name, pair, minimum in (("window", self.size, MIN_IMAGE_SIZE), ("stride", self.stride, 1)):
            if len(pair) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair
            ):
                raise ValueError(f"{name} must be two integers >= {minimum} (got {pair!r})")
        if any(step > side for step, side in zip(self.stride, self.size, strict=True)):
            raise ValueError(
                f"stride {tuple(self.stride)} is longer than the window {tuple(self.size)}: it would leave "
                "pixels no window covers; use a stride at most the window's size"
            )

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """`(top, bottom, left, right)` of every window over a `height` x `width` image."""
        (window_h, window_w), (stride_h, stride_w) = self.size, self.stride
        rows = max(height - window_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - window_w + stride_w - 1, 0) // stride_w + 1
        boxes = []
        for row in range(rows):
            for col in range(cols):
                bottom = min(row * stride_h + window_h, height)
                right = min(col * stride_w + window_w, width)
                boxes.append((max(bottom - window_h, 0), bottom, max(right - window_w, 0), right))
        return boxes


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    *,
    window: SlidingWindow | None = None,
    max_size: int | None = None,
    input_size: Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities `[B, K, H, W]` of `images` `[B, C, H, W]`, averaged over the image
    resized by each of `scales` (bilinear) and, with `flip`, its mirror image.

    Averaging probabilities rather than logits keeps one overconfident scale from dominating.
    `window` predicts each view by sliding windows; `input_size` `(h, w)` first resizes the
    images to it (the size the model was trained at), `max_size` shrinks an image whose longer
    side exceeds it; either way the probabilities are resized back to the input's size.
    """
    scales = check_scales(scales)
    check_finite(images)
    size = images.shape[-2:]
    if input_size is not None and tuple(size) != tuple(input_size):
        resized = upsample(images, input_size)
        return upsample(
            predict_probabilities(model, resized, scales, flip, window=window, max_size=max_size), size
        )
    if max_size is not None and max(size) > max_size:
        shrink = max_size / max(size)
        shrunk = upsample(images, [max(1, round(s * shrink)) for s in size])
        return upsample(predict_probabilities(model, shrunk, scales, flip, window=window), size)
    total = None
    for scale in scales:
        scaled_size = [max(1, round(s * scale)) for s in size]
        if scale != 1.0 and min(scaled_size) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"scale {scale} shrinks the {size[0]}x{size[1]} image below "
                f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels; drop that scale"
            )
        scaled = images if scale == 1.0 else upsample(images, scaled_size)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            probabilities = upsample(_view_probabilities(model, view, window), size)
            probabilities = probabilities.flip(-1) if index == 1 else probabilities
            total = probabilities if total is None else total + probabilities
    return total / (len(scales) * (2 if flip else 1))


def _view_probabilities(model: nn.Module, view: Tensor, window: SlidingWindow | None) -> Tensor:
    """Probabilities of one view, from the whole image or averaged over sliding windows."""
    if window is None:
        return model(view).float().softmax(1)
    total = count = None
    for top, bottom, left, right in window.boxes(*view.shape[-2:]):
        probabilities = model(view[..., top:bottom, left:right]).float().softmax(1)
        if total is None:
            total = probabilities.new_zeros((*probabilities.shape[:2], *view.shape[-2:]))
            count = probabilities.new_zeros(view.shape[-2:])
        total[..., top:bottom, left:right] += probabilities
        count[top:bottom, left:right] += 1
    return total / count


@dataclass
class EvaluationResult:
    """The metrics of one evaluation, the class names they refer to and how it was run."""

    metrics: SegmentationMetrics
    class_names: list[str]
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def format_table(self) -> str:
        """Per-class IoU and accuracy, then the summary metrics, as a markdown table in %."""
        m = self.metrics
        lines = ["| class | IoU | accuracy |", "|---|---|---|"]
        for name, iou, accuracy in zip(self.class_names, m.per_class_iou, m.per_class_accuracy, strict=True):
            lines.append(f"| {name} | {percent(iou)} | {percent(accuracy)} |")
        lines += [
            f"| **mIoU** | {percent(m.miou)} | |",
            f"| pixel accuracy | {percent(m.pixel_accuracy)} | |",
            f"| mean class accuracy | {percent(m.mean_class_accuracy)} | |",
        ]
        views = f"scales {', '.join(f'{s:g}' for s in self.scales)}" + (", flip" if self.flip else "")
        return "\n".join(lines) + f"\n\n{m.num_pixels} labelled pixels; {views}"

    def to_dict(self) -> dict:
        """Plain-typed values for JSON: metrics, class names and the inference settings."""
        return {
            "metrics": self.metrics.to_dict(),
            "class_names": list(self.class_names),
            "scales": list(self.scales),
            "flip": self.flip,
        }


def percent(value: float | None, digits: int = 2) -> str:
    """A metric in [0, 1] as a percentage; `None` (class absent from the data) as a dash."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _shard(dataset: Dataset, rank: int, world_size: int, limit: int | None = None) -> Dataset:
    """Every `world_size`-th item of the first `limit` (all: None) starting at `rank`, so
    processes split the evaluated items exactly."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if world_size == 1 and count == len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(rank, count, world_size))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
    window: SlidingWindow | None = None,
    max_size: int | None = None,
    input_size: Sequence[int] | None = None,
    limit: int | None = None,
) -> EvaluationResult:
    """mIoU, per-class IoU and accuracies of `model` on every whole image of `dataset` (on its
    first `limit` images when given, for a quick check).

    The dataset must yield `(image [3, H, W], label [H, W])` with 255 = ignore and carry
    `num_classes` and `class_names`. Scores are taken at the labels' size; `input_size` runs
    the model on images resized to it, the probabilities resized back (mmseg's protocol). Under torch.distributed each process evaluates its share
    and the confusion matrices are summed, so every process returns the whole split's metrics.
    """
    scales = check_scales(scales)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of images (got {limit!r})")
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"dataset {type(dataset).__name__} has no num_classes attribute")
    model_classes = getattr(model, "num_classes", num_classes)
    if model_classes != num_classes:
        raise ValueError(f"the model predicts {model_classes} classes but the dataset has {num_classes}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    loader = DataLoader(_shard(dataset, rank, world_size, limit), batch_size=1, num_workers=workers)
    was_training = model.training
    device = resolve_device(device)
    model.eval().to(device)
    confusion = ConfusionMatrix(num_classes, getattr(dataset, "ignore_index", IGNORE_INDEX))
    for image, label in progress_bar(
        loader, enabled=progress and rank == 0, desc="evaluate", unit="image", leave=False
    ):
        probabilities = predict_probabilities(
            model, image.to(device), scales, flip, window=window, max_size=max_size, input_size=input_size
        )
        confusion.update(probabilities.argmax(1).cpu(), label)
    confusion.all_reduce()
    model.train(was_training)
    return EvaluationResult(confusion.compute(), list(dataset.class_names), scales, flip)
