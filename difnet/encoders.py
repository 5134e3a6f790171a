"""The encoder registry (`ENCODERS`, `register_encoder`, `build_encoder`): its public home, defined
in `difnet.models.encoders` beside the models and ResNets that it builds."""

from difnet.models.encoders import (
    ENCODERS,
    IMAGENET_DEPTHS,
    OUTPUT_STRIDE_DILATIONS,
    Encoder,
    EncoderBuilder,
    SmallCNN,
    build_encoder,
    check_encoder,
    model_encoder,
    register_encoder,
    resnet_encoder,
    shorthand_depth,
)

__all__ = [
    "ENCODERS",
    "IMAGENET_DEPTHS",
    "OUTPUT_STRIDE_DILATIONS",
    "Encoder",
    "EncoderBuilder",
    "SmallCNN",
    "build_encoder",
    "check_encoder",
    "model_encoder",
    "register_encoder",
    "resnet_encoder",
    "shorthand_depth",
]
