"""Dilated ResNet backbones with torchvision's parameter names, so its ImageNet checkpoints load.

Stride and dilation are constructor arguments (torchvision's `replace_stride_with_dilation`):
the default turns layer3 and layer4 into stride-1 stages with dilation 2 and 4, for an output
stride of 8. The network has no classifier (`fc`); `forward` returns all four stage outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from difnet.models.checkpointing import batch_norms, recomputed

RESNET_DEPTHS: tuple[int, ...] = (18, 34, 50, 101, 152)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias whose padding keeps the size at stride 1."""
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    In a dilated stage only `conv2` is dilated; `conv1` keeps dilation 1, as in the authors'
    DifNet code (docs/fidelity.md).
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with stride and dilation, as in torchvision), 1x1 expand (ResNet-50+)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride, dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]

RESNET_SPECS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class DilatedResNet(nn.Module):
    """ResNet whose later stages may trade stride for dilation; returns layer1..layer4 outputs.

    `replace_stride_with_dilation[i]` turns stage `i + 2`'s stride 2 into dilation, every block
    of that stage using the accumulated dilation (DeepLab's layout). Parameter names follow
    torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, ...).

    With `gradient_checkpointing` set, a training forward keeps only the stem's and each
    stage's output and recomputes their insides during backward (less memory, ~1/3 more time).
    """

    gradient_checkpointing: bool = False

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        replace_stride_with_dilation: Sequence[bool] = (False, True, True),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "layers needs 4 block counts and replace_stride_with_dilation 3 flags "
                f"(got {list(layers)} and {list(replace_stride_with_dilation)})"
            )
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # ceil_mode as in the authors' code: a 64x64 input gives a 9x9 grid, not 8x8
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

        in_channels, dilation, stride_so_far = 64, 1, 4
        stages, strides = [], []
        for index, (blocks, dilate) in enumerate(
            zip(layers, (False, *replace_stride_with_dilation), strict=True)
        ):
            stride = 1 if index == 0 else 2
            if dilate:
                dilation, stride = dilation * stride, 1
            stride_so_far *= stride
            strides.append(stride_so_far)
            channels = 64 * 2**index
            stages.append(self._make_stage(block, in_channels, channels, blocks, stride, dilation))
            in_channels = channels * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels: tuple[int, ...] = tuple(64 * 2**i * block.expansion for i in range(4))
        self.strides: tuple[int, ...] = tuple(strides)  # of layer1..layer4 against the input
        self.output_stride = stride_so_far
        self._initialise()

    @staticmethod
    def _make_stage(
        block: Block, in_channels: int, channels: int, blocks: int, stride: int, dilation: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                conv1x1(in_channels, channels * block.expansion, stride),
                nn.BatchNorm2d(channels * block.expansion),
            )
        first = block(in_channels, channels, stride, dilation, downsample)
        rest = (block(channels * block.expansion, channels, 1, dilation) for _ in range(blocks - 1))
        return nn.Sequential(first, *rest)

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images `[B, 3, H, W]` -> outputs of layer1..layer4 (strides 4, 8, 8, 8 by default)."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        x = recomputed(self._stem, x, [self.bn1]) if recompute else self._stem(x)
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = recomputed(stage, x, batch_norms(stage)) if recompute else stage(x)
            features.append(x)
        return features

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def check_depth(depth: int) -> int:
    """`depth` if it names a ResNet this library builds, else a `ValueError` listing them."""
    if isinstance(depth, bool) or depth not in RESNET_SPECS:
        raise ValueError(f"depth must be one of {RESNET_DEPTHS} (got {depth!r})")
    return depth


def dilated_resnet(
    depth: int,
    replace_stride_with_dilation: Sequence[bool] = (False, True, True),
    gradient_checkpointing: bool = False,
    in_channels: int = 3,
) -> DilatedResNet:
    """The ResNet of `depth` (18, 34, 50, 101 or 152), output stride 8 by default."""
    block, layers = RESNET_SPECS[check_depth(depth)]
    backbone = DilatedResNet(block, layers, replace_stride_with_dilation, in_channels)
    backbone.gradient_checkpointing = gradient_checkpointing
    return backbone
