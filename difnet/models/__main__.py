"""`python -m difnet.models [--num-classes K]`: print every model's parameter count per depth."""

from __future__ import annotations

import argparse

from difnet.models.factory import format_parameter_counts, parameter_counts


def main(argv: list[str] | None = None) -> None:
    """Print the markdown table of parameter counts (millions) of DifNet and Sim-DeepLab."""
    parser = argparse.ArgumentParser(prog="python -m difnet.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the heads (21: VOC)")
    args = parser.parse_args(argv)
    print(format_parameter_counts(parameter_counts(num_classes=args.num_classes)))


if __name__ == "__main__":
    main()
