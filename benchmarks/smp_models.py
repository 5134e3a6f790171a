"""segmentation_models_pytorch's DeepLabV3+, U-Net and FPN in the project's trainer: the models a user
would pick instead of DifNet, trained by the same recipe as every model here.

Importing this module registers them (`smp-deeplabv3plus`, `smp-unet`, `smp-fpn`, and DifNet's
diffusion head on the first and the last, `smp-deeplabv3plus-difhead`, `smp-fpn-difhead`) with
`difnet.models.register_model`, and smp's ResNet encoders as `smp-resnet18/34/50` with
`difnet.encoders.register_encoder`; smp itself (`pip install segmentation-models-pytorch`, the
benchmarks' extra `difnet[smp]`) is imported only when a model is built."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from difnet.encoders import register_encoder
from difnet.models import DiffusionHead, DifNetOutput, ModelOptions, SegmentationModel, register_model
from difnet.models.heads import DEEPLAB_HEAD_STD, DEFAULT_HEAD_INIT, HEAD_INITS
from difnet.models.options import SHARED_ARGUMENTS

SMP_RESNETS = (18, 34, 50)
DEFAULT_SMP_DEPTH = 18


def import_smp() -> Any:
    """segmentation_models_pytorch, or an ImportError naming how to install it."""
    try:
        import segmentation_models_pytorch
    except ImportError as error:
        raise ImportError(
            'the smp-* models need segmentation_models_pytorch: pip install "difnet[smp]" (it needs '
            "torchvision, so torch 2.14.1 with torchvision 0.29.1)"
        ) from error
    return segmentation_models_pytorch


class SmpEncoder(nn.Module):
    """smp's encoder of `name` (no weights) as a difnet encoder: its stages at strides 2..32, without
    the input that smp returns first."""

    def __init__(self, name: str, in_channels: int = 3, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.encoder = import_smp().encoders.get_encoder(name, in_channels=in_channels, depth=5, weights=None)
        self.out_channels: tuple[int, ...] = tuple(self.encoder.out_channels[1:])
        self.strides: tuple[int, ...] = (2, 4, 8, 16, 32)
        if gradient_checkpointing:
            raise ValueError("smp's encoders do not recompute their stages: gradient_checkpointing=False")

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images `[B, C, H, W]` -> the five stages' maps."""
        return list(self.encoder(images)[1:])


def smp_network(
    architecture: str, encoder: str, in_channels: int, num_classes: int, head_init: str
) -> nn.Module:
    """smp's `architecture` (its class name) on the registered `smp-<name>` encoder, no weights, its
    last convolution redrawn by `head_init` as the models here start theirs."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS} (got {head_init!r})")
    net = getattr(import_smp(), architecture)(
        smp_encoder_name(encoder), encoder_weights=None, in_channels=in_channels, classes=num_classes
    )
    last = net.segmentation_head[0]
    if head_init == "normal":
        nn.init.normal_(last.weight, std=DEEPLAB_HEAD_STD)
        nn.init.zeros_(last.bias)
    else:
        nn.init.kaiming_normal_(last.weight, mode="fan_out", nonlinearity="relu")
    return net


def pad_to_stride(images: Tensor, stride: int) -> Tensor:
    """`images` padded (edge pixels repeated) at the bottom and right to multiples of `stride`."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, -width % stride, 0, -height % stride), mode="replicate")


def smp_model_encoder(depth: int | None, encoder: str | None, gradient_checkpointing: bool) -> str:
    """The `smp-<name>` encoder an smp model builds from its `depth` and `encoder` options (both
    given must agree); gradient checkpointing, which smp's encoders lack, is refused."""
    if gradient_checkpointing:
        raise ValueError("the smp models here do not recompute their stages: gradient_checkpointing=False")
    chosen = encoder or f"smp-resnet{depth or DEFAULT_SMP_DEPTH}"
    if depth is not None and chosen != f"smp-resnet{depth}":
        raise ValueError(f"depth={depth} contradicts encoder={chosen!r}; give only one of them")
    return chosen


def smp_encoder_name(encoder: str) -> str:
    """smp's name of a registered `smp-<name>` encoder."""
    if not encoder.startswith("smp-"):
        raise ValueError(f"an smp model takes an smp-* encoder, e.g. smp-resnet18 (got {encoder!r})")
    return encoder.removeprefix("smp-")


class SmpModel(SegmentationModel):
    """An smp architecture (`architecture`, smp's class name) on smp's encoder, from scratch:
    `model(images) -> logits`. Images of any size are padded to the encoder's output stride and the
    logits cropped back. `head_init` redraws the last convolution as the models here start theirs
    ("normal": DeepLab's N(0, 0.01), zero bias; "he": He's fan-out init)."""

    architecture: ClassVar[str]

    def __init__(
        self,
        depth: int | None = None,
        num_classes: int = 21,
        in_channels: int = 3,
        pretrained_backbone: str | None = None,
        gradient_checkpointing: bool = False,
        head_init: str = DEFAULT_HEAD_INIT,
        encoder: str | None = None,
    ) -> None:
        encoder = smp_model_encoder(depth, encoder, gradient_checkpointing)
        super().__init__(encoder=encoder, num_classes=num_classes, in_channels=in_channels,
                         gradient_checkpointing=gradient_checkpointing, head_init=head_init)  # fmt: skip
        self.net = smp_network(self.architecture, encoder, in_channels, num_classes, head_init)
        self.load_pretrained_backbone(pretrained_backbone)

    def backbones(self) -> dict[str, nn.Module]:
        return {"backbone": self.net.encoder}

    def backbone_encoders(self) -> dict[str, str]:
        return {"backbone": self.encoder}

    def forward(self, images: Tensor) -> Tensor:
        """Images `[B, C, H, W]` (normalised floats) -> logits `[B, K, H, W]`."""
        self.check_images(images)
        height, width = images.shape[-2:]
        return self.net(pad_to_stride(images, self.net.encoder.output_stride))[..., :height, :width]


