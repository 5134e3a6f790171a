"""A random walk on the image itself, after any model: its class probabilities diffused between
nearby pixels of similar colour, on a grid finer than the model's output stride.

`BilateralWalk` is `difnet.diffusion.guided.GuidedWalk` at a fixed setting, with no weights to train:
`fit_bilateral_walk` picks the setting on images the scores are not taken on, and
`difnet.refinement.RefinedModel` puts it after a model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from difnet.diffusion.guided import (
    DEFAULT_COLOUR_SIGMA,
    DEFAULT_MU,
    DEFAULT_POSITION_SIGMA,
    DEFAULT_RADIUS,
    DEFAULT_STEPS,
    DEFAULT_STRIDE,
    GuidedWalk,
    check_walk_settings,
    walk_grid,
)
from difnet.diffusion.walks import DEFAULT_SOLVER, walk_products
from difnet.models.heads import upsample
from difnet.refinement.fitting import SettingFit, fit_setting


@dataclass(frozen=True)
class BilateralWalk:
    """`steps` walk steps with restart weight `mu` on the image pooled by `stride`, between pixels
    within `radius` cells; `colour_sigma` is in the input's normalised units, `position_sigma`
    in grid cells. The defaults are what the fits on CamVid's training frames chose most often.
    `solver` "chebyshev" computes long walks as their Chebyshev series (the same probabilities to
    ~1e-5, fewer products), "steps" step by step (`difnet.diffusion.guided`)."""

    stride: int = DEFAULT_STRIDE
    radius: int = DEFAULT_RADIUS
    steps: int = DEFAULT_STEPS
    colour_sigma: float = DEFAULT_COLOUR_SIGMA
    position_sigma: float = DEFAULT_POSITION_SIGMA
    mu: float = DEFAULT_MU
    solver: str = DEFAULT_SOLVER

    def __post_init__(self) -> None:
        check_walk_settings("BilateralWalk", **asdict(self))

    def grid(self, size: Sequence[int]) -> tuple[int, int]:
        """The walk's `(h, w)` grid for an input of `size`: `ceil(size / stride)`."""
        return walk_grid(size, self.stride)

    def walker(self, channels: int) -> GuidedWalk:
        """This setting as a `GuidedWalk` on images of `channels` channels, its weights fixed."""
        return GuidedWalk(channels, **asdict(self)).requires_grad_(False)

    @property
    def cost(self) -> float:
        """Multiply-adds a pixel and class: the `(2r + 1)^2` entries of each of the products `P y`
        the solver takes, on a grid `stride^2` times coarser (what fits trade against mIoU)."""
        return walk_products(self.mu, self.steps, self.solver) * (2 * self.radius + 1) ** 2 / self.stride**2

    def guide_features(self, images: Tensor) -> Tensor:
        """Node features `[B, N, C + 2]` whose negative squared distances are the kernel's logits."""
        return self.walker(images.shape[1]).features(images)

    def __call__(self, probabilities: Tensor, images: Tensor) -> Tensor:
        """Diffuse `probabilities` `[B, K, H, W]` along `images` `[B, C, H, W]`; returns `[B, K, H, W]`."""
        return next(self.states(probabilities, images, [self.steps]))[1]

    def states(
        self, probabilities: Tensor, images: Tensor, steps: Iterable[int]
    ) -> Iterator[tuple[int, Tensor]]:
        """`(n, walked)` after each of `steps` walk steps (this setting's own `steps` ignored): the
        settings that differ only in `steps` share one walk."""
        if probabilities.dim() != 4 or images.dim() != 4:
            raise ValueError(
                "probabilities and images must be [B, K, H, W] and [B, C, H, W] "
                f"(got shapes {tuple(probabilities.shape)} and {tuple(images.shape)})"
            )
        if probabilities.shape[0] != images.shape[0] or probabilities.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                "probabilities and images must share batch size and (H, W) "
                f"(got shapes {tuple(probabilities.shape)} and {tuple(images.shape)})"
            )
        walker = self.walker(images.shape[1])
        for n, walked in walker.states(probabilities.float(), images.float(), steps):
            yield n, upsample(walked, probabilities.shape[-2:])


def bilateral_grid(
    colour_sigmas: Iterable[float] = (0.05, 0.1, 0.2),
    position_sigmas: Iterable[float] = (1.0, 2.0, 4.0),
    mus: Iterable[float] = (0.8, 0.9, 0.97),
    steps: Iterable[int] = (2, 5, 15),
    *,
    stride: int = 2,
    radius: int = 3,
) -> list[BilateralWalk]:
    """Every combination of the given values: the settings `fit_bilateral_walk` searches."""
    return [
        BilateralWalk(stride, radius, n, colour, position, mu)
        for colour, position, mu, n in itertools.product(colour_sigmas, position_sigmas, mus, steps)
    ]


class BilateralFit(SettingFit[BilateralWalk]):
    """`fit_bilateral_walk`'s result: the chosen `walk`."""

    label: ClassVar[str] = "walk"

    @property
    def walk(self) -> BilateralWalk:
        return self.chosen


def fit_bilateral_walk(
    model: nn.Module,
    dataset: Sequence[tuple[Tensor, Tensor]],
    settings: Sequence[BilateralWalk],
    *,
    device: str | torch.device = "cpu",
    tolerance: float = 0.0,
) -> BilateralFit:
    """The setting in `settings` with the best mIoU on `dataset` (`(image, label)` pairs at the
    model's input size, with `num_classes` as `difnet.evaluate` takes), from one pass of the model
    over it; the walks run on the CPU. With a `tolerance` (mIoU, a fraction), the cheapest setting
    (`BilateralWalk.cost`) within it of the best."""
    model.eval()
    groups: dict[BilateralWalk, list[int]] = {}  # settings that differ only in steps share one walk
    for walk in settings:
        groups.setdefault(replace(walk, steps=1), []).append(walk.steps)

    def refine(image: Tensor, size: tuple[int, int]) -> tuple[Tensor, Iterator[tuple[BilateralWalk, Tensor]]]:
        probabilities = model(image.to(device)).float().softmax(1).cpu()
        walked = ((replace(base, steps=n), p) for base, steps in groups.items()
                  for n, p in base.states(probabilities, image, steps))  # fmt: skip
        return probabilities, walked

    return BilateralFit(
        *fit_setting(dataset, settings, refine, tolerance=tolerance, cost=lambda walk: walk.cost)
    )
