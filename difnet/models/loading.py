"""Loading a saved model of any kind: `load_model` builds the class that the saved config names,
so it sits above the model classes (a class's own `from_pretrained` loads only that class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difnet.models.base import SegmentationModel
from difnet.models.factory import model_class
from difnet.models.serialization import read_saved


def load_model(source: str | Path, num_classes: int | None = None) -> SegmentationModel:
    """The model (in eval mode, on the CPU) of a `difnet train` checkpoint (`.pt`), a
    `save_pretrained` folder, or a Hub repo id such as `"user/difnet-voc"`, with its
    `class_names`, `palette` and `preprocessing` set from what was saved.

    `num_classes` other than the saved count loads it for fine-tuning: every weight whose shape
    fits, the class-dependent layers re-initialised and listed in `model.fine_tune_report`.
    """
    return load_model_with_metadata(source, num_classes)[0]


def load_model_with_metadata(
    source: str | Path, num_classes: int | None = None
) -> tuple[SegmentationModel, dict[str, Any]]:
    """`load_model` and every entry saved beside the weights: a checkpoint's training recipe
    (`"config"`), epoch and history, a folder's `difnet_version`, and the class names, palette
    and preprocessing also set on the model."""
    saved = read_saved(source)
    model = model_class(saved.config["name"]).from_saved(saved, num_classes)
    return model, {**saved.metadata, "preprocessing": model.preprocessing.to_dict()}
