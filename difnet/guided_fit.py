"""The guided walk's stride, step count and restart weight picked by mIoU on images the scores are
not taken on, as `difnet.refinement.fit_bilateral_walk` picks a bilateral walk's.

Training with cross-entropy hardly moves these settings in a second stage of a few epochs (and, at
a higher rate, moves them towards less smoothing than mIoU prefers); the step count and the stride
are not trained at all. The learned colour map, position scale and guide projection are kept.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import Tensor

from difnet.data.palettes import IGNORE_INDEX
from difnet.guided_walk import GuidedWalk, check_walk_settings
from difnet.metrics import ConfusionMatrix
from difnet.models.difnet import DifNet
from difnet.models.heads import upsample
from difnet.refinement import SettingFit


@dataclass(frozen=True)
class GuidedSetting:
    """The guided walk's grid (`stride`), its number of `steps` and its restart weight `mu`."""

    stride: int
    steps: int
    mu: float

    def __post_init__(self) -> None:
        check_walk_settings("GuidedSetting", **asdict(self))

    @classmethod
    def of(cls, model: DifNet) -> GuidedSetting:
        """`model`'s own setting, with its learned `mu` (in float64, kept inside (0, 1) where a
        rounded sigmoid would reach an end)."""
        walk = guided_walk_of(model)
        mu = float(torch.sigmoid(walk.raw_mu.detach().double()))
        return cls(walk.stride, walk.steps, min(max(mu, math.ulp(0.0)), math.nextafter(1.0, 0.0)))


def guided_walk_of(model: DifNet) -> GuidedWalk:
    """`model`'s guided walk; a `ValueError` if it has none."""
    if not isinstance(model, DifNet) or model.head.guided_walk is None:
        raise ValueError(
            f"the model must be a DifNet with a guided walk (built with guided_walk_stride; got "
            f"{type(model).__name__}{'' if not isinstance(model, DifNet) else ' without one'})"
        )
    return model.head.guided_walk


def guided_grid(
    strides: Iterable[int] = (1, 2),
    mus: Iterable[float] = (0.97, 0.99),
    steps: Iterable[int] = (15, 30, 60, 100),
) -> list[GuidedSetting]:
    """Every combination of the given values: the settings `fit_guided_walk` searches by default."""
    return [GuidedSetting(stride, n, mu) for stride, mu, n in itertools.product(strides, mus, steps)]


class GuidedFit(SettingFit[GuidedSetting]):
    """`fit_guided_walk`'s result: the chosen `setting`."""

    @property
    def setting(self) -> GuidedSetting:
        return self.chosen


def walk_at(walk: GuidedWalk, stride: int, mu: float) -> GuidedWalk:
    """A copy of `walk` on the grid of `stride` with restart weight `mu`, its other weights equal
    (its position scale and radius count grid cells, so a finer grid also narrows its reach)."""
    check_walk_settings("walk_at", stride=stride)
    moved = copy.deepcopy(walk)
    moved.stride = stride
    moved.set_mu(mu)
    return moved


@torch.no_grad()
def fit_guided_walk(
    model: DifNet,
    dataset: Sequence[tuple[Tensor, Tensor]],
    settings: Sequence[GuidedSetting] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> GuidedFit:
    """The setting with the best mIoU on `dataset` (`(image, label)` pairs, with `num_classes`)
    among `settings` (default `guided_grid()`) and the model's own, from one pass of the model's
    cascade over each image. The model's weights and setting are left as they were (it is put in
    eval mode on `device`): apply the choice with `model.set_guided_walk(**asdict(fit.setting))`.
    The position scale and radius count grid cells, so stride 1 also halves stride 2's reach."""
    walk = guided_walk_of(model)
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"dataset {type(dataset).__name__} has no num_classes attribute")
    own = GuidedSetting.of(model)
    settings = list(dict.fromkeys([own, *(guided_grid() if settings is None else settings)]))
    model.eval().to(device)
    confusion = partial(ConfusionMatrix, num_classes, getattr(dataset, "ignore_index", IGNORE_INDEX))
    alone, matrices = confusion(), {setting: confusion() for setting in settings}
    groups: dict[tuple[int, float], list[int]] = {}  # settings that differ in steps share one walk
    for setting in settings:
        groups.setdefault((setting.stride, setting.mu), []).append(setting.steps)
    walks = {key: walk_at(walk, *key) for key in groups}
    for image, label in dataset:
        image, label = image[None].to(device), label[None]
        out = model(image, intermediates=True)
        alone.update(out.logits.argmax(1).cpu(), label)
        start = out.walks[-1].float().softmax(1)
        for (stride, mu), steps in groups.items():
            for n, walked in walks[stride, mu].states(start, image, steps, out.guide):
                matrices[GuidedSetting(stride, n, mu)].update(
                    upsample(walked, label.shape[-2:]).argmax(1).cpu(), label
                )
    scores = [(setting, matrices[setting].compute().miou) for setting in settings]
    return GuidedFit(max(scores, key=lambda pair: pair[1])[0], alone.compute().miou, scores)
