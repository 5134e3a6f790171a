"""Evaluation the way papers report it: whole images, optional multi-scale and flip averaging,
and a confusion matrix over the whole split (summed over processes under DDP)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from difnet.devices import resolve_device
from difnet.metrics import ConfusionMatrix, SegmentationMetrics
from difnet.models.validation import MIN_IMAGE_SIZE


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """`scales` as a non-empty tuple of positive floats, or a `ValueError` naming the bad one."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales must hold at least one scale factor (e.g. 1.0)")
    bad = [s for s in scales if not s > 0]
    if bad:
        raise ValueError(f"scales must be positive (got {bad[0]})")
    return scales


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """Class probabilities `[B, K, H, W]` of `images` `[B, 3, H, W]`, averaged over the image
    resized by each of `scales` (bilinear) and, with `flip`, its mirror image.

    Averaging probabilities rather than logits keeps one overconfident scale from dominating.
    """
    scales = check_scales(scales)
    size = images.shape[-2:]
    total = None
    for scale in scales:
        scaled_size = [max(1, round(s * scale)) for s in size]
        if scale != 1.0 and min(scaled_size) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"scale {scale} shrinks the {size[0]}x{size[1]} image below "
                f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels; drop that scale"
            )
        scaled = images if scale == 1.0 else _resize(images, scaled_size)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            probabilities = _resize(model(view).float(), size).softmax(1)
            probabilities = probabilities.flip(-1) if index == 1 else probabilities
            total = probabilities if total is None else total + probabilities
    return total / (len(scales) * (2 if flip else 1))


def _resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


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
        for name, iou, accuracy in zip(
            self.class_names, m.per_class_iou, m.per_class_accuracy, strict=True
        ):
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


def _shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Every `world_size`-th item starting at `rank`, so processes split the split exactly."""
    if world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))


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
) -> EvaluationResult:
    """mIoU, per-class IoU and accuracies of `model` on every whole image of `dataset`.

    The dataset must yield `(image [3, H, W], label [H, W])` with 255 = ignore and carry
    `num_classes` and `class_names`. Under torch.distributed each process evaluates its share
    and the confusion matrices are summed, so every process returns the whole split's metrics.
    """
    scales = check_scales(scales)
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"dataset {type(dataset).__name__} has no num_classes attribute")
    model_classes = getattr(model, "num_classes", num_classes)
    if model_classes != num_classes:
        raise ValueError(
            f"the model predicts {model_classes} classes but the dataset has {num_classes}"
        )
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    loader = DataLoader(_shard(dataset, rank, world_size), batch_size=1, num_workers=workers)
    was_training = model.training
    device = resolve_device(device)
    model.eval().to(device)
    confusion = ConfusionMatrix(num_classes, getattr(dataset, "ignore_index", 255))
    for image, label in tqdm(
        loader, desc="evaluate", unit="image", disable=not progress or rank != 0, leave=False
    ):
        probabilities = predict_probabilities(model, image.to(device), scales, flip)
        confusion.update(probabilities.argmax(1).cpu(), label)
    confusion.all_reduce()
    model.train(was_training)
    return EvaluationResult(confusion.compute(), list(dataset.class_names), scales, flip)
