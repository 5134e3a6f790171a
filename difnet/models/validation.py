"""Checks at the model boundary (images, constructor arguments), so bad input fails early with
a message that names the problem."""

from __future__ import annotations

import torch
from torch import Tensor, nn

MIN_IMAGE_SIZE = 16


def check_images(images: Tensor, model: nn.Module | None = None, *, name: str = "images") -> None:
    """Raise unless `images` is a finite float `[B, C, H, W]` tensor with B >= 1, H, W >= 16 and
    C the model's `in_channels` (3 without a model), on `model`'s device and (outside autocast)
    of its weights' dtype. Only shapes and types are read: values are scanned for NaN where
    data enters the library (`check_finite`), not in every forward.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(images).__name__})")
    shape = tuple(images.shape)
    channels = getattr(model, "in_channels", 3)
    if images.dim() != 4:
        hint = "; add a batch dimension with images.unsqueeze(0)" if images.dim() == 3 else ""
        raise ValueError(
            f"{name} must have shape [B, {channels}, H, W] "
            f"(got a {images.dim()}-D tensor of shape {shape}){hint}"
        )
    if shape[1] != channels:
        kind = " (RGB)" if channels == 3 else ""
        raise ValueError(f"{name} must have {channels}{kind} channels in dim 1 (got shape {shape})")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (got dtype {images.dtype}); "
            "convert with images.float() and normalise as in training"
        )
    if min(shape[2:]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{name} must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels (got shape {shape})"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image (got an empty batch, shape {shape})")
    if model is not None:
        check_matches_model(images, model, name)


def check_finite(images: Tensor, name: str = "images") -> None:
    """Raise unless every value of `images` is finite (a full read and a host sync: call it
    where data enters, e.g. inference on a user's tensors, not inside a model)."""
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contain NaN or infinite values (shape {tuple(images.shape)})")


def check_matches_model(images: Tensor, model: nn.Module, name: str = "images") -> None:
    """Raise unless `images` lie on the device of `model`'s weights and, outside autocast, share
    their dtype (torch's own error names neither tensor)."""
    weight = next(model.parameters(), None)
    if weight is None:
        return
    if images.device != weight.device:
        raise ValueError(
            f"{name} are on device {images.device} but the model is on {weight.device}; "
            f"move them with {name}.to({str(weight.device)!r})"
        )
    if images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type):
        raise ValueError(
            f"{name} have dtype {images.dtype} but the model's weights are {weight.dtype}; "
            f"convert with {name}.to({weight.dtype}) or the model with model.to({images.dtype})"
        )


def check_positive_int(value: int, name: str) -> int:
    """`value` if it is a positive int, else a `ValueError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return value


def check_num_classes(num_classes: int) -> int:
    """`num_classes` if it is a positive int, else a `ValueError` naming it."""
    return check_positive_int(num_classes, "num_classes")
