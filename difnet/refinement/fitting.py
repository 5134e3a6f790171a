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


@torch.no_grad()
def fit_setting(
    dataset: Sequence[tuple[Tensor, Tensor]], settings: Sequence[FitSetting], refine: ImageScorer
) -> tuple[FitSetting, float, list[tuple[FitSetting, float]]]:
    """The setting of `settings` with the best mIoU on `dataset` (`(image, label)` pairs with
    `num_classes`), the model's own mIoU and every setting's, with `refine` scoring each image
    (the first best on a tie)."""
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
    return max(scored, key=lambda pair: pair[1])[0], alone.compute().miou, scored
