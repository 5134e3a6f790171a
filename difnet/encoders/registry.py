"""The encoder registry, smp's convention: `ENCODERS[name](in_channels=..., gradient_checkpointing=...)`
builds a module whose forward returns its stages' feature maps, a list, and which declares each
stage's `out_channels` and `strides` (against the input). `register_encoder` adds one.

The models take an encoder by name (`DifNet(encoder="resnet50_os16")`); `depth=D` is shorthand
for `"resnetD"`, the dilated ResNet-D at output stride 8 (the paper's). The ResNets take
torchvision's ImageNet weights (`IMAGENET_DEPTHS`); other encoders load their own weights, if
any, in their builder. A timm model is an encoder by name without registering it,
`"tu-<timm model name>"` (`difnet.encoders.timm`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from torch import Tensor

from difnet.encoders.small_cnn import SmallCNN
from difnet.encoders.timm import TIMM_PREFIX, check_timm_encoder, is_timm_encoder, timm_builder
from difnet.models.resnet import RESNET_DEPTHS, check_depth, dilated_resnet


class Encoder(Protocol):
    """What a builder returns: an `nn.Module` mapping images to a list of stage feature maps."""

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __call__(self, images: Tensor) -> list[Tensor]: ...


EncoderBuilder = Callable[..., Encoder]
ENCODERS: dict[str, EncoderBuilder] = {}
# the encoders that take torchvision's ImageNet ResNet weights (`pretrained_backbone`), by depth
IMAGENET_DEPTHS: dict[str, int] = {}
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
    if is_timm_encoder(name):
        raise ValueError(f"encoder names starting with {TIMM_PREFIX!r} are timm's models (got {name!r})")
    if not callable(builder):
        raise TypeError(f"the builder of encoder {name!r} must be callable (got {builder!r})")
    ENCODERS[name] = builder


def check_encoder(name: object, argument: str = "encoder") -> str:
    """`name` if an encoder is registered under it or it names a timm model (`"tu-..."`, timm
    installed), else a `ValueError` listing the registered names (`argument` names the option)."""
    if is_timm_encoder(name):
        return check_timm_encoder(name, argument)
    if not isinstance(name, str) or name not in ENCODERS:
        raise ValueError(
            f"{argument} must be one of {sorted(ENCODERS)} (got {name!r}); an encoder of your own must "
            "be registered (difnet.encoders.register_encoder) before a model is built or loaded with it; "
            f"a timm model is named '{TIMM_PREFIX}<timm model name>'"
        )
    return name


def encoder_builder(name: str) -> EncoderBuilder:
    """The builder of encoder `name`: the registered one, or timm's model for a `tu-` name."""
    return timm_builder(name) if is_timm_encoder(name) else ENCODERS[check_encoder(name)]


def build_encoder(name: str, *, in_channels: int = 3, gradient_checkpointing: bool = False) -> Encoder:
    """The encoder registered as `name`, or timm's model for a `tu-` name; an unknown name is
    refused with the registered ones."""
    builder = encoder_builder(name)
    return builder(in_channels=in_channels, gradient_checkpointing=gradient_checkpointing)


def resnet_encoder(depth: int) -> str:
    """The encoder `depth` is shorthand for: `"resnet{depth}"`, the dilated ResNet at output stride 8."""
    return f"resnet{check_depth(depth)}"


def model_encoder(depth: int | None, encoder: str | None, default_depth: int) -> str:
    """The seed encoder a model builds from its `depth` and `encoder` options: `encoder`, else the
    ResNet of `depth` (default `default_depth`) at output stride 8. Both given must agree."""
    if encoder is None:
        return resnet_encoder(default_depth if depth is None else depth)
    check_encoder(encoder)
    if depth is not None and encoder != resnet_encoder(depth):
        raise ValueError(
            f"depth={depth!r} is shorthand for encoder={resnet_encoder(depth)!r} (output stride 8) and "
            f"contradicts encoder={encoder!r}; give only one of them"
        )
    return encoder


def shorthand_depth(encoder: str) -> int | None:
    """The `depth` that is shorthand for `encoder` ("resnet50": 50), None for any other encoder."""
    return next((depth for depth in RESNET_DEPTHS if encoder == f"resnet{depth}"), None)


def _resnet(
    depth: int, output_stride: int, *, in_channels: int = 3, gradient_checkpointing: bool = False
) -> Encoder:
    return dilated_resnet(depth, OUTPUT_STRIDE_DILATIONS[output_stride], gradient_checkpointing, in_channels)


for _depth in RESNET_DEPTHS:
    for _stride, _tail in ((8, ""), (16, "_os16"), (32, "_os32")):
        register_encoder(f"resnet{_depth}{_tail}", partial(_resnet, _depth, _stride))
        IMAGENET_DEPTHS[f"resnet{_depth}{_tail}"] = _depth
register_encoder("small_cnn", SmallCNN)
