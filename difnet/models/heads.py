"""The heads on top of the backbones: class scores, importance map, the projections Psi_t,
and the bilinear resize that brings score maps to another grid or the input size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ASPP_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)
# how the score convolutions start: "he" is the authors' code as it trains (its ResNet init loop
# redraws the head), "normal" is DeepLabV2's N(0, 0.01) with zero bias (docs/fidelity.md)
HEAD_INITS: tuple[str, ...] = ("he", "normal")
# from scratch DeepLab's init trains both models to a higher val mIoU (README, CamVid init runs)
DEFAULT_HEAD_INIT = "normal"
DEEPLAB_HEAD_STD = 0.01
PROJECTION_CHANNELS = 64
# Psi's BN scale at init such that f f^T starts as (BN-normalised inner product) / sqrt(64),
# the softmax's scale in attention: unsaturated transitions from the first step (docs/fidelity.md)
UNSATURATED_PSI_SCALE = PROJECTION_CHANNELS**-0.25


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


def _importance_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 5, padding=2, bias=False)


class ImportanceHead(nn.Sequential):
    """`M = H(x)`: BN-ReLU-conv5x5 three times (K -> 8 -> 4 -> 1), then sigmoid; `[B, 1, h, w]`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
            _importance_conv(num_classes, 8),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            _importance_conv(8, 4),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            _importance_conv(4, 1),
            nn.Sigmoid(),
        )


class Projection(nn.Module):
    """`Psi_t`: 1x1 convolution to 64 channels (with bias), BN, adaptive max pool to the grid.

    `scale_init` is the BN scale gamma at init (1 in the authors' code). Since
    `f f^T = sum_c gamma_c^2 z_c z_c^T` for BN-normalised `z`, gamma is a learned per-channel
    temperature of the transition softmax, and `scale_init` its starting value.
    """

    def __init__(
        self, in_channels: int, out_channels: int = PROJECTION_CHANNELS, scale_init: float = 1.0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, scale_init)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Features `[B, C_t, H_t, W_t]` -> `[B, 64, h, w]` (channels_last) on the grid `size`.

        Runs in the parameters' dtype with autocast off: the features enter `f f^T` unscaled, so
        bfloat16 rounding here would move the transition matrices as much as rounding the logits.
        """
        # channels_last halves the time of Psi_0 (64 channels at full resolution) on CPU,
        # and the pooled maps then flatten to nodes without a copy
        x = x.to(self.conv.weight.dtype).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, enabled=False):
            if self.training:
                x = self.bn(self.conv(x))
            else:  # eval BN is a per-channel affine map: fold it into the conv, one pass less
                x = F.conv2d(x, *self._folded_conv())
            if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
                return adaptive_max_pool_by_gather(x, size)  # exporters lack adaptive max pooling
            return F.adaptive_max_pool2d(x, size)

    def _folded_conv(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of the 1x1 convolution equal to `bn(conv(x))` with running statistics."""
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = self.conv.weight * scale[:, None, None, None]
        return weight, (self.conv.bias - self.bn.running_mean) * scale + self.bn.bias


def adaptive_max_pool_by_gather(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.adaptive_max_pool2d(x, size)` from gathers and max-reductions, which ONNX has.

    Adaptive pooling's window `i` along a side of length `n` pooled to `m` is
    `[floor(i n / m), ceil((i + 1) n / m))`; the windows' lengths differ by at most one, so each
    is gathered at the longest length, a shorter one repeating its last index (a max ignores
    repeats). Max over a rectangle is the max over rows of the max over columns. The sizes must
    be static: the exported graph holds the windows as constants.
    """
    for dim, out in zip((-2, -1), size, strict=True):
        x = _pool_side(x, dim, int(x.shape[dim]), int(out))
    return x


def _pool_side(x: Tensor, dim: int, length: int, out: int) -> Tensor:
    starts = [i * length // out for i in range(out)]
    ends = [-(-(i + 1) * length // out) for i in range(out)]
    width = max(e - s for s, e in zip(starts, ends, strict=True))
    index = torch.tensor(
        [[min(s + k, e - 1) for k in range(width)] for s, e in zip(starts, ends, strict=True)],
        device=x.device,
    )
    gathered = x.index_select(dim, index.flatten())
    shape = (*x.shape[:dim], out, width) if dim == -1 else (*x.shape[:dim], out, width, x.shape[-1])
    return gathered.reshape(shape).amax(dim=-1 if dim == -1 else -2)


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of `[B, C, h, w]` maps to `size` (align_corners=False): the one resize of
    score maps and images in the library (a no-op at the same size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
