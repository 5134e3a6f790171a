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
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difnet.models import build_model
from difnet.models.pretrained import shape_mismatches
from difnet.training.config import RESUME_CHANGEABLE, TrainConfig

FORMAT = "difnet-checkpoint"
FORMAT_VERSION = 1
REQUIRED_ENTRIES = ("model_spec", "model")


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A difnet checkpoint's contents, loaded with `weights_only=True` and checked for its format."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory; pass the .pt file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {path} holds pickled objects other than tensors and plain data, which "
            f"are refused (weights_only=True): {str(error).splitlines()[0]}"
        ) from error
    except Exception as error:  # RuntimeError, EOFError, KeyError, ... on non-torch bytes
        raise ValueError(
            f"checkpoint {path} is not a readable torch file (truncated or not a checkpoint): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a difnet checkpoint (no format={FORMAT!r} entry); "
            "for torchvision backbone weights use --pretrained-backbone"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {payload['format_version']}, newer than this "
            f"difnet reads ({FORMAT_VERSION}); upgrade difnet"
        )
    missing = [key for key in REQUIRED_ENTRIES if key not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks the entries {missing}; it is damaged")
    return payload


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


def model_spec(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The constructor arguments that rebuild the model a config trains."""
    spec: dict[str, Any] = {"name": config.model, "depth": config.depth, "num_classes": num_classes}
    if config.model == "difnet":
        spec.update(aspp=config.aspp, walk=config.walk, diffusion_stride=config.diffusion_stride)
    return spec


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of a checkpoint's `model_spec`."""
    spec = dict(spec)
    return build_model(spec.pop("name"), spec.pop("depth"), spec.pop("num_classes"), **spec)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or torch.compile) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_model(
    path: str | Path,
    model: nn.Module,
    config: TrainConfig,
    *,
    class_names: list[str] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
    **metadata: Any,
) -> Path:
    """Write `model` with what inference needs (architecture, classes, palette, recipe) and any
    extra plain `metadata` (optimiser state, epoch, RNG states, ...), atomically."""
    model = unwrap(model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": model_spec(config, model.num_classes),
        "model": model.state_dict(),
        "config": config.to_dict(),
        "dataset": config.dataset,
        "class_names": list(class_names) if class_names is not None else None,
        "palette": [list(c) for c in palette] if palette is not None else None,
        **metadata,
    }
    return atomic_save(payload, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint (in eval mode, on the CPU) and its metadata (everything else)."""
    payload = read_checkpoint(path)
    model = build_from_spec(payload["model_spec"])
    load_state(model, payload["model"], path)
    metadata = {key: value for key, value in payload.items() if key != "model"}
    return model.eval(), metadata


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """`model.load_state_dict(state)`, with a message naming the file and the keys that differ."""
    wrong = shape_mismatches(unwrap(model), state)
    if wrong:
        raise ValueError(f"checkpoint {path} does not fit the model: " + "; ".join(wrong[:5]))
    result = unwrap(model).load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
