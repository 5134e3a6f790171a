"""The encoders the models are built from, by name (`ENCODERS`, `register_encoder`, `build_encoder`):
the dilated ResNets, `SmallCNN`, any of your own (`difnet.encoders.registry`), and timm's models as
`"tu-<timm model name>"` without registering them (`difnet.encoders.timm`)."""

from difnet.encoders.registry import (
    ENCODERS,
    IMAGENET_DEPTHS,
    OUTPUT_STRIDE_DILATIONS,
    Encoder,
    EncoderBuilder,
    build_encoder,
    register_encoder,
)
from difnet.encoders.small_cnn import SmallCNN

BUILT_IN_ENCODERS = tuple(ENCODERS)  # the library's own, before any that a user or a benchmark registers

__all__ = [
    "BUILT_IN_ENCODERS",
    "ENCODERS",
    "IMAGENET_DEPTHS",
    "OUTPUT_STRIDE_DILATIONS",
    "Encoder",
    "EncoderBuilder",
    "SmallCNN",
    "build_encoder",
    "register_encoder",
]
