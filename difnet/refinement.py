"""A random walk on the image itself: any model's class probabilities diffused between nearby
pixels of similar colour, on a grid finer than the model's output stride.

DifNet's learned walks run on the seed's stride-8 grid, on features learned from the same images
as the seed, and on CamVid they echo the seed. The image's own edges at stride 2 are what a
stride-8 seed lacks. `BilateralWalk` is the walk with restart `y <- mu P y + (1 - mu) s` of
`difnet.diffusion`, whose `P` is the local distance kernel on guide features
`[colour / colour_sigma, position / position_sigma] / sqrt(2)`, so that
`P_ij ~ exp(-|c_i - c_j|^2 / (2 colour_sigma^2) - |p_i - p_j|^2 / (2 position_sigma^2))` for
pixels within `radius` cells. Colours are the model's normalised input; positions are grid cells.
It has no weights: `fit_bilateral_walk` picks its setting on images the scores are not taken on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difnet.data.palettes import IGNORE_INDEX
from difnet.diffusion import TransitionKernel, flatten_nodes, propagate, unflatten_nodes, walk_step
from difnet.metrics import ConfusionMatrix
from difnet.models.heads import upsample


@dataclass(frozen=True)
class BilateralWalk:
    """`steps` walk steps with restart weight `mu` on the image pooled by `stride`, between pixels
    within `radius` cells; `colour_sigma` is in the input's normalised units, `position_sigma`
    in grid cells. The defaults are what the fits on CamVid's training frames chose most often."""

    stride: int = 2
    radius: int = 3
    steps: int = 15
    colour_sigma: float = 0.1
    position_sigma: float = 2.0
    mu: float = 0.97

    def __post_init__(self) -> None:
        for name in ("stride", "radius", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BilateralWalk {name} must be a positive integer (got {value!r})")
        for name in ("colour_sigma", "position_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"BilateralWalk {name} must be a positive number (got {value!r})")
        if isinstance(self.mu, bool) or not isinstance(self.mu, int | float) or not 0 < self.mu < 1:
            raise ValueError(f"BilateralWalk mu must lie strictly between 0 and 1 (got {self.mu!r})")

    def grid(self, size: Sequence[int]) -> tuple[int, int]:
        """The walk's `(h, w)` grid for an input of `size`: `ceil(size / stride)`."""
        return (-(-int(size[0]) // self.stride), -(-int(size[1]) // self.stride))

    def guide_features(self, images: Tensor) -> Tensor:
        """Node features `[B, N, C + 2]` whose negative squared distances are the kernel's logits."""
        grid = self.grid(images.shape[-2:])
        colours = F.adaptive_avg_pool2d(images.float(), grid) / self.colour_sigma
        rows, columns = torch.meshgrid(
            torch.arange(grid[0], dtype=colours.dtype, device=colours.device),
            torch.arange(grid[1], dtype=colours.dtype, device=colours.device),
            indexing="ij",
        )
        positions = torch.stack([rows, columns]).expand(images.shape[0], -1, -1, -1) / self.position_sigma
        return flatten_nodes(torch.cat([colours, positions], dim=1)) / math.sqrt(2)

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
        grid = self.grid(images.shape[-2:])
        features = self.guide_features(images)
        kernel = TransitionKernel("distance", self.radius)
        seed = flatten_nodes(F.adaptive_avg_pool2d(probabilities.float(), grid))
        walked, taken = seed, 0
        for wanted in sorted(set(steps)):
            for _ in range(wanted - taken):
                walked = walk_step(
                    propagate(features, walked, kernel=kernel, grid=grid), walked, seed, self.mu, 1.0
                )
            taken = wanted
            yield wanted, upsample(unflatten_nodes(walked, grid), probabilities.shape[-2:])


class Refined(nn.Module):
    """`model` followed by `walk`: `Refined(model, walk)(images)` returns the log of the walked
    probabilities, so that its softmax and argmax are the refined ones (`difnet.evaluate` takes it
    like any model)."""

    def __init__(self, model: nn.Module, walk: BilateralWalk) -> None:
        super().__init__()
        self.model, self.walk = model, walk
        for name in ("num_classes", "in_channels"):  # what evaluation and prediction read off a model
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, images: Tensor) -> Tensor:
        probabilities = self.model(images).float().softmax(1)
        return self.walk(probabilities, images).clamp_min(torch.finfo(torch.float32).tiny).log()


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


@dataclass
class BilateralFit:
    """The chosen setting, the mIoU (fractions) of the model alone and with each setting tried."""

    walk: BilateralWalk
    model_miou: float
    scores: list[tuple[BilateralWalk, float]]

    @property
    def best_miou(self) -> float:
        return max(score for _, score in self.scores)

    def to_dict(self) -> dict:
        """Plain-typed values, for JSON."""
        return {
            "walk": asdict(self.walk),
            "model_miou": self.model_miou,
            "best_miou": self.best_miou,
            "tried": [{**asdict(walk), "miou": score} for walk, score in self.scores],
        }


@torch.no_grad()
def fit_bilateral_walk(
    model: nn.Module,
    dataset: Sequence[tuple[Tensor, Tensor]],
    settings: Sequence[BilateralWalk],
    *,
    device: str | torch.device = "cpu",
) -> BilateralFit:
    """The setting in `settings` with the best mIoU on `dataset` (`(image, label)` pairs at the
    model's input size, with `num_classes` as `difnet.evaluate` takes), from one pass of the model
    over it; the walks run on the CPU."""
    if not settings:
        raise ValueError("fit_bilateral_walk needs at least one setting to try")
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"dataset {type(dataset).__name__} has no num_classes attribute")
    model.eval()
    confusion = partial(ConfusionMatrix, num_classes, getattr(dataset, "ignore_index", IGNORE_INDEX))
    alone = confusion()
    # settings that differ only in their step count share one walk per image
    groups: dict[BilateralWalk, list[int]] = {}
    for walk in settings:
        groups.setdefault(replace(walk, steps=1), []).append(walk.steps)
    matrices = {walk: confusion() for walk in settings}
    for image, label in dataset:
        image, label = image[None], label[None]
        probabilities = model(image.to(device)).float().softmax(1).cpu()
        alone.update(probabilities.argmax(1), label)
        for base, steps in groups.items():
            for n, walked in base.states(probabilities, image, steps):
                matrices[replace(base, steps=n)].update(walked.argmax(1), label)
    scores = [(walk, matrices[walk].compute().miou) for walk in settings]
    best = max(scores, key=lambda pair: pair[1])[0]
    return BilateralFit(best, alone.compute().miou, scores)
