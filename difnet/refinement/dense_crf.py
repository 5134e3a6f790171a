"""A fully connected CRF after any model (Kraehenbuehl and Koltun 2011; DeepLab v1 and v2 refine
with it): the refinement segmentation users know, through pydensecrf2 (the extra `difnet[crf]`),
fitted by the same search as the walk on the image (`fit_dense_crf`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from difnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from difnet.refinement.fitting import SettingFit, fit_setting

CRF_EXTRA = 'pip install "difnet[crf]"'
PROBABILITY_FLOOR = 1e-8  # keeps the unary -log p finite


def import_densecrf() -> Any:
    """pydensecrf2's `densecrf` module, or an ImportError naming the extra that installs it."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as error:
        raise ImportError(
            f"the dense CRF needs pydensecrf2: {CRF_EXTRA} (it builds from source, ~30 s)"
        ) from error
    return densecrf


@dataclass(frozen=True)
class DenseCRF:
    """Mean-field inference (`iterations` steps) of a dense CRF on the unary `-log p`, with a
    Gaussian kernel over positions (`gaussian_sigma` pixels, weight `gaussian_weight`) and a
    bilateral one (`bilateral_sigma` pixels, `colour_sigma` in 0-255 RGB units, weight
    `bilateral_weight`). The defaults are pydensecrf's and DeepLab's usual ones. Images come
    normalised with `mean` and `std` (ImageNet's, the models' default) and are read back as RGB."""

    iterations: int = 5
    bilateral_sigma: float = 80.0
    colour_sigma: float = 13.0
    bilateral_weight: float = 10.0
    gaussian_sigma: float = 3.0
    gaussian_weight: float = 3.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"DenseCRF iterations must be a positive integer (got {self.iterations!r})")
        for name in (
            "bilateral_sigma",
            "colour_sigma",
            "bilateral_weight",
            "gaussian_sigma",
            "gaussian_weight",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"DenseCRF {name} must be a positive finite number (got {value!r})")

    def __call__(self, probabilities: Tensor, images: Tensor) -> Tensor:
        """Refine `probabilities` `[B, K, H, W]` along `images` `[B, 3, H, W]`: marginals, same shape."""
        return next(self.states(probabilities, images, [self.iterations]))[1]

    def states(
        self, probabilities: Tensor, images: Tensor, iterations: Iterable[int]
    ) -> Iterator[tuple[int, Tensor]]:
        """`(n, marginals)` after each of `iterations` mean-field steps (this setting's own
        `iterations` ignored): settings that differ only in their iterations share one inference."""
        counts = sorted(set(iterations))
        if probabilities.dim() != 4 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                "probabilities and images must be [B, K, H, W] and [B, 3, H, W] (RGB) "
                f"(got shapes {tuple(probabilities.shape)} and {tuple(images.shape)})"
            )
        if probabilities.shape[0] != images.shape[0] or probabilities.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                "probabilities and images must share batch size and (H, W) "
                f"(got shapes {tuple(probabilities.shape)} and {tuple(images.shape)})"
            )
        if not bool(torch.isfinite(probabilities).all()) or not bool(torch.isfinite(images).all()):
            raise ValueError("probabilities and images must be finite: they hold NaN or inf")
        per_image = [
            self._inference(p, image, counts) for p, image in zip(probabilities, images, strict=True)
        ]
        for index, n in enumerate(counts):
            marginals = np.stack([states[index] for states in per_image])
            yield n, torch.from_numpy(marginals).to(probabilities.device, probabilities.dtype)

    def _inference(self, probabilities: Tensor, image: Tensor, counts: Sequence[int]) -> list[np.ndarray]:
        """The marginals `[K, H, W]` of one image after each of `counts` (ascending) steps."""
        densecrf = import_densecrf()
        classes, height, width = probabilities.shape
        crf = densecrf.DenseCRF2D(width, height, classes)
        unary = -probabilities.detach().float().cpu().clamp_min(PROBABILITY_FLOOR).log().reshape(classes, -1)
        crf.setUnaryEnergy(np.ascontiguousarray(unary.numpy()))
        crf.addPairwiseGaussian(sxy=self.gaussian_sigma, compat=self.gaussian_weight)
        crf.addPairwiseBilateral(sxy=self.bilateral_sigma, srgb=self.colour_sigma, rgbim=self.rgb(image),
                                 compat=self.bilateral_weight)  # fmt: skip
        marginals, scratch, normalised = crf.startInference()
        states, taken = [], 0
        for n in counts:
            for _ in range(n - taken):
                crf.stepInference(marginals, scratch, normalised)
            taken = n
            states.append(np.array(marginals).reshape(classes, height, width))
        return states

    def rgb(self, image: Tensor) -> np.ndarray:
        """A normalised `[3, H, W]` image back to the C-contiguous, writable uint8 `[H, W, 3]`
        that pydensecrf reads."""
        std, mean = torch.tensor(self.std).view(3, 1, 1), torch.tensor(self.mean).view(3, 1, 1)
        pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1) * 255
        return np.ascontiguousarray(pixels.round().to(torch.uint8).permute(1, 2, 0).numpy())


def dense_crf_grid(
    bilateral_sigmas: Iterable[float] = (20.0, 50.0, 80.0),
    colour_sigmas: Iterable[float] = (5.0, 13.0, 30.0),
    bilateral_weights: Iterable[float] = (3.0, 5.0, 10.0),
    iterations: Iterable[int] = (5, 10),
) -> list[DenseCRF]:
    """Every combination of the given values (the Gaussian kernel at its usual 3 px, weight 3): the
    settings `fit_dense_crf` searches, DeepLab's grid over the bilateral kernel's widths and weight."""
    return [
        DenseCRF(n, position, colour, weight)
        for position, colour, weight, n in itertools.product(
            bilateral_sigmas, colour_sigmas, bilateral_weights, iterations
        )  # fmt: skip
    ]


class DenseCRFFit(SettingFit[DenseCRF]):
    """`fit_dense_crf`'s result: the chosen `crf`."""

    label: ClassVar[str] = "crf"

    @property
    def crf(self) -> DenseCRF:
        return self.chosen


def fit_dense_crf(
    model: nn.Module,
    dataset: Sequence[tuple[Tensor, Tensor]],
    settings: Sequence[DenseCRF] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> DenseCRFFit:
    """The setting among `settings` (default `dense_crf_grid()`) with the best mIoU on `dataset`
    (`(image, label)` pairs at the model's input size, with `num_classes`), from one pass of the model
    over it, as `fit_bilateral_walk` picks a walk's; the CRF runs on the CPU."""
    settings = dense_crf_grid() if settings is None else list(settings)
    model.eval()
    groups: dict[DenseCRF, list[int]] = {}  # settings that differ only in iterations share one inference
    for crf in settings:
        groups.setdefault(replace(crf, iterations=1), []).append(crf.iterations)

    def refine(image: Tensor, size: tuple[int, int]) -> tuple[Tensor, Iterator[tuple[DenseCRF, Tensor]]]:
        probabilities = model(image.to(device)).float().softmax(1).cpu()
        refined = ((replace(base, iterations=n), marginals) for base, counts in groups.items()
                   for n, marginals in base.states(probabilities, image, counts))  # fmt: skip
        return probabilities, refined

    return DenseCRFFit(*fit_setting(dataset, settings, refine))
