"""The training recipe as data: the paper's defaults, overridable from the command line, printed
at start and stored in every checkpoint."""

from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from difnet.data import DATASETS, EvalTransform, TrainTransform
from difnet.data import recipe as data_recipe
from difnet.data.base import SegmentationDataset, Transform
from difnet.devices import default_device, parse_device
from difnet.diffusion import SIMILARITIES, WALK_METHODS
from difnet.encoders.registry import check_encoder, resnet_encoder, shorthand_depth
from difnet.models import MODELS, RESNET_DEPTHS
from difnet.models.diffusion_head import UNSATURATED_PSI_SCALE
from difnet.models.difnet import DIFFUSION_STRIDES
from difnet.models.heads import DEFAULT_HEAD_INIT, HEAD_INITS
from difnet.models.options import foreign_options, refuse_foreign_options
from difnet.models.options import model_arguments as declared_model_arguments
from difnet.models.preprocessing import Preprocessing
from difnet.models.serialization import read_checkpoint
from difnet.models.validation import MIN_IMAGE_SIZE
from difnet.training.class_weights import CLASS_WEIGHTINGS
from difnet.training.recipe_file import read_recipe_file
from difnet.training.settings import add_options, check_file_value, declared, given_options, setting

NONFINITE_POLICIES = ("stop", "skip")
PRECISIONS = ("fp32", "bf16", "fp16")
MODEL, NORMALISATION, DATA, OPTIMISATION, RUN = (
    "model", "normalisation (needed for images other than RGB)", "data", "optimisation", "run",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the authors' recipe (their
    `main.sh`/`main.py`): SGD with momentum 0.9 over every parameter at one learning rate,
    2.5e-3, weight decay 5e-4 on all of them, poly decay (power 0.9) per iteration, batch 16,
    random scale 0.5-1.5, 321x321 crops and flips, 200 epochs. docs/fidelity.md lists each
    point and where difnet departs from it.

    `batch_size` is per process and per forward pass; the optimiser steps every `accumulate`
    batches, so one step sees `batch_size * accumulate * processes` images.

    Each field is declared once, with `setting` (difnet.training.settings): its description,
    option group and roles drive the command line, recipe files and `--resume`'s checks. Which
    models take which options, and how they become constructor arguments, is declared beside the
    models (`difnet.models.options`); how the datasets and transforms are built, beside the
    datasets (`difnet.data.recipe`).
    """

    model: str = setting("difnet", "architecture", MODEL, choices=tuple(MODELS))
    depth: int | None = setting(50, "ResNet depth: shorthand for --encoder resnetD (output stride 8)", MODEL,
                                choices=RESNET_DEPTHS)  # fmt: skip
    encoder: str | None = setting(
        None, "the seed encoder by its registered name (difnet.encoders), e.g. resnet50_os16, or a timm "
        "model as tu-<timm name> (with timm installed); given, it replaces --depth", MODEL, metavar="NAME",
    )  # fmt: skip
    similarity_encoder: str | None = setting(
        None, "DifNet: the similarity branch's encoder by its registered name or tu-<timm name> (default: "
        "the seed encoder)", MODEL, metavar="NAME",
    )  # fmt: skip
    aspp: bool = setting(
        True, "DifNet: an ASPP seed head (off: the paper's noASPP variant, one 3x3 conv)", MODEL
    )
    walk: str = setting("fused", "how P_t y is computed (materialized: explicit P, for debugging)", MODEL,
                        choices=WALK_METHODS)  # fmt: skip
    diffusion_stride: int = setting(8, "output stride of the grid the walks run on", MODEL,
                                    choices=DIFFUSION_STRIDES)  # fmt: skip
    psi_scale_init: float = setting(
        UNSATURATED_PSI_SCALE,
        "initial BN scale of DifNet's Psi_t (1.0: the authors' code; default 64^-1/4: unsaturated "
        "transitions at init)",
        MODEL,
    )
    head_init: str = setting(
        DEFAULT_HEAD_INIT, "score head init: 'normal' DeepLab's N(0, 0.01) (better from scratch), 'he' as "
        "the authors' code trains it", MODEL, choices=HEAD_INITS,
    )  # fmt: skip
    shared_backbone: bool = setting(
        False, "DifNet: read the similarity levels from the seed backbone (one ResNet, not two)", MODEL
    )
    normalize_importance: bool = setting(
        False, "DifNet: divide the importance map by its per-image mean (relative weights only)", MODEL
    )
    kernel: str = setting(
        "dot", "DifNet: the transition kernel, 'dot' f_i . f_j (the paper), 'distance' -||f_i - f_j||^2, "
        "'identity' P = I (no diffusion: the seed alone, staged training's first stage)", MODEL,
        choices=SIMILARITIES,
    )  # fmt: skip
    kernel_radius: int | None = setting(
        None, "DifNet: connect each node only to the nodes within this many grid cells (default: all)",
        MODEL, metavar="CELLS",
    )  # fmt: skip
    learn_temperature: bool = setting(
        False, "DifNet: learn a factor on each walk's transition logits (a sharpening temperature)", MODEL
    )
    beta_init: float = setting(
        0.5, "DifNet: initial step weight beta_t of every walk (near 0: walks start switched off)", MODEL
    )
    guided_walk_stride: int | None = setting(
        None, "DifNet: end the cascade with a learned bilateral walk on the image pooled by this stride "
        "(e.g. 2: finer than the seed's grid); default: the paper's cascade alone", MODEL, metavar="STRIDE",
    )  # fmt: skip
    guided_walk_steps: int = setting(
        15, "DifNet: steps of the guided walk (with --guided-walk-stride)", MODEL
    )
    guided_walk_level: int | None = setting(
        None, "DifNet: a similarity level (1: the first ResNet stage) whose features join the colours in "
        "the guided walk's kernel (with --guided-walk-stride)", MODEL, metavar="LEVEL",
    )  # fmt: skip
    aux_seed_weight: float = setting(
        0.0,
        "DifNet: weight of an auxiliary cross-entropy on the seed scores x (0: the paper's single loss "
        "on y_5)",
        OPTIMISATION,
    )
    transition_loss_weight: float = setting(
        0.0,
        "DifNet: weight of an auxiliary loss on the transition matrices, -log of the mass each row "
        "of P_t keeps on the node's own class (0: the paper's, which leaves P_t unsupervised)",
        OPTIMISATION,
    )
    class_weighting: str | None = setting(
        None, "class-balanced cross-entropy, its weights counted from the training labels at start: "
        "'median-frequency' (median f / f_c, SegNet's), 'enet' (1 / ln(1.02 + p_c)); default: every "
        "class weighs 1", OPTIMISATION, choices=CLASS_WEIGHTINGS,
    )  # fmt: skip
    pretrained_backbone: str | None = setting(
        None, "torchvision ResNet checkpoint for the backbones, or 'imagenet' (timm's own for tu- encoders)", MODEL,
        metavar="PATH_OR_imagenet",
    )  # fmt: skip
    init_from: str | None = setting(
        None,
        "start from a trained model's weights (a .pt, a save_pretrained folder or a Hub repo id) of the "
        "same architecture, for any number of classes: its class-dependent layers are re-initialised; "
        "unlike --resume, a new run with its own recipe",
        MODEL, metavar="CHECKPOINT_OR_FOLDER",
    )  # fmt: skip
    seed_from: str | None = setting(
        None,
        "DifNet, staged training: take the seed branch (backbone, score head, importance map) of this "
        "trained DifNet (.pt or save_pretrained folder) and freeze it, so that only Psi_t, the kernel "
        "and the walks train (e.g. on a first stage trained with --kernel identity)",
        MODEL, metavar="CHECKPOINT_OR_FOLDER",
    )  # fmt: skip
    gradient_checkpointing: bool = setting(
        False, "recompute the backbones' stages in backward: less memory, more time", MODEL, resumable=True
    )
    in_channels: int = setting(
        3, "image channels (1 grey, 4 RGB-NIR, ...); a pretrained conv1 is adapted", MODEL
    )
    mean: tuple[float, ...] | None = setting(
        None, "per-channel mean of the images in [0, 1] (default: ImageNet's)", NORMALISATION, metavar="M"
    )
    std: tuple[float, ...] | None = setting(
        None, "per-channel standard deviation in [0, 1] (default: ImageNet's)", NORMALISATION, metavar="S"
    )
    freeze_backbone: bool = setting(False, "train only the heads (and DifNet's projections and walks)", MODEL)
    norm_eval: bool = setting(False, "keep every BN layer in eval mode (running statistics frozen)", MODEL)
    dataset: str = setting("voc", "dataset to train on", DATA, choices=DATASETS)
    data_root: str | None = setting(
        None, "folder holding the dataset (not needed for synthetic)", DATA, resumable=True
    )
    train_split: str = setting("train", "split to train on (voc: train_aug for SBD)", DATA)
    val_split: str | None = setting(
        "val", "split evaluated after each epoch; 'none' to skip evaluation", DATA
    )
    num_classes: int | None = setting(
        None, "number of classes (folder: required; synthetic: default 5)", DATA
    )
    image_size: tuple[int, int] | None = setting(
        None, "resize every image (and label) on load, or the scene size (synthetic)", DATA,
        metavar=("H", "W"),
    )  # fmt: skip
    crop_size: tuple[int, int] = setting(
        (321, 321), "training crop: one side for a square, or H W", DATA, metavar="PX", nargs="+"
    )
    scale_range: tuple[float, float] = setting(
        (0.5, 1.5), "random rescaling range before the crop", DATA, metavar=("LOW", "HIGH")
    )
    flip: bool = setting(True, "random horizontal flips of the training crops", DATA)
    batch_size: int = setting(16, "images per process and forward pass", OPTIMISATION)
    accumulate: int = setting(1, "forward passes whose gradients are summed per optimiser step", OPTIMISATION)
    epochs: int = setting(200, "passes over the training split", OPTIMISATION, resumable=True)
    max_steps_per_epoch: int | None = setting(None, "cut each epoch short (quick runs)", OPTIMISATION)
    lr: float = setting(2.5e-3, "base learning rate (every parameter group scales it)", OPTIMISATION)
    head_lr_mult: float = setting(
        1.0, "learning-rate factor of the heads and projections (authors: 1)", OPTIMISATION
    )
    walk_lr_mult: float = setting(
        1.0,
        "learning-rate factor of DifNet's walk weights mu_t, beta_t and the guided walk's (authors: 1)",
        OPTIMISATION,
    )
    walk_weight_decay: float | None = setting(
        None, "weight decay of the walk weights (default: --weight-decay, as the authors)", OPTIMISATION
    )
    momentum: float = setting(0.9, "SGD momentum", OPTIMISATION)
    weight_decay: float = setting(5e-4, "L2 weight decay", OPTIMISATION)
    poly_power: float = setting(0.9, "power of the poly schedule", OPTIMISATION)
    precision: str = setting(
        "fp32",
        "autocast: bf16 (fast on recent GPUs, slow on many CPUs) or fp16 with a gradient scaler (GPUs "
        "without bf16); the walks always run in fp32",
        OPTIMISATION,
        choices=PRECISIONS,
    )
    seed: int = setting(0, "seed of the data order, augmentation and init", RUN)
    workers: int = setting(2, "data-loading processes", DATA, resumable=True)
    device: str = setting(
        description="torch device (under torchrun: cuda or cpu)", group=RUN, default_factory=default_device,
        resumable=True, run_only=True,
    )  # fmt: skip
    output_dir: str = setting(
        "runs/difnet", "where checkpoints and logs go", RUN, resumable=True, run_only=True
    )
    overwrite: bool = setting(False, "reuse a non-empty output directory", RUN, resumable=True, run_only=True)
    resume: str | None = setting(
        None,
        "continue a run from its last.pt with the recipe stored there (the options so marked may "
        "be given beside it)",
        RUN, metavar="CHECKPOINT", resumable=True, run_only=True,
    )  # fmt: skip
    save_every: int | None = setting(
        None, "also write last.pt every STEPS optimiser steps (a crash loses at most that many)", RUN,
        metavar="STEPS", resumable=True,
    )  # fmt: skip
    eval_every: int = setting(1, "evaluate every N epochs", RUN, resumable=True)
    on_nonfinite: str = setting(
        "stop", "on a NaN/inf loss or gradient: stop the run, or skip that step (fp16: when the gradient "
        "scaler skipped most recent steps, stop, or warn)", OPTIMISATION,
        choices=NONFINITE_POLICIES, resumable=True,
    )  # fmt: skip
    log_every: int = setting(10, "log the loss every N steps", RUN, resumable=True, run_only=True)
    progress: bool = setting(True, "progress bars", RUN, resumable=True, run_only=True)

    def __post_init__(self) -> None:
        self.crop_size = _pair(self.crop_size, "crop_size")
        if self.image_size is not None:
            self.image_size = _pair(self.image_size, "image_size")
        self.scale_range = tuple(float(s) for s in self.scale_range)
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self._resolve_encoder()
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise ValueError(f"mean and std go together, one value per channel each "
                             f"(got {self.mean} and {self.std})")  # fmt: skip
        self.check()

    def _resolve_encoder(self) -> None:
        """With `encoder` given, `depth` becomes the depth it is shorthand for (None for an encoder
        that is no such shorthand); a `depth` other than the default that names another encoder
        is refused, and so is an unknown `encoder` or `similarity_encoder`, with the registered names."""
        if self.similarity_encoder is not None:
            check_encoder(self.similarity_encoder, "similarity_encoder")
        if self.encoder is None:
            return
        encoder = check_encoder(self.encoder)
        shorthand = shorthand_depth(encoder)
        default = next(f.default for f in fields(self) if f.name == "depth")
        if self.depth not in (default, shorthand):
            raise ValueError(
                f"depth {self.depth} is shorthand for encoder {resnet_encoder(self.depth)!r}, which "
                f"contradicts encoder {encoder!r}; give one of them"
            )
        self.depth = shorthand

    def check(self) -> None:
        """Raise a `ValueError` (a `TypeError` for a non-number) naming the first bad setting."""
        self._check_choices()
        self._check_counts()
        self._check_rates()
        parse_device(self.device)
        if min(self.crop_size) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"crop_size {self.crop_size} is smaller than the {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} "
                "pixels the models take"
            )
        for name in data_recipe.DATASET_OPTIONS[self.dataset].required:
            if getattr(self, name) is None:
                raise ValueError(f"dataset {self.dataset!r} needs {name} (--{name.replace('_', '-')})")
        if self.in_channels != 3 and not data_recipe.takes(self.dataset, "in_channels"):
            readers = [name for name in DATASETS if data_recipe.takes(name, "in_channels")]
            raise ValueError(
                f"in_channels {self.in_channels}: only the {', '.join(map(repr, readers))} dataset reads "
                "images other than RGB"
            )
        refuse_foreign_options(self.model, self, {f.name: f.default for f in fields(self)})
        if self.transition_loss_weight and self.kernel == "identity":
            raise ValueError("transition_loss_weight: the identity kernel has no transitions to supervise")
        if self.seed_from is not None and self.init_from is not None:
            raise ValueError("seed_from and init_from both set the starting weights; give one of them")
        if self.in_channels != 3 and self.mean is None:
            raise ValueError(
                f"in_channels {self.in_channels} needs the data's normalisation: --mean and --std "
                "with one value per channel (ImageNet's only fit RGB)"
            )

    def _check_choices(self) -> None:
        choices = {
            "model": (self.model, tuple(MODELS)),
            "depth": (self.depth, RESNET_DEPTHS if self.encoder is None else (*RESNET_DEPTHS, None)),
            "walk": (self.walk, WALK_METHODS),
            "diffusion_stride": (self.diffusion_stride, DIFFUSION_STRIDES),
            "dataset": (self.dataset, DATASETS),
            "on_nonfinite": (self.on_nonfinite, NONFINITE_POLICIES),
            "precision": (self.precision, PRECISIONS),
            "head_init": (self.head_init, HEAD_INITS),
            "kernel": (self.kernel, SIMILARITIES),
            "class_weighting": (self.class_weighting, (*CLASS_WEIGHTINGS, None)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))} (got {value!r})")

    def _check_counts(self) -> None:
        positive = {
            "batch_size": self.batch_size, "accumulate": self.accumulate, "epochs": self.epochs,
            "eval_every": self.eval_every, "log_every": self.log_every,
            "max_steps_per_epoch": self.max_steps_per_epoch, "num_classes": self.num_classes,
            "save_every": self.save_every, "in_channels": self.in_channels,
            "kernel_radius": self.kernel_radius, "guided_walk_stride": self.guided_walk_stride,
            "guided_walk_steps": self.guided_walk_steps, "guided_walk_level": self.guided_walk_level,
        }  # fmt: skip
        for name, value in positive.items():
            if value is not None and not _is_int(value, minimum=1):
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        for name in ("workers", "seed"):
            if not _is_int(getattr(self, name), minimum=0):
                raise ValueError(f"{name} must be a non-negative integer (got {getattr(self, name)!r})")

    def _check_rates(self) -> None:
        for name in ("lr", "head_lr_mult", "walk_lr_mult", "psi_scale_init"):
            if not _finite(getattr(self, name), name) > 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)!r})")
        for name in (
            "momentum",
            "weight_decay",
            "poly_power",
            "walk_weight_decay",
            "aux_seed_weight",
            "transition_loss_weight",
        ):
            if getattr(self, name) is not None and not _finite(getattr(self, name), name) >= 0:
                raise ValueError(f"{name} must be non-negative (got {getattr(self, name)!r})")
        low, high = (_finite(value, "scale_range") for value in self.scale_range)
        if not 0 < _finite(self.beta_init, "beta_init") < 1:
            raise ValueError(f"beta_init must lie strictly between 0 and 1 (got {self.beta_init!r})")
        if not 0 < low <= high:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high (got {self.scale_range!r})"
            )

    # --- what the recipe builds: declared beside the models and the datasets -------------------

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        """`build_model`'s arguments for the model this config trains (`difnet.models.options`)."""
        return declared_model_arguments(self.model, num_classes, self)

    def preprocessing(self) -> Preprocessing:
        """How this run prepares images, saved with the model: its normalisation, and
        `image_size` where the dataset resizes every image to it (every dataset but synthetic)."""
        return Preprocessing(data_recipe.resized_size(self), **data_recipe.normalization(self))

    def train_transform(self) -> TrainTransform:
        """The paper's augmentation with this config's crop, scale range, flip and normalisation."""
        return data_recipe.train_transform(self)

    def eval_transform(self) -> EvalTransform:
        """Whole-image evaluation with this config's normalisation."""
        return data_recipe.eval_transform(self)

    def build_dataset(self, split: str, transform: Transform | None = None) -> SegmentationDataset:
        """The `split` of this config's dataset, read with `transform` (`difnet.data.recipe`)."""
        return data_recipe.build_split(self, split, transform)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed settings (tuples as lists), for JSON and for checkpoints."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config of `to_dict`'s output; unknown keys are refused by name."""
        values = _upgrade_legacy(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    def format(self) -> str:
        """One `name = value` line per setting, for the start of a run's log."""
        return "\n".join(f"  {name} = {value!r}" for name, value in asdict(self).items())

    # --- command line and recipe files --------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per setting, defaulting to the paper's recipe, and `--config FILE`."""
        groups = add_options(parser, cls, (MODEL, NORMALISATION, DATA, OPTIMISATION, RUN))
        groups[OPTIMISATION].add_argument(
            "--bf16",
            dest="precision",
            action=_DeprecatedBf16,
            nargs=0,
            help="deprecated alias of --precision bf16",
        )
        groups[RUN].add_argument(
            "--config",
            metavar="FILE",
            help="a recipe file (JSON, or TOML on Python 3.11+), e.g. a run's config.json: its settings "
            "replace the defaults and the options given here replace its settings; "
            + "where and how the run goes ("
            + ", ".join(RUN_ONLY)
            + ") comes from the command line only (a file's is ignored with a note)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of options parsed by `add_arguments`: the defaults, replaced by a `--config`
        file's recipe, replaced by the options given. With `--resume`, the recipe stored in that
        checkpoint, changed only by the options given."""
        defaults, given = given_options(args, cls)
        given = {name: _normalise_option(name, value) for name, value in given.items()}
        recipe_file = getattr(args, "config", None)
        if {**defaults, **given}.get("resume"):
            if recipe_file is not None:
                raise ValueError(f"--config {recipe_file} and --resume do not go together: a resumed run "
                                 "keeps the recipe stored in its checkpoint")  # fmt: skip
            return resume_config({**defaults, **given}["resume"], given)
        from_file: dict[str, Any] = {}
        if recipe_file is not None:
            from_file, ignored = cls.read_recipe(recipe_file)
            if ignored:
                print(f"note: {recipe_file} sets {', '.join(ignored)}, which come from the command line "
                      "only; the file's values are ignored", file=sys.stderr)  # fmt: skip
        return cls(**{**defaults, **from_file, **given})

    @classmethod
    def read_recipe(cls, path: str | Path) -> tuple[dict[str, Any], list[str]]:
        """The settings of recipe file `path` (JSON or TOML, e.g. a run's config.json), checked
        against their declarations, and the run-only settings it sets, left out. Unknown keys are
        refused by name."""
        values = _upgrade_legacy(read_recipe_file(path))
        by_name = {item.name: item for item in declared(cls)}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ValueError(f"recipe file {path}: unknown training settings: {', '.join(unknown)}")
        ignored = [name for name in values if by_name[name].setting.run_only]
        recipe = {
            name: _normalise_option(name, check_file_value(by_name[name], value, f"recipe file {path}"))
            for name, value in values.items()
            if name not in ignored
        }
        return recipe, ignored


# the options only DifNet takes, from the models' declarations: Sim-DeepLab refuses them unless they
# keep their defaults
DIFNET_ONLY = foreign_options("simdeeplab")
RESUME_CHANGEABLE = tuple(item.name for item in declared(TrainConfig) if item.setting.resumable)
RUN_ONLY = tuple(item.name for item in declared(TrainConfig) if item.setting.run_only)


def resume_config(path: str | Path, options: Mapping[str, Any]) -> TrainConfig:
    """The recipe stored in checkpoint `path`, set to resume from it, with `options` applied.

    Options may only change what `RESUME_CHANGEABLE` names (more epochs, another device, ...);
    any other that differs from the stored recipe is refused (`check_resume_recipe`). The
    output folder defaults to the checkpoint's own.
    """
    stored = read_checkpoint(path)["config"]
    resumed = TrainConfig.from_dict(
        {**TrainConfig.from_dict(stored).to_dict(), "output_dir": str(Path(path).parent), **options,
         "resume": str(path)}
    )  # fmt: skip
    check_resume_recipe(path, stored, resumed, as_options=True)
    return resumed


def check_resume_recipe(
    path: str | Path, stored: Mapping[str, Any], config: TrainConfig, *, as_options: bool = False
) -> None:
    """Refuse to resume checkpoint `path`, trained with the recipe `stored` (its `config`), with a
    `config` that changes a setting outside `RESUME_CHANGEABLE`: a `ValueError` naming each such
    setting (as a command-line option with `as_options`), its stored and its new value. The CLI and
    the library (`Trainer`) share this check, so neither resumes a run with another recipe."""
    before, after = TrainConfig.from_dict(dict(stored)).to_dict(), config.to_dict()
    refused = [name for name in after if name not in RESUME_CHANGEABLE and after[name] != before[name]]
    if not refused:
        return

    def spelled(name: str) -> str:
        return "--" + name.replace("_", "-") if as_options else name

    changes = "; ".join(
        f"{spelled(name)}{' ' if as_options else '='}{after[name]!r} (the run used {before[name]!r})"
        for name in refused
    )
    raise ValueError(
        f"cannot resume {path} with a different recipe: {changes}. Beside {spelled('resume')} only "
        + ", ".join(spelled(name) for name in RESUME_CHANGEABLE if name != "resume")
        + " may change; start a new run for anything else"
    )


class _DeprecatedBf16(argparse.Action):
    """`--bf16`, kept working as `--precision bf16` with a warning."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        warnings.warn("--bf16 is deprecated; use --precision bf16", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, "bf16")


def _upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """Settings as written by older versions, in today's names."""
    if "bf16" in values:  # checkpoints written before --precision replaced --bf16
        legacy = values["bf16"]
        values = {key: value for key, value in values.items() if key != "bf16"}
        values.setdefault("precision", "bf16" if legacy else "fp32")
    return values


def _normalise_option(name: str, value: Any) -> Any:
    """A typed option's value as the config takes it ('none' as no validation split)."""
    if name == "val_split" and isinstance(value, str) and value.lower() == "none":
        return None
    if name == "crop_size" and isinstance(value, list) and len(value) not in (1, 2):
        raise ValueError(f"--crop-size takes one or two values (got {len(value)})")
    return value


def _is_int(value: object, *, minimum: int) -> bool:
    """Whether `value` is an int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _finite(value: object, name: str) -> float:
    """`value` as a finite float; a non-number is a `TypeError` and inf or NaN a `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (got {value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite (got {value!r})")
    return float(value)


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """`value` as an `(h, w)` pair of positive ints; one int or a 1-list means a square."""
    pair = list(value) if isinstance(value, tuple | list) else [value]
    pair = pair * 2 if len(pair) == 1 else pair
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of them (got {value!r})")
    return int(pair[0]), int(pair[1])
