"""The score heads on top of the backbones (a 3x3 score convolution or ASPP), and the bilinear resize that brings score maps to another grid or the input size."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

ASPP_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)
# how the score convolutions start: "he" is the authors' code as it trains (its ResNet init loop
# redraws the head), "normal" is DeepLabV2's N(0, 0.01) with zero bias (docs/fidelity.md)
HEAD_INITS: tuple[str, ...] = ("he", "normal")
# from scratch DeepLab's init trains both models to a higher val mIoU (README, CamVid init runs)
DEFAULT_HEAD_INIT = "normal"
DEEPLAB_HEAD_STD = 0.01


def score_conv(
    in_channels: int, num_classes: int, dilation: int = 1, init: str = DEFAULT_HEAD_INIT
) -> nn.Conv2d:
    """3x3 convolution to class scores with bias, initialised by `init` (one of `HEAD_INITS`).

    "he": as the authors' DifNet code trains it: its ResNet init loop runs after the head's own
    and redraws the weights from N(0, sqrt(2 / (9 K))) (fan-out He init), the bias keeps torch's
    default. "normal": DeepLabV2's N(0, 0.01), bias 0. docs/fidelity.md
    """
    conv = nn.Conv2d(in_channels, num_classes, 3, padding=dilation, dilation=dilation)
    if init == "he":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif init == "normal":
        nn.init.normal_(conv.weight, std=DEEPLAB_HEAD_STD)
        nn.init.zeros_(conv.bias)
    else:
        raise ValueError(f"head_init must be one of {HEAD_INITS} (got {init!r})")
    return conv


class ASPP(nn.Module):
    """DeepLabV2 atrous spatial pyramid pooling: the **sum** of dilated 3x3 score convolutions."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: Sequence[int] = ASPP_DILATIONS,
        init: str = DEFAULT_HEAD_INIT,
    ) -> None:
        super().__init__()
        if not dilations:
            raise ValueError("dilations must name at least one dilation rate")
        self.branches = nn.ModuleList(score_conv(in_channels, num_classes, d, init) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        """Features `[B, C, h, w]` -> scores `[B, K, h, w]`."""
        branches = iter(self.branches)
        scores = next(branches)(x)
        for branch in branches:
            scores = scores + branch(x)
        return scores


def score_head(
    in_channels: int, num_classes: int, aspp: bool = True, init: str = DEFAULT_HEAD_INIT
) -> nn.Module:
    """The seed branch's classifier: ASPP, or (the paper's "noASPP") a single 3x3 convolution."""
    if aspp:
        return ASPP(in_channels, num_classes, init=init)
    return score_conv(in_channels, num_classes, init=init)


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of `[B, C, h, w]` maps to `size` (align_corners=False): the one resize of
    score maps and images in the library (a no-op at the same size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
