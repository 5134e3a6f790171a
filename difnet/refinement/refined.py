"""Any refinement after any model, as one model: its probabilities refined along the image."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from difnet.diffusion.guided import log_probabilities


class ImageRefiner(Protocol):
    """What refines a model's probabilities `[B, K, H, W]` along its input images `[B, C, H, W]`
    (`BilateralWalk`, `DenseCRF`): probabilities of the same shape."""

    def __call__(self, probabilities: Tensor, images: Tensor) -> Tensor: ...


class RefinedModel(nn.Module):
    """`model` followed by `refiner`: `RefinedModel(model, refiner)(images)` returns the log of the
    refined probabilities, so that its softmax and argmax are the refined ones (`difnet.evaluate`
    takes it like any model)."""

    def __init__(self, model: nn.Module, refiner: ImageRefiner) -> None:
        super().__init__()
        self.model, self.refiner = model, refiner
        for name in ("num_classes", "in_channels"):  # what evaluation and prediction read off a model
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, images: Tensor) -> Tensor:
        probabilities = self.model(images).float().softmax(1)
        return log_probabilities(self.refiner(probabilities, images))
