"""The training recipe as data: the paper's defaults, overridable from the command line, printed
at start and stored in every checkpoint."""

from __future__ import annotations

import argparse
import json
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from difnet.data import DATASETS, EvalTransform, TrainTransform, build_dataset
from difnet.data.base import SegmentationDataset, Transform
from difnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from difnet.devices import default_device, parse_device
from difnet.diffusion import WALK_METHODS
from difnet.models import MODELS, RESNET_DEPTHS
from difnet.models.difnet import DIFFUSION_STRIDES
from difnet.models.heads import HEAD_INITS, UNSATURATED_PSI_SCALE
from difnet.models.preprocessing import Preprocessing
from difnet.models.serialization import read_checkpoint

NONFINITE_POLICIES = ("stop", "skip")
# what `--resume` may change in the stored recipe: how long, where and how the run goes on, never
# what it computes
RESUME_CHANGEABLE = (
    "epochs", "workers", "device", "output_dir", "overwrite", "resume", "data_root", "eval_every",
    "log_every", "progress", "on_nonfinite", "save_every", "gradient_checkpointing",
)  # fmt: skip
PRECISIONS = ("fp32", "bf16", "fp16")
RESIZED_DATASETS = ("camvid",)  # the datasets that --image-size resizes on load
SYNTHETIC_DEFAULT_CLASSES = 5
SYNTHETIC_DEFAULT_SIZE = 64


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the authors' recipe (their
    `main.sh`/`main.py`): SGD with momentum 0.9 over every parameter at one learning rate,
    2.5e-3, weight decay 5e-4 on all of them, poly decay (power 0.9) per iteration, batch 16,
    random scale 0.5-1.5, 321x321 crops and flips, 200 epochs. docs/fidelity.md lists each
    point and where difnet departs from it.

    `batch_size` is per process and per forward pass; the optimiser steps every `accumulate`
    batches, so one step sees `batch_size * accumulate * processes` images.
    """

    model: str = "difnet"
    depth: int = 50
    aspp: bool = True
    walk: str = "fused"
    diffusion_stride: int = 8
    psi_scale_init: float = UNSATURATED_PSI_SCALE
    head_init: str = "he"
    shared_backbone: bool = False
    normalize_importance: bool = False
    aux_seed_weight: float = 0.0
    pretrained_backbone: str | None = None
    init_from: str | None = None
    gradient_checkpointing: bool = False
    in_channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    freeze_backbone: bool = False
    norm_eval: bool = False
    dataset: str = "voc"
    data_root: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    num_classes: int | None = None
    image_size: tuple[int, int] | None = None
    crop_size: tuple[int, int] = (321, 321)
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    batch_size: int = 16
    accumulate: int = 1
    epochs: int = 200
    max_steps_per_epoch: int | None = None
    lr: float = 2.5e-3
    head_lr_mult: float = 1.0
    walk_lr_mult: float = 1.0
    walk_weight_decay: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    precision: str = "fp32"
    seed: int = 0
    workers: int = 2
    device: str = field(default_factory=default_device)
    output_dir: str = "runs/difnet"
    overwrite: bool = False
    resume: str | None = None
    save_every: int | None = None
    eval_every: int = 1
    on_nonfinite: str = "stop"
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        self.crop_size = _pair(self.crop_size, "crop_size")
        if self.image_size is not None:
            self.image_size = _pair(self.image_size, "image_size")
        self.scale_range = tuple(float(s) for s in self.scale_range)
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise ValueError(f"mean and std go together, one value per channel each "
                             f"(got {self.mean} and {self.std})")  # fmt: skip
        self.check()

    def check(self) -> None:
        """Raise a `ValueError` (a `TypeError` for a non-number) naming the first bad setting."""
        self._check_choices()
        self._check_counts()
        self._check_rates()
        parse_device(self.device)
        if self.dataset == "folder" and self.num_classes is None:
            raise ValueError("dataset 'folder' needs num_classes (--num-classes)")
        if self.in_channels != 3 and self.dataset != "folder":
            raise ValueError(
                f"in_channels {self.in_channels}: only the 'folder' dataset reads images other than RGB"
            )
        difnet_only = {"shared_backbone": self.shared_backbone, "normalize_importance": self.normalize_importance,
                       "aux_seed_weight": self.aux_seed_weight}  # fmt: skip
        used = [name for name, value in difnet_only.items() if value]
        if self.model != "difnet" and used:
            raise ValueError(f"{', '.join(used)}: DifNet options, but the model is {self.model!r}")
        if self.in_channels != 3 and self.mean is None:
            raise ValueError(
                f"in_channels {self.in_channels} needs the data's normalisation: --mean and --std "
                "with one value per channel (ImageNet's only fit RGB)"
            )

    def _check_choices(self) -> None:
        choices = {
            "model": (self.model, tuple(MODELS)),
            "depth": (self.depth, RESNET_DEPTHS),
            "walk": (self.walk, WALK_METHODS),
            "diffusion_stride": (self.diffusion_stride, DIFFUSION_STRIDES),
            "dataset": (self.dataset, DATASETS),
            "on_nonfinite": (self.on_nonfinite, NONFINITE_POLICIES),
            "precision": (self.precision, PRECISIONS),
            "head_init": (self.head_init, HEAD_INITS),
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
        for name in ("momentum", "weight_decay", "poly_power", "walk_weight_decay", "aux_seed_weight"):
            if getattr(self, name) is not None and not _finite(getattr(self, name), name) >= 0:
                raise ValueError(f"{name} must be non-negative (got {getattr(self, name)!r})")
        low, high = (_finite(value, "scale_range") for value in self.scale_range)
        if not 0 < low <= high:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high (got {self.scale_range!r})"
            )

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        """`build_model`'s arguments for the model this config trains."""
        arguments: dict[str, Any] = {
            "name": self.model, "depth": self.depth, "num_classes": num_classes,
            "in_channels": self.in_channels, "pretrained_backbone": self.pretrained_backbone,
            "gradient_checkpointing": self.gradient_checkpointing, "head_init": self.head_init,
        }  # fmt: skip
        if self.model == "difnet":
            arguments.update(aspp=self.aspp, walk=self.walk, diffusion_stride=self.diffusion_stride,
                             psi_scale_init=self.psi_scale_init, shared_backbone=self.shared_backbone,
                             normalize_importance=self.normalize_importance)  # fmt: skip
        return arguments

    # --- datasets ------------------------------------------------------------------------------

    def dataset_options(self) -> dict[str, Any]:
        """Keyword options of `build_dataset` for this config's dataset."""
        if self.dataset == "synthetic":
            return {
                "num_classes": self.num_classes or SYNTHETIC_DEFAULT_CLASSES,
                "size": self.image_size or SYNTHETIC_DEFAULT_SIZE,
                "seed": self.seed,
            }
        if self.dataset == "folder":
            return {"num_classes": self.num_classes, "channels": self.in_channels}
        if self.dataset in RESIZED_DATASETS and self.image_size is not None:
            return {"resize": self.image_size}
        return {}

    def normalization(self) -> dict[str, tuple[float, ...]]:
        """`{"mean": ..., "std": ...}` per channel: the config's, or ImageNet's for RGB."""
        if self.mean is None:
            return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        return {"mean": self.mean, "std": self.std}

    def preprocessing(self) -> Preprocessing:
        """How this run prepares images, saved with the model: its normalisation, and
        `image_size` where the dataset resizes every image to it (CamVid)."""
        resized = self.image_size if self.dataset in RESIZED_DATASETS else None
        return Preprocessing(resized, **self.normalization())

    def train_transform(self) -> TrainTransform:
        """The paper's augmentation with this config's crop, scale range, flip and normalisation."""
        return TrainTransform(self.crop_size, self.scale_range, self.flip, **self.normalization())

    def eval_transform(self) -> EvalTransform:
        """Whole-image evaluation with this config's normalisation."""
        return EvalTransform(**self.normalization())

    def build_dataset(self, split: str, transform: Transform | None = None) -> SegmentationDataset:
        """The `split` of this config's dataset, read with `transform`."""
        return build_dataset(self.dataset, self.data_root, split, transform, **self.dataset_options())

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed settings (tuples as lists), for JSON and for checkpoints."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config of `to_dict`'s output; unknown keys are refused by name."""
        if "bf16" in values:  # checkpoints written before --precision replaced --bf16
            legacy = values["bf16"]
            values = {key: value for key, value in values.items() if key != "bf16"}
            values.setdefault("precision", "bf16" if legacy else "fp32")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    def format(self) -> str:
        """One `name = value` line per setting, for the start of a run's log."""
        return "\n".join(f"  {name} = {value!r}" for name, value in asdict(self).items())

    # --- command line --------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per setting, defaulting to the paper's recipe."""
        d = cls(device="cpu")
        model = parser.add_argument_group("model")
        model.add_argument("--model", choices=tuple(MODELS), default=d.model, help="architecture")
        model.add_argument("--depth", type=int, choices=RESNET_DEPTHS, default=d.depth, help="ResNet depth")
        model.add_argument(
            "--no-aspp",
            dest="aspp",
            action="store_false",
            help="DifNet's noASPP seed head (one 3x3 conv instead of ASPP)",
        )
        model.add_argument(
            "--walk",
            choices=WALK_METHODS,
            default=d.walk,
            help="how P_t y is computed (materialized: explicit P, for debugging)",
        )
        model.add_argument(
            "--diffusion-stride",
            type=int,
            choices=DIFFUSION_STRIDES,
            default=d.diffusion_stride,
            help="output stride of the grid the walks run on",
        )
        model.add_argument(
            "--psi-scale-init",
            type=float,
            default=d.psi_scale_init,
            help="initial BN scale of DifNet's Psi_t (1.0: the authors' code; "
            "default 64^-1/4: unsaturated transitions at init)",
        )
        model.add_argument(
            "--head-init",
            choices=HEAD_INITS,
            default=d.head_init,
            help="score head init: 'he' as the authors' code trains it, 'normal' DeepLab's N(0, 0.01)",
        )
        model.add_argument(
            "--shared-backbone",
            action="store_true",
            help="DifNet: read the similarity levels from the seed backbone (one ResNet, not two)",
        )
        model.add_argument(
            "--normalize-importance",
            action="store_true",
            help="DifNet: divide the importance map by its per-image mean (relative weights only)",
        )
        model.add_argument(
            "--gradient-checkpointing",
            action="store_true",
            help="recompute the backbones' stages in backward: less memory, more time",
        )
        model.add_argument(
            "--in-channels",
            type=int,
            default=d.in_channels,
            help="image channels (1 grey, 4 RGB-NIR, ...); a pretrained conv1 is adapted",
        )
        data_stats = parser.add_argument_group("normalisation (needed for images other than RGB)")
        data_stats.add_argument(
            "--mean",
            type=float,
            nargs="+",
            metavar="M",
            help="per-channel mean of the images in [0, 1] (default: ImageNet's)",
        )
        data_stats.add_argument(
            "--std",
            type=float,
            nargs="+",
            metavar="S",
            help="per-channel standard deviation in [0, 1] (default: ImageNet's)",
        )
        model.add_argument(
            "--freeze-backbone",
            action="store_true",
            help="train only the heads (and DifNet's projections and walks)",
        )
        model.add_argument(
            "--norm-eval",
            action="store_true",
            help="keep every BN layer in eval mode (running statistics frozen)",
        )
        model.add_argument(
            "--pretrained-backbone",
            metavar="PATH_OR_imagenet",
            help="torchvision ResNet checkpoint for the backbones, or 'imagenet'",
        )
        model.add_argument(
            "--init-from",
            metavar="CHECKPOINT_OR_FOLDER",
            help="start from a trained model's weights (a .pt, a save_pretrained folder or a Hub "
            "repo id) of the same architecture, for any number of classes: its class-dependent "
            "layers are re-initialised; unlike --resume, a new run with its own recipe",
        )
        data = parser.add_argument_group("data")
        data.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="dataset to train on")
        data.add_argument("--data-root", help="folder holding the dataset (not needed for synthetic)")
        data.add_argument(
            "--train-split", default=d.train_split, help="split to train on (voc: train_aug for SBD)"
        )
        data.add_argument(
            "--val-split",
            default=d.val_split,
            help="split evaluated after each epoch; 'none' to skip evaluation",
        )
        data.add_argument(
            "--num-classes", type=int, help="number of classes (folder: required; synthetic: default 5)"
        )
        data.add_argument(
            "--image-size",
            type=int,
            nargs=2,
            metavar=("H", "W"),
            help="resize every image on load (camvid) or the scene size (synthetic)",
        )
        data.add_argument(
            "--crop-size",
            type=int,
            nargs="+",
            default=list(d.crop_size),
            metavar="PX",
            help="training crop: one side for a square, or H W",
        )
        data.add_argument(
            "--scale-range",
            type=float,
            nargs=2,
            default=list(d.scale_range),
            metavar=("LOW", "HIGH"),
            help="random rescaling range before the crop",
        )
        data.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
        data.add_argument("--workers", type=int, default=d.workers, help="data-loading processes")
        optim = parser.add_argument_group("optimisation")
        optim.add_argument(
            "--batch-size", type=int, default=d.batch_size, help="images per process and forward pass"
        )
        optim.add_argument(
            "--accumulate",
            type=int,
            default=d.accumulate,
            help="forward passes whose gradients are summed per optimiser step",
        )
        optim.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training split")
        optim.add_argument("--max-steps-per-epoch", type=int, help="cut each epoch short (quick runs)")
        optim.add_argument(
            "--lr", type=float, default=d.lr, help="base learning rate (every parameter group scales it)"
        )
        optim.add_argument(
            "--head-lr-mult",
            type=float,
            default=d.head_lr_mult,
            help="learning-rate factor of the heads and projections (authors: 1)",
        )
        optim.add_argument(
            "--walk-lr-mult",
            type=float,
            default=d.walk_lr_mult,
            help="learning-rate factor of DifNet's walk weights mu_t, beta_t (authors: 1)",
        )
        optim.add_argument(
            "--walk-weight-decay",
            type=float,
            help="weight decay of the walk weights (default: --weight-decay, as the authors)",
        )
        optim.add_argument(
            "--aux-seed-weight",
            type=float,
            default=d.aux_seed_weight,
            help="DifNet: weight of an auxiliary cross-entropy on the seed scores x (0: the paper's "
            "single loss on y_5)",
        )
        optim.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
        optim.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay")
        optim.add_argument(
            "--poly-power", type=float, default=d.poly_power, help="power of the poly schedule"
        )
        optim.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=d.precision,
            help="autocast: bf16 (fast on recent GPUs, slow on many CPUs) or fp16 with a "
            "gradient scaler (GPUs without bf16); the walks always run in fp32",
        )
        optim.add_argument(
            "--bf16",
            dest="precision",
            action=_DeprecatedBf16,
            nargs=0,
            help="deprecated alias of --precision bf16",
        )
        optim.add_argument(
            "--on-nonfinite",
            choices=NONFINITE_POLICIES,
            default=d.on_nonfinite,
            help="on a NaN/inf loss or gradient: stop the run, or skip that step",
        )
        run = parser.add_argument_group("run")
        run.add_argument(
            "--seed", type=int, default=d.seed, help="seed of the data order, augmentation and init"
        )
        run.add_argument(
            "--device", default=default_device(), help="torch device (under torchrun: cuda or cpu)"
        )
        run.add_argument("--output-dir", default=d.output_dir, help="where checkpoints and logs go")
        run.add_argument("--overwrite", action="store_true", help="reuse a non-empty output directory")
        run.add_argument(
            "--resume",
            metavar="CHECKPOINT",
            help="continue a run from its last.pt with the recipe stored there; only "
            + ", ".join("--" + n.replace("_", "-") for n in RESUME_CHANGEABLE[:-1])
            + " may be given beside it",
        )
        run.add_argument(
            "--save-every",
            type=int,
            metavar="STEPS",
            help="also write last.pt every STEPS optimiser steps (a crash loses at most that many)",
        )
        run.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N epochs")
        run.add_argument("--log-every", type=int, default=d.log_every, help="log the loss every N steps")
        run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
        defaults = cls()
        parser.set_defaults(**{f.name: Default(getattr(defaults, f.name)) for f in fields(cls)})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of options parsed by `add_arguments`; with `--resume`, the recipe stored in
        that checkpoint, changed only by the options given on the command line."""
        values, given = {}, {}
        for name in (f.name for f in fields(cls) if hasattr(args, f.name)):
            value = getattr(args, name)
            if isinstance(value, Default):
                values[name] = value.value
            else:
                values[name] = given[name] = _normalise_option(name, value)
        if values.get("resume"):
            return resume_config(values["resume"], given)
        return cls(**values)


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


class _DeprecatedBf16(argparse.Action):
    """`--bf16`, kept working as `--precision bf16` with a warning."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        warnings.warn("--bf16 is deprecated; use --precision bf16", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, "bf16")


@dataclass(frozen=True)
class Default:
    """A default in a parsed namespace, so a value the user typed (even an equal one) is told
    apart from one they left out; prints as the value in `--help`."""

    value: Any

    def __str__(self) -> str:
        return str(self.value)


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
