"""Walks on the image's own grid, finer than the seed's: class probabilities diffused between
nearby pixels of similar colour.

DifNet's walks on the seed's stride-8 grid use features learned from the same images as the seed,
and on CamVid they echo it. What a stride-8 seed lacks, and the image holds, is where the edges lie
at a finer resolution. The walk here is the walk with restart `p <- mu P p + (1 - mu) p_0` of
`difnet.diffusion` on the image pooled by `stride`, whose `P` is the local distance kernel on
guide features `[colour / colour_sigma, position / position_sigma] / sqrt(2)`:
`P_ij ~ exp(-|c_i - c_j|^2 / (2 colour_sigma^2) - |p_i - p_j|^2 / (2 position_sigma^2))` for pixels
within `radius` cells (the bilateral kernel of dense CRFs, colour only inside a kernel that also
carries position). `GuidedWalk` learns the colour map (a 1x1 convolution that starts at
`I / colour_sigma`), the position scale and `mu`; `difnet.refinement.BilateralWalk` is the same
walk with fixed settings and no weights. With `guide_channels`, a feature map the model computes
anyway (in DifNet, a similarity level such as the first ResNet stage) joins the colours through a
learned projection: edges the seed's features know of that the colours do not show.

Long walks are computed by default as the Chebyshev series of the walk's polynomial in `P`
(`difnet.diffusion.walks.chebyshev_walk`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difnet.diffusion.kernels import (
    TransitionKernel,
    flatten_nodes,
    full_precision,
    local_transition,
    unflatten_nodes,
)
from difnet.diffusion.walks import DEFAULT_SOLVER, SOLVERS, walk_states

# the settings the bilateral-walk fits on CamVid's training frames chose most often
DEFAULT_STRIDE, DEFAULT_RADIUS, DEFAULT_STEPS = 2, 3, 15
DEFAULT_COLOUR_SIGMA, DEFAULT_POSITION_SIGMA, DEFAULT_MU = 0.1, 2.0, 0.97
# the guide projection's output channels, and the spread of each at init on RMS-normalised maps
DEFAULT_GUIDE_DIMS, DEFAULT_GUIDE_SCALE = 8, 1.0


def walk_grid(size: Sequence[int], stride: int) -> tuple[int, int]:
    """The walk's `(h, w)` grid for an image of `size`: `ceil(size / stride)`."""
    return (-(-int(size[0]) // stride), -(-int(size[1]) // stride))


def guide_features(colours: Tensor, position_scale: Tensor | float) -> Tensor:
    """Node features `[B, N, C + 2]` of scaled colour maps `[B, C, h, w]`: the colours and each
    node's row and column times `position_scale`, over sqrt(2), so that the negative squared
    distances between them are the bilateral kernel's logits."""
    height, width = colours.shape[-2:]
    rows, columns = torch.meshgrid(
        torch.arange(height, dtype=colours.dtype, device=colours.device),
        torch.arange(width, dtype=colours.dtype, device=colours.device),
        indexing="ij",
    )
    positions = torch.stack([rows, columns]).expand(colours.shape[0], -1, -1, -1) * position_scale
    return flatten_nodes(torch.cat([colours, positions], dim=1)) / math.sqrt(2)


def log_probabilities(probabilities: Tensor) -> Tensor:
    """`log p`, floored at the smallest float32 normal: logits whose softmax is `p`."""
    return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()


def check_walk_settings(owner: str, **settings: float) -> None:
    """A `ValueError` naming `owner` unless the channel counts, `stride`, `radius` and `steps` are
    positive integers, the sigmas and `guide_scale` positive numbers and `mu` strictly between 0 and 1
    (those of them given)."""
    for name in ("in_channels", "stride", "radius", "steps", "guide_channels", "guide_dims"):
        value = settings.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner} {name} must be a positive integer (got {value!r})")
    for name in ("colour_sigma", "position_sigma", "guide_scale"):
        value = settings.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"{owner} {name} must be a positive number (got {value!r})")
    mu = settings.get("mu", 0.5)
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not 0 < mu < 1:
        raise ValueError(f"{owner} mu must lie strictly between 0 and 1 (got {mu!r})")
    if settings.get("solver", DEFAULT_SOLVER) not in SOLVERS:
        raise ValueError(f"{owner} solver must be one of {SOLVERS} (got {settings['solver']!r})")


