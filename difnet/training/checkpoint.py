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

from difnet.models.serialization import (
    FORMAT,
    FORMAT_VERSION,
    load_model_with_metadata,
    model_metadata,
    read_checkpoint,
    unwrap,
)
from difnet.training.config import RESUME_CHANGEABLE, TrainConfig


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


def resume_config(path: str | Path, options: Mapping[str, Any]) -> TrainConfig:
    """The recipe stored in checkpoint `path`, set to resume from it, with `options` applied.

    Options may only change what `RESUME_CHANGEABLE` names (more epochs, another device, ...);
    any other that differs from the stored recipe is refused, naming it and both values. The
    output folder defaults to the checkpoint's own.
    """
    stored = TrainConfig.from_dict(read_checkpoint(path)["config"])
    resumed = TrainConfig.from_dict(
        {**stored.to_dict(), "output_dir": str(Path(path).parent), **options, "resume": str(path)}
    )
    before, after = stored.to_dict(), resumed.to_dict()
    refused = [name for name in after if name not in RESUME_CHANGEABLE and after[name] != before[name]]
    if refused:
        changes = "; ".join(
            f"--{name.replace('_', '-')} {after[name]!r} (the run used {before[name]!r})" for name in refused
        )
        raise ValueError(
            f"cannot resume {path} with a different recipe: {changes}. Beside --resume only "
            + ", ".join("--" + name.replace("_", "-") for name in RESUME_CHANGEABLE if name != "resume")
            + " may change; start a new run for anything else"
        )
    return resumed


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
