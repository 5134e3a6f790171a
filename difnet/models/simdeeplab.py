"""Sim-DeepLab: the DeepLabV2 baseline of the paper (dilated ResNet + ASPP), DifNet's seed branch
without the importance map and the diffusion."""

from __future__ import annotations

from torch import Tensor, nn

from difnet.encoders.registry import model_encoder
from difnet.models.base import SegmentationModel
from difnet.models.heads import ASPP, DEFAULT_HEAD_INIT, HEAD_INITS, upsample
from difnet.models.pretrained import PretrainedSource

DEFAULT_DEPTH = 101


class SimDeepLab(SegmentationModel):
    """Sim-DeepLab on a registered encoder: `model(images [B, C, H, W]) -> logits [B, K, H, W]`.

    `encoder` names one of `difnet.encoders.ENCODERS` or a timm model (`"tu-<timm name>"`);
    `depth=D` (default 101) is shorthand for `encoder="resnetD"`, the dilated ResNet-D at output
    stride 8 (giving both is refused unless they agree). `pretrained_backbone` (a torchvision
    ResNet checkpoint path, or "imagenet" / True) initialises a ResNet encoder, True or "imagenet"
    a timm one with timm's weights; the load's missing/unexpected keys are kept in
    `backbone_load_reports`. `gradient_checkpointing=True` recomputes the encoder's stages
    during backward. `head_init` starts the ASPP head at DeepLab's N(0, 0.01) with zero bias
    ("normal", the default: better from scratch) or as the authors' code trains it ("he");
    docs/fidelity.md.
    """

    name = "simdeeplab"

    def __init__(
        self,
        depth: int | None = None,
        num_classes: int = 21,
        in_channels: int = 3,
        pretrained_backbone: PretrainedSource | bool | None = None,
        gradient_checkpointing: bool = False,
        head_init: str = DEFAULT_HEAD_INIT,
        encoder: str | None = None,
    ) -> None:
        super().__init__(encoder=model_encoder(depth, encoder, DEFAULT_DEPTH), num_classes=num_classes,
                         in_channels=in_channels, gradient_checkpointing=gradient_checkpointing,
                         head_init=head_init)  # fmt: skip
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS} (got {head_init!r})")
        self.backbone = self.new_backbone(self.encoder)
        self.classifier = ASPP(self.backbone.out_channels[-1], num_classes, init=head_init)
        self.load_pretrained_backbone(pretrained_backbone)

    def backbones(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone}

    def backbone_encoders(self) -> dict[str, str]:
        return {"backbone": self.encoder}

    def forward(self, images: Tensor) -> Tensor:
        """Images `[B, C, H, W]` (normalised floats) -> logits `[B, K, H, W]`."""
        self.check_images(images)
        scores = self.classifier(self.backbone(images)[-1])
        return upsample(scores, images.shape[-2:])
