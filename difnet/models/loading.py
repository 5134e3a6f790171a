"""Loading a saved model of any kind: `load_model` builds the class that the saved config names,
so it sits above the model classes (a class's own `from_pretrained` loads only that class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difnet.models.base import SegmentationModel
from difnet.models.factory import model_class
from difnet.models.serialization import read_saved


def load_model(source: str | Path) -> SegmentationModel:
    """The model (in eval mode, on the CPU) of a `difnet train` checkpoint (`.pt`), a
    `save_pretrained` folder, or a Hub repo id such as `"user/difnet-voc"`."""
    return load_model_with_metadata(source)[0]


def load_model_with_metadata(source: str | Path) -> tuple[SegmentationModel, dict[str, Any]]:
    """`load_model` and what was saved beside the weights (class names, palette, ...)."""
    saved = read_saved(source)
    return model_class(saved.config["name"]).from_saved(saved), saved.metadata