def check_finite(**tensors: Tensor) -> None:
    """A `ValueError` naming the first of `tensors` that holds a NaN or an infinity (a finite sum
    proves every value finite in one pass; only a sum that is not looks at each value)."""
    for name, tensor in tensors.items():
        if not bool(tensor.detach().sum().isfinite()) and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} must be finite: {name} of shape {tuple(tensor.shape)} holds NaN or inf")


def rms_normalised(maps: Tensor) -> Tensor:
    """`maps` `[B, C, h, w]` over their root mean square per image: a guide of unit scale whatever
    the layer it comes from."""
    return maps / maps.pow(2).mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12).sqrt()


def resize_to(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """`maps` `[B, K, h, w]` on `grid`: averaged over each cell when at least as fine, else bilinear."""
    if maps.shape[-2] >= grid[0] and maps.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(maps, grid)
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)


class GuidedWalk(nn.Module):
    """`walk(probabilities [B, K, h, w], images [B, C, H, W])` -> probabilities `[B, K, H', W']` on
    the image's grid at `stride`, after `steps` walk steps with restart from `probabilities`
    resized to that grid (`resize_to`). Learned: the colour map (`colour`, a bias-free 1x1
    convolution from `in_channels`), the position scale and `mu`; they start at the bilateral
    setting of `colour_sigma` (in the input's normalised units), `position_sigma` (grid cells)
    and `mu`. Rows of `P` sum to one, so probabilities stay probabilities.

    With `guide_channels`, `walk(probabilities, images, guide)` also takes a map `guide`
    `[B, guide_channels, h', w']` of any grid: resized to the walk's, RMS-normalised and projected by
    a learned 1x1 convolution (`guide`, `guide_dims` outputs, random at init with `guide_scale`
    spread), it joins the colours in the kernel."""

    def __init__(
        self,
        in_channels: int,
        *,
        stride: int = DEFAULT_STRIDE,
        radius: int = DEFAULT_RADIUS,
        steps: int = DEFAULT_STEPS,
        colour_sigma: float = DEFAULT_COLOUR_SIGMA,
        position_sigma: float = DEFAULT_POSITION_SIGMA,
        mu: float = DEFAULT_MU,
        guide_channels: int | None = None,
        guide_dims: int = DEFAULT_GUIDE_DIMS,
        guide_scale: float = DEFAULT_GUIDE_SCALE,
        solver: str = DEFAULT_SOLVER,
    ) -> None:
        super().__init__()
        check_walk_settings("GuidedWalk", in_channels=in_channels, stride=stride, radius=radius, steps=steps,
                            colour_sigma=colour_sigma, position_sigma=position_sigma, mu=mu,
                            guide_dims=guide_dims, guide_scale=guide_scale, solver=solver,
                            **({} if guide_channels is None else {"guide_channels": guide_channels}))  # fmt: skip
        self.in_channels, self.stride, self.steps, self.solver = in_channels, stride, steps, solver
        self.kernel = TransitionKernel("distance", radius)
        self.colour = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        with torch.no_grad():
            self.colour.weight.copy_(torch.eye(in_channels)[..., None, None] / colour_sigma)
        self.raw_position_scale = nn.Parameter(torch.tensor(-math.log(position_sigma)))
        self.raw_mu = nn.Parameter(torch.zeros(()))
        self.set_mu(mu)
        self.guide = None if guide_channels is None else nn.Conv2d(guide_channels, guide_dims, 1, bias=False)
        if self.guide is not None:
            nn.init.normal_(self.guide.weight, std=guide_scale / math.sqrt(guide_channels))

    @property
    def mu(self) -> Tensor:
        """The restart weight in (0, 1)."""
        return torch.sigmoid(self.raw_mu)

    def set_mu(self, mu: float) -> None:
        """Set the restart weight to `mu`, strictly between 0 and 1 (the weight `raw_mu` is its logit)."""
        check_walk_settings("GuidedWalk", mu=mu)
        with torch.no_grad():
            self.raw_mu.fill_(math.log(mu / (1 - mu)))

    def copy_with(self, stride: int, mu: float) -> GuidedWalk:
        """A copy on the grid of `stride` with restart weight `mu`, its other weights equal (its
        position scale and radius count grid cells, so a finer grid also narrows its reach)."""
        check_walk_settings("GuidedWalk.copy_with", stride=stride)
        moved = copy.deepcopy(self)
        moved.stride = stride
        moved.set_mu(mu)
        return moved

    @property
    def position_scale(self) -> Tensor:
        """`1 / position_sigma`: the factor on grid positions."""
        return self.raw_position_scale.exp()

    def grid(self, size: Sequence[int]) -> tuple[int, int]:
        """The walk's `(h, w)` grid for an image of `size`."""
        return walk_grid(size, self.stride)

    def features(self, images: Tensor, guide: Tensor | None = None) -> Tensor:
        """Kernel features `[B, N, C (+ guide_dims) + 2]` of `images` (and `guide`) on this walk's
        grid, in at least float32."""
        self._check_guide(guide, images)
        grid = self.grid(images.shape[-2:])
        with full_precision(images) as (images,):
            pooled = F.adaptive_avg_pool2d(images, grid)
            colours = F.conv2d(pooled, self.colour.weight.to(pooled.dtype))
            if self.guide is not None:
                guide = rms_normalised(resize_to(guide.to(pooled.dtype), grid))
                colours = torch.cat([colours, F.conv2d(guide, self.guide.weight.to(pooled.dtype))], dim=1)
            return guide_features(colours, self.position_scale.to(pooled.dtype))

    def states(
        self, probabilities: Tensor, images: Tensor, steps: Iterable[int], guide: Tensor | None = None
    ) -> Iterator[tuple[int, Tensor]]:
        """`(n, walked [B, K, h, w])` after each of `steps` walk steps (this walk's `steps` ignored):
        settings that differ only in their step count share one walk."""
        if probabilities.dim() != 4 or images.dim() != 4 or probabilities.shape[0] != images.shape[0]:
            raise ValueError(
                "probabilities and images must be [B, K, h, w] and [B, C, H, W] with the same B "
                f"(got shapes {tuple(probabilities.shape)} and {tuple(images.shape)})"
            )
        if images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must have {self.in_channels} channels (got shape {tuple(images.shape)})"
            )
        check_finite(probabilities=probabilities, images=images)
        grid = self.grid(images.shape[-2:])
        features = self.features(images, guide)
        transition = local_transition(features, self.kernel, grid)
        start = flatten_nodes(resize_to(probabilities.to(features.dtype), grid))
        for n, walked in walk_states(transition, start, self.mu.to(features.dtype), steps, self.solver):
            yield n, unflatten_nodes(walked, grid).contiguous()

    def forward(self, probabilities: Tensor, images: Tensor, guide: Tensor | None = None) -> Tensor:
        return next(self.states(probabilities, images, [self.steps], guide))[1]

    def _check_guide(self, guide: Tensor | None, images: Tensor) -> None:
        if self.guide is None:
            if guide is not None:
                raise ValueError("this GuidedWalk has no guide_channels: build it with them to pass a guide")
            return
        if guide is None or guide.dim() != 4 or guide.shape[:2] != (images.shape[0], self.guide.in_channels):
            shape = None if guide is None else tuple(guide.shape)
            raise ValueError(
                f"guide must be [B, {self.guide.in_channels}, h, w] with the images' B={images.shape[0]} "
                f"(got {'no guide' if shape is None else f'shape {shape}'})"
            )

    def extra_repr(self) -> str:
        guide = "" if self.guide is None else f", guide_channels={self.guide.in_channels}"
        return (f"in_channels={self.in_channels}, stride={self.stride}, radius={self.kernel.radius}, "
                f"steps={self.steps}, solver={self.solver!r}{guide}")  # fmt: skip
