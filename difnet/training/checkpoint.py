"""Checkpoints that survive crashes and untrusted files.

A checkpoint holds only tensors, state dicts and plain metadata, so it loads with
`torch.load(..., weights_only=True)`; a file holding pickled code is refused. Writes go to a
temporary file in the same folder, are flushed to disk, then renamed over the target, so a
crash mid-save leaves the previous checkpoint intact and never a half-written one. A process
killed mid-save (SIGKILL, power loss) cannot delete its temporary file, a hidden
`.<name>.<random>.tmp` beside the target; `remove_partial_saves` does, and training calls it
at start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difnet.models.loading import load_model_with_metadata
from difnet.models.serialization import FORMAT, FORMAT_VERSION, model_metadata, unwrap
from difnet.models.serialization import read_checkpoint as read_checkpoint  # training's name for it
from difnet.training.config import TrainConfig


def atomic_save(payload: Mapping[str, Any], path: str | Path) -> Path:
    """`torch.save` to `path` through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_affixes(path)
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(dict(payload), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def remove_partial_saves(path: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted `atomic_save`s to `path` left; returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix, suffix = _temporary_affixes(path)
    stale = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix))
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    return stale


def _temporary_affixes(path: Path) -> tuple[str, str]:
    """Prefix and suffix of `atomic_save`'s temporary files for `path` (hidden, never `*.pt`)."""
    return f".{path.name}.", ".tmp"


def save_model(
    path: str | Path,
    model: nn.Module,
    config: TrainConfig,
    *,
    class_names: list[str] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
    **metadata: Any,
) -> Path:
    """Write `model` with what inference needs (architecture, classes, palette, preprocessing:
    given, or else the model's attributes; the recipe) and any extra plain `metadata`
    (optimiser state, epoch, RNG states, ...), atomically."""
    model = unwrap(model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": model.config,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "dataset": config.dataset,
        **model_metadata(model, class_names, palette),
        **metadata,
    }
    return atomic_save(payload, path)


# the model of a checkpoint or save_pretrained folder and its metadata (training's old name)
load_model = load_model_with_metadata
