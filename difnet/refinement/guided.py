"""The guided walk's stride, step count and restart weight picked by mIoU on images the scores are
not taken on, by the same search (`difnet.refinement.fitting`) as a bilateral walk's.

Training with cross-entropy hardly moves these settings in a second stage of a few epochs (and, at
a higher rate, moves them towards less smoothing than mIoU prefers); the step count and the stride
are not trained at all. The learned colour map, position scale and guide projection are kept.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from difnet.diffusion.guided import GuidedWalk, check_walk_settings
from difnet.models.difnet import DifNet
from difnet.models.heads import upsample
from difnet.refinement.fitting import SettingFit, fit_setting


@dataclass(frozen=True)
class GuidedSetting:
    """The guided walk's grid (`stride`), its number of `steps` and its restart weight `mu`."""

    stride: int
    steps: int
    mu: float

    def __post_init__(self) -> None:
        check_walk_settings("GuidedSetting", **asdict(self))

    @classmethod
    def from_model(cls, model: DifNet) -> GuidedSetting:
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
    own = GuidedSetting.from_model(model)
    settings = list(dict.fromkeys([own, *(guided_grid() if settings is None else settings)]))
    model.eval().to(device)
    groups: dict[tuple[int, float], list[int]] = {}  # settings that differ in steps share one walk
    for setting in settings:
        groups.setdefault((setting.stride, setting.mu), []).append(setting.steps)
    walks = {key: walk.copy_with(*key) for key in groups}

    def refine(image: Tensor, size: tuple[int, int]) -> tuple[Tensor, Iterator[tuple[GuidedSetting, Tensor]]]:
        out = model(image.to(device), intermediates=True)
        start = out.walks[-1].float().softmax(1)
        walked = ((GuidedSetting(stride, n, mu), upsample(p, size)) for (stride, mu), steps in groups.items()
                  for n, p in walks[stride, mu].states(start, image.to(device), steps, out.guide))  # fmt: skip
        return out.logits, walked

    return GuidedFit(*fit_setting(dataset, settings, refine))
