"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel and class accuracy.

Pixels labelled `ignore_index` (255) are not counted. A class that appears in neither the
ground truth nor the predictions has no IoU: its entry is `None` (not NaN, so results stay
valid JSON) and the mean is over the other classes. A class predicted but absent from the
ground truth counts with IoU 0. Class accuracy is likewise `None` for classes without
ground-truth pixels, and averaged over the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metric values as fractions in [0, 1] (`None`: undefined for an absent class)."""

    miou: float
    per_class_iou: list[float | None]
    pixel_accuracy: float
    mean_class_accuracy: float
    per_class_accuracy: list[float | None]
    num_pixels: int

    def to_dict(self) -> dict:
        """Plain-typed values, for JSON."""
        return asdict(self)


class ConfusionMatrix:
    """Counts of (ground-truth class, predicted class) pixel pairs, accumulated over batches.

    `matrix[t, p]` is the number of pixels of class `t` predicted as `p`. Under
    DistributedDataParallel, call `all_reduce()` once after the last `update` so every process
    holds the counts of the whole dataset.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer (got {num_classes!r})")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a class id; it must lie outside [0, {num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every counted pixel."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count predicted class ids `pred` against labels `target`, both e.g. `[B, H, W]`."""
        for name, tensor in (("pred", pred), ("target", target)):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor (got {type(tensor).__name__})")
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                hint = "; pass logits.argmax(1)" if name == "pred" else ""
                raise TypeError(f"{name} must hold integer class ids (got dtype {tensor.dtype}){hint}")
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target must have the same shape (got {tuple(pred.shape)} "
                f"and {tuple(target.shape)})"
            )
        valid = target != self.ignore_index
        pred, target = pred[valid].long(), target[valid].long()
        self._check_range(pred, "pred", "")
        self._check_range(target, "target", f" and {self.ignore_index} (ignore)")
        k = self.num_classes
        counts = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def _check_range(self, values: Tensor, name: str, allowed: str) -> None:
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"{name} holds values {bad.unique()[:10].tolist()} outside [0, {self.num_classes}){allowed}"
            )

    def all_reduce(self) -> None:
        """Sum the counts over all processes of the default group (no-op when not distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = self.matrix.device
        if dist.get_backend() == "nccl" and device.type != "cuda":
            counts = self.matrix.to(torch.device("cuda", torch.cuda.current_device()))
        else:
            counts = self.matrix
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self.matrix = counts.to(device)

    def compute(self) -> SegmentationMetrics:
        """The metrics of every pixel counted so far."""
        matrix = self.matrix.double().cpu()
        total = int(self.matrix.sum())
        if total == 0:
            raise ValueError(
                "no labelled pixels were counted: call update() with targets that are not all "
                f"{self.ignore_index} (ignore) before compute()"
            )
        hits = matrix.diag()
        truth, predicted = matrix.sum(1), matrix.sum(0)
        union = truth + predicted - hits
        iou = [float(h / u) if u > 0 else None for h, u in zip(hits, union, strict=True)]
        accuracy = [float(h / t) if t > 0 else None for h, t in zip(hits, truth, strict=True)]
        return SegmentationMetrics(
            miou=mean_of_defined(iou),
            per_class_iou=iou,
            pixel_accuracy=float(hits.sum()) / total,
            mean_class_accuracy=mean_of_defined(accuracy),
            per_class_accuracy=accuracy,
            num_pixels=total,
        )


def mean_of_defined(values: list[float | None]) -> float:
    """The mean of the values that are not `None` (at least one is, after a counted pixel)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined)
