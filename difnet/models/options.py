"""Which training options each model takes, declared beside the models: the recipe settings that go
to its constructor and those the training applies around it. The training recipe builds a model's
arguments from this declaration and refuses, by name, a setting that another model takes and this
one does not, so no option is silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelOptions:
    """The training options of one model. `arguments`: recipe settings passed to its constructor
    under their own names; `training`: settings the training applies to it (losses, learning rates,
    staged training); `label` names the model in messages, `lacks` what it has not that the options
    of others need (for the message refusing them)."""

    label: str
    arguments: tuple[str, ...]
    training: tuple[str, ...] = ()
    lacks: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        """Every recipe setting this model takes, in declaration order."""
        return (*self.arguments, *self.training)


SHARED_ARGUMENTS = (
    "depth",
    "encoder",
    "in_channels",
    "pretrained_backbone",
    "gradient_checkpointing",
    "head_init",
)

MODEL_OPTIONS: dict[str, ModelOptions] = {
    "difnet": ModelOptions(
        "DifNet",
        arguments=(*SHARED_ARGUMENTS, "aspp", "walk", "diffusion_stride", "psi_scale_init", "shared_backbone",
                   "normalize_importance", "kernel", "kernel_radius", "learn_temperature", "beta_init", "similarity_encoder",
                   "guided_walk_stride", "guided_walk_steps", "guided_walk_level"),
        training=("aux_seed_weight", "transition_loss_weight", "walk_lr_mult", "walk_weight_decay", "seed_from"),
    ),
    "simdeeplab": ModelOptions("Sim-DeepLab", arguments=SHARED_ARGUMENTS, lacks="no diffusion"),
}  # fmt: skip


def model_options(model: str) -> ModelOptions:
    """The declaration of `model` (a name of `MODEL_OPTIONS`)."""
    if model not in MODEL_OPTIONS:
        raise ValueError(f"model must be one of {', '.join(MODEL_OPTIONS)} (got {model!r})")
    return MODEL_OPTIONS[model]


def foreign_options(model: str) -> tuple[str, ...]:
    """The settings other models take and `model` does not, in the order they are declared."""
    own = set(model_options(model).options)
    others = [name for other in MODEL_OPTIONS.values() for name in other.options if name not in own]
    return tuple(dict.fromkeys(others))


def model_arguments(model: str, num_classes: int, recipe: object) -> dict[str, Any]:
    """`build_model`'s arguments for `model` with `num_classes` classes: its declared `arguments`,
    read from `recipe`'s attributes of the same names (a `TrainConfig`)."""
    arguments = {name: getattr(recipe, name) for name in model_options(model).arguments}
    return {"name": model, "num_classes": num_classes, **arguments}


def refuse_foreign_options(model: str, recipe: object, defaults: Mapping[str, Any]) -> None:
    """A `ValueError` naming each setting of `recipe` (read as its attributes) that `model` does not
    take (see `foreign_options`) and that differs from its value in `defaults`."""
    used = {
        name: getattr(recipe, name)
        for name in foreign_options(model)
        if getattr(recipe, name) != defaults[name]
    }
    if not used:
        return
    owners = [other.label for other in MODEL_OPTIONS.values() if set(used) & set(other.options)]
    owned_by = owners[0] if len(owners) == 1 else f"{', '.join(owners[:-1])} and {owners[-1]}"
    lacks = model_options(model).lacks
    raise ValueError(
        f"{', '.join(f'{name}={value!r}' for name, value in used.items())}: options of {owned_by}, "
        f"but the model is {model!r}, which has {lacks or 'none of them'}; leave them at their defaults"
    )
