"""How a model's inputs were prepared in training (resize policy, mean/std), saved with the model
so that every tool that loads it prepares images the same way (HF's preprocessor config)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from difnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Preprocessing:
    """`image_size` `(h, w)`: every image was resized to it in training (None: used at its own
    size); `mean`, `std`: per-channel normalisation of images in [0, 1]."""

    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
            ):
                raise ValueError(
                    f"image_size must be (height, width) of positive ints (got {self.image_size!r})"
                )
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need one value per channel each (got {self.mean} and {self.std})")

    def normalization(self) -> dict[str, tuple[float, ...]]:
        """`{"mean": ..., "std": ...}`, the keyword arguments of `difnet.data.transforms.normalize`."""
        return {"mean": self.mean, "std": self.std}

    def with_image_size(self, image_size: Sequence[int] | None) -> Preprocessing:
        """The same normalisation with another resize policy."""
        return replace(self, image_size=tuple(image_size) if image_size is not None else None)

    def describe(self) -> str:
        """One phrase for logs: the resolution and the normalisation."""
        size = (
            "at their own size"
            if self.image_size is None
            else "resized to {}x{} (HxW)".format(*self.image_size)
        )
        numbers = ", ".join(f"{v:g}" for v in self.mean), ", ".join(f"{v:g}" for v in self.std)
        return f"images {size}, normalised by mean ({numbers[0]}) and std ({numbers[1]})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        size = list(self.image_size) if self.image_size is not None else None
        return {"image_size": size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """The record of `to_dict`'s output (a missing entry takes the default)."""
        known = {"image_size", "mean", "std"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing entries: {', '.join(unknown)}")
        values = {key: value for key, value in values.items() if value is not None}
        return cls(**values)
