"""Sim-DeepLab: the DeepLabV2 baseline of the paper (dilated ResNet + ASPP), DifNet's seed branch
without the importance map and the diffusion."""

from __future__ import annotations

from torch import Tensor

from difnet.models.base import SegmentationModel
from difnet.models.heads import ASPP, DEFAULT_HEAD_INIT, HEAD_INITS, upsample
from difnet.models.pretrained import PretrainedSource
from difnet.models.resnet import DilatedResNet


class SimDeepLab(SegmentationModel):
    """Sim-DeepLab-`depth`: `model(images [B, C, H, W]) -> logits [B, K, H, W]`.

    `pretrained_backbone` (a torchvision ResNet checkpoint path, or "imagenet") initialises the
    backbone; the load's missing/unexpected keys are kept in `backbone_load_reports`.
    `gradient_checkpointing=True` recomputes the backbone's stages during backward.
    `head_init` starts the ASPP head at DeepLab's N(0, 0.01) with zero bias ("normal", the
    default: better from scratch) or as the authors' code trains it ("he"); docs/fidelity.md.
    """

    name = "simdeeplab"

    def __init__(
        self,
        depth: int = 101,
        num_classes: int = 21,
        in_channels: int = 3,
        pretrained_backbone: PretrainedSource | None = None,
        gradient_checkpointing: bool = False,
        head_init: str = DEFAULT_HEAD_INIT,
    ) -> None:
        super().__init__(depth=depth, num_classes=num_classes, in_channels=in_channels,
                         gradient_checkpointing=gradient_checkpointing, head_init=head_init)  # fmt: skip
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS} (got {head_init!r})")
        self.backbone = self.new_backbone()
        self.classifier = ASPP(self.backbone.out_channels[-1], num_classes, init=head_init)
        self.load_pretrained_backbone(pretrained_backbone)

    def backbones(self) -> dict[str, DilatedResNet]:
        return {"backbone": self.backbone}

    def forward(self, images: Tensor) -> Tensor:
        """Images `[B, C, H, W]` (normalised floats) -> logits `[B, K, H, W]`."""
        self.check_images(images)
        scores = self.classifier(self.backbone(images)[-1])
        return upsample(scores, images.shape[-2:])
