"""The one search both refinement fits run: every candidate setting scored by mIoU on images the
scores are not taken on, from one pass of the model over each image."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from difnet.data.palettes import IGNORE_INDEX
from difnet.metrics import ConfusionMatrix

FitSetting = TypeVar("FitSetting")
# one image `[1, C, H, W]` and its labels' `(H, W)` -> the model's scores and each setting's refined
# scores `[1, K, H, W]`, all at the labels' size
ImageScorer = Callable[[Tensor, tuple[int, int]], tuple[Tensor, Iterable[tuple[FitSetting, Tensor]]]]


@dataclass
class SettingFit(Generic[FitSetting]):
    """The setting chosen among those tried (`scores`, each with its mIoU as a fraction) and the
    mIoU of the model as it was; `to_dict` names the choice `label`."""

    chosen: FitSetting
    model_miou: float
    scores: list[tuple[FitSetting, float]]
    label: ClassVar[str] = "setting"

    @property
    def best_miou(self) -> float:
        return max(score for _, score in self.scores)

    def to_dict(self) -> dict:
        """Plain-typed values, for JSON."""
        return {
            self.label: asdict(self.chosen),
            "model_miou": self.model_miou,
            "best_miou": self.best_miou,
            "tried": [{**asdict(setting), "miou": score} for setting, score in self.scores],
        }


def cheapest_within(
    scores: Sequence[tuple[FitSetting, float]], tolerance: float, cost: Callable[[FitSetting], float]
) -> FitSetting:
    """The setting of least `cost` among those `scores` puts within `tolerance` (mIoU, a fraction)
    of the best, the better scored on equal cost: speed bought with at most that much fit mIoU."""
    best = max(score for _, score in scores)
    return min(
        (pair for pair in scores if pair[1] >= best - tolerance), key=lambda pair: (cost(pair[0]), -pair[1])
    )[0]


@torch.no_grad()
def fit_setting(
    dataset: Sequence[tuple[Tensor, Tensor]],
    settings: Sequence[FitSetting],
    refine: ImageScorer,
    *,
    tolerance: float = 0.0,
    cost: Callable[[FitSetting], float] | None = None,
) -> tuple[FitSetting, float, list[tuple[FitSetting, float]]]:
    """The setting of `settings` with the best mIoU on `dataset` (`(image, label)` pairs with
    `num_classes`), the model's own mIoU and every setting's, with `refine` scoring each image
    (the first best on a tie); with a `tolerance` and a `cost`, the cheapest within `tolerance` of
    the best instead (`cheapest_within`)."""
    if tolerance < 0 or (tolerance > 0 and cost is None):
        raise ValueError(f"tolerance must be at least 0, and a positive one needs a cost (got {tolerance!r})")
    if not settings:
        raise ValueError("a fit needs at least one setting to try")
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"dataset {type(dataset).__name__} has no num_classes attribute")
    confusion = partial(ConfusionMatrix, num_classes, getattr(dataset, "ignore_index", IGNORE_INDEX))
    alone, matrices = confusion(), {setting: confusion() for setting in settings}
    for image, label in dataset:
        label = label[None]
        scores, refined = refine(image[None], tuple(label.shape[-2:]))
        alone.update(scores.argmax(1).cpu(), label)
        for setting, walked in refined:
            matrices[setting].update(walked.argmax(1).cpu(), label)
    scored = [(setting, matrices[setting].compute().miou) for setting in settings]
    chosen = (
        cheapest_within(scored, tolerance, cost) if tolerance else max(scored, key=lambda pair: pair[1])[0]
    )
    return chosen, alone.compute().miou, scored
