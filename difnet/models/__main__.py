"""`python -m difnet.models [--num-classes K]`: print every model's parameter count per depth, and
every registered encoder's (with its stages and ImageNet weights)."""

from __future__ import annotations

import argparse

import torch

from difnet.encoders.registry import ENCODERS, IMAGENET_DEPTHS, build_encoder
from difnet.models.factory import format_parameter_counts, parameter_counts
from difnet.models.parameters import count_parameters


def main(argv: list[str] | None = None) -> None:
    """Print the markdown tables of parameter counts (millions) of DifNet and Sim-DeepLab, and
    of the registered encoders with their stages' channels and strides."""
    parser = argparse.ArgumentParser(prog="python -m difnet.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the heads (21: VOC)")
    args = parser.parse_args(argv)
    print(format_parameter_counts(parameter_counts(num_classes=args.num_classes)))
    print()
    print(format_encoders())


def format_encoders() -> str:
    """A markdown table of every registered encoder: parameters (millions), channels, strides and
    the torchvision ImageNet weights it takes (`pretrained_backbone`), if any."""
    lines = ["| encoder | params (M) | out_channels | strides | ImageNet weights |", "|---|---:|---|---|---|"]
    for name in sorted(ENCODERS):
        with torch.device("meta"):  # no memory, no init
            encoder = build_encoder(name)
        imagenet = f"ResNet-{IMAGENET_DEPTHS[name]}" if name in IMAGENET_DEPTHS else "none"
        lines.append(f"| {name} | {count_parameters(encoder) / 1e6:.2f} | {list(encoder.out_channels)} "
                     f"| {list(encoder.strides)} | {imagenet} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
