"""`SmallCNN`, the registry's `small_cnn`: a four-stage encoder for tests and quick runs."""

from __future__ import annotations

from torch import Tensor, nn


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