class SmpDeepLabV3Plus(SmpModel):
    name = "smp-deeplabv3plus"
    architecture = "DeepLabV3Plus"


class SmpUnet(SmpModel):
    name = "smp-unet"
    architecture = "Unet"


class SmpFPN(SmpModel):
    name = "smp-fpn"
    architecture = "FPN"


class SmpDifHead(SegmentationModel):
    """An smp model's decoder scores diffused by DifNet's head (`DiffusionHead`) along the image and
    its encoder's stages: DifNet's diffusion as a head on the model users pick. Trained the staged
    way DifNet's best was: the smp model first, then (`seed_from` its run, `freeze_seed_branch`) the
    importance map, the Psi_t, the walks and the guided walk. `seed_model` is the smp model whose
    network (`net`, the same state-dict prefix) this one takes; its scores must be coarser than the
    input (DeepLabV3+ and FPN score at stride 4; U-Net at the input's, too fine a grid to walk on)."""

    seed_model: ClassVar[type[SmpModel]]

    def __init__(
        self,
        depth: int | None = None,
        num_classes: int = 21,
        in_channels: int = 3,
        pretrained_backbone: str | None = None,
        gradient_checkpointing: bool = False,
        head_init: str = DEFAULT_HEAD_INIT,
        encoder: str | None = None,
        kernel: str = "distance",
        kernel_radius: int | None = 1,
        guided_walk_stride: int | None = 2,
    ) -> None:
        encoder = smp_model_encoder(depth, encoder, gradient_checkpointing)
        super().__init__(encoder=encoder, num_classes=num_classes, in_channels=in_channels,
                         gradient_checkpointing=False, head_init=head_init, kernel=kernel,
                         kernel_radius=kernel_radius, guided_walk_stride=guided_walk_stride)  # fmt: skip
        self.net = smp_network(self.seed_model.architecture, encoder, in_channels, num_classes, head_init)
        if not isinstance(self.net.segmentation_head[1], nn.Upsample):
            raise ValueError(
                f"{self.seed_model.name} scores at the input's size: no coarser grid to diffuse on"
            )
        stages = tuple(self.net.encoder.out_channels[1:])
        self.head = DiffusionHead([in_channels, *stages], num_classes, kernel=kernel, kernel_radius=kernel_radius,
                                  guided_walk_stride=guided_walk_stride)  # fmt: skip
        self.seed_frozen = False
        self.load_pretrained_backbone(pretrained_backbone)

    def backbones(self) -> dict[str, nn.Module]:
        return {"backbone": self.net.encoder}

    def backbone_encoders(self) -> dict[str, str]:
        return {"backbone": self.encoder}

    def seed_branch_modules(self) -> dict[str, nn.Module]:
        """The smp network: the first stage, frozen in the second."""
        return {"net": self.net}

    def seed_source_config(self) -> dict[str, Any]:
        """What the first stage's config must hold: the smp model of `seed_model`, the same encoder."""
        return {"name": self.seed_model.name, "encoder": self.encoder, "num_classes": self.num_classes,
                "in_channels": self.in_channels}  # fmt: skip

    def freeze_seed_branch(self, frozen: bool = True) -> SmpDifHead:
        """Stop (or resume) training the smp network, whose BN layers then stay in eval mode."""
        self.seed_frozen = frozen
        self.net.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> SmpDifHead:
        super().train(mode)
        if mode and self.seed_frozen:
            self.net.eval()
        return self

    def forward(self, images: Tensor, intermediates: bool = False) -> Tensor | DifNetOutput:
        """Images `[B, C, H, W]` -> logits `[B, K, H, W]` (with `intermediates`, the head's
        `DifNetOutput`, its logits at the input size)."""
        self.check_images(images)
        height, width = images.shape[-2:]
        padded = pad_to_stride(images, self.net.encoder.output_stride)
        stages = self.net.encoder(padded)
        scores = self.net.segmentation_head[0](self.net.decoder(stages))
        out = self.head(scores, [padded, *stages[1:]])
        out = replace(out, logits=out.logits[..., :height, :width])
        return out if intermediates else out.logits


class SmpDeepLabV3PlusDifHead(SmpDifHead):
    name = "smp-deeplabv3plus-difhead"
    seed_model = SmpDeepLabV3Plus


class SmpFPNDifHead(SmpDifHead):
    name = "smp-fpn-difhead"
    seed_model = SmpFPN


SMP_MODELS = (SmpDeepLabV3Plus, SmpUnet, SmpFPN)
DIFHEAD_MODELS = (SmpDeepLabV3PlusDifHead, SmpFPNDifHead)
for _depth in SMP_RESNETS:
    register_encoder(
        f"smp-resnet{_depth}", lambda depth=_depth, **options: SmpEncoder(f"resnet{depth}", **options)
    )
for _model in SMP_MODELS:
    register_model(
        _model, ModelOptions(f"smp {_model.architecture}", arguments=SHARED_ARGUMENTS, lacks="no diffusion")
    )
for _model in DIFHEAD_MODELS:
    register_model(_model, ModelOptions(f"smp {_model.seed_model.architecture} with DifNet's head",
                                        arguments=(*SHARED_ARGUMENTS, "kernel", "kernel_radius", "guided_walk_stride"),
                                        training=("seed_from",), lacks="not these DifNet options"))  # fmt: skip
