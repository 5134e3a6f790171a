"""Named encoders, smp's convention: `ENCODERS[name](in_channels=..., gradient_checkpointing=...)`
builds a module whose forward returns its stages' feature maps, a list, and which declares each
stage's `out_channels` and `strides` (against the input). `register_encoder` adds one."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from torch import Tensor, nn

from difnet.models.resnet import RESNET_DEPTHS, dilated_resnet


class Encoder(Protocol):
    """What a builder returns: an `nn.Module` mapping images to a list of stage feature maps."""

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __call__(self, images: Tensor) -> list[Tensor]: ...


EncoderBuilder = Callable[..., Encoder]
ENCODERS: dict[str, EncoderBuilder] = {}
# layer3 / layer4 stride traded for dilation: output stride 8 (DeepLab's), 16, or 32 (plain)
OUTPUT_STRIDE_DILATIONS: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}


def register_encoder(name: str, builder: EncoderBuilder) -> None:
    """Make `builder` buildable by `name`; a name already taken is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an encoder name must be a non-empty string (got {name!r})")
    if name in ENCODERS:
        raise ValueError(f"encoder {name!r} is already registered")
    if not callable(builder):
        raise TypeError(f"the builder of encoder {name!r} must be callable (got {builder!r})")
    ENCODERS[name] = builder


def build_encoder(name: str, *, in_channels: int = 3, gradient_checkpointing: bool = False) -> Encoder:
    """The encoder registered as `name`; an unregistered name is refused with the registered ones."""
    if name not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)} (got {name!r})")
    return ENCODERS[name](in_channels=in_channels, gradient_checkpointing=gradient_checkpointing)


def _resnet(
    depth: int, output_stride: int, *, in_channels: int = 3, gradient_checkpointing: bool = False
) -> Encoder:
    return dilated_resnet(depth, OUTPUT_STRIDE_DILATIONS[output_stride], gradient_checkpointing, in_channels)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages at strides 2, 4, 8, 8 and 8 to 32 channels: an encoder for tests
    (`gradient_checkpointing` is accepted as every builder's, and ignored: it is this small)."""

    def __init__(self, in_channels: int = 3, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.out_channels: tuple[int, ...] = (8, 16, 32, 32)
        self.strides: tuple[int, ...] = (2, 4, 8, 8)
        inputs = (in_channels, *self.out_channels[:-1])
        steps = (2, 2, 2, 1)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=step, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )  # fmt: skip
            for c_in, c_out, step in zip(inputs, self.out_channels, steps, strict=True)
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images `[B, C, H, W]` -> the four stages' maps."""
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


for _depth in RESNET_DEPTHS:
    register_encoder(f"resnet{_depth}", partial(_resnet, _depth, 8))
    register_encoder(f"resnet{_depth}_os16", partial(_resnet, _depth, 16))
    register_encoder(f"resnet{_depth}_os32", partial(_resnet, _depth, 32))
register_encoder("small_cnn", SmallCNN)
