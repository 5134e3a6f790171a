"""Sim-DeepLab: the DeepLabV2 baseline of the paper (dilated ResNet + ASPP), DifNet's seed branch
without the importance map and the diffusion."""

from __future__ import annotations

from torch import Tensor, nn

from difnet.models.heads import ASPP, upsample
from difnet.models.parameters import split_backbone_head
from difnet.models.pretrained import LoadReport, PretrainedSource, load_pretrained_backbones
from difnet.models.resnet import dilated_resnet
from difnet.models.validation import check_images, check_num_classes


class SimDeepLab(nn.Module):
    """Sim-DeepLab-`depth`: `model(images [B, 3, H, W]) -> logits [B, K, H, W]`.

    `pretrained_backbone` (a torchvision ResNet checkpoint path, or "imagenet") initialises the
    backbone; the load's missing/unexpected keys are kept in `backbone_load_reports`.
    `gradient_checkpointing=True` recomputes the backbone's stages during backward.
    """

    def __init__(
        self,
        depth: int = 101,
        num_classes: int = 21,
        pretrained_backbone: PretrainedSource | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        self.depth, self.num_classes = depth, num_classes
        self.backbone = dilated_resnet(depth, gradient_checkpointing=gradient_checkpointing)
        self.classifier = ASPP(self.backbone.out_channels[-1], num_classes)
        self.backbone_load_reports: dict[str, LoadReport] = {}
        if pretrained_backbone is not None:
            self.backbone_load_reports = load_pretrained_backbones(
                {"backbone": self.backbone}, pretrained_backbone, depth
            )

    def forward(self, images: Tensor) -> Tensor:
        """Images `[B, 3, H, W]` (ImageNet-normalised floats) -> logits `[B, K, H, W]`."""
        check_images(images, self)
        scores = self.classifier(self.backbone(images)[-1])
        return upsample(scores, images.shape[-2:])

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """`"backbone"`: the ResNet (base lr); `"head"`: the ASPP classifier (10x lr)."""
        return split_backbone_head(self, [self.backbone])
