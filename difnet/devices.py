"""Torch devices named by the user, checked before a model or a tensor is moved there, so a
misspelt or absent device fails with its name instead of an error from deep inside torch."""

from __future__ import annotations

import torch


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(device: str | torch.device) -> torch.device:
    """`device` as a `torch.device`; a name torch does not know raises a `ValueError` naming it."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda' or 'cuda:1')"
        ) from error


def resolve_device(device: str | torch.device) -> torch.device:
    """`parse_device(device)`, checked to exist here: a CUDA device needs CUDA and its index."""
    parsed = parse_device(device)
    if parsed.type != "cuda":
        return parsed
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(
            f"device {str(device)!r} was asked for but CUDA is not available on this machine; "
            "use --device cpu"
        )
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"device {str(device)!r} was asked for but this machine has {count} CUDA device(s)")
    return parsed
