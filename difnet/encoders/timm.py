"""timm's models as encoders by name, smp's convention: `"tu-<timm model name>"` (e.g.
`DifNet(encoder="tu-convnext_atto")`) is `timm.create_model(name, features_only=True)` at output
stride 8, DeepLab's and the dilated ResNets' default; `"tu-<name>_os16"` and `"tu-<name>_os32"` at 16
and 32. Nothing is registered: the models resolve a `tu-` name when they are built or loaded, with
random weights (`pretrained_backbone=True` then loads timm's own). It needs timm
(`pip install "difnet[timm]"`), and a model that trades stride for dilation (timm's `output_stride`:
resnet*, convnext*, efficientnet*, mobilenetv3*, regnet*, ...); one that cannot (ViT, Swin) is refused."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial
from types import ModuleType

from torch import Tensor, nn

TIMM_PREFIX = "tu-"
TIMM_EXTRA = 'pip install "difnet[timm]"'
DEFAULT_OUTPUT_STRIDE = 8
# the name's tail that asks for another output stride than the default: "tu-resnet18_os16"
OUTPUT_STRIDE_TAILS: dict[str, int] = {"_os16": 16, "_os32": 32}


def is_timm_encoder(name: object) -> bool:
    """Whether `name` names a timm model (`"tu-..."`) rather than a registered encoder."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def timm_model(name: str) -> tuple[str, int]:
    """The timm model name and output stride of a `tu-` name: `"tu-resnet18_os16"` -> `("resnet18", 16)`."""
    model = name.removeprefix(TIMM_PREFIX)
    for tail, stride in OUTPUT_STRIDE_TAILS.items():
        if model.endswith(tail):
            return model.removesuffix(tail), stride
    return model, DEFAULT_OUTPUT_STRIDE


def import_timm(name: str, argument: str = "encoder") -> ModuleType:
    """The `timm` module; without it, a `ValueError` naming `argument`, `name` and the extra to install."""
    try:
        import timm
    except ImportError as error:
        raise ValueError(
            f"{argument}={name!r} is a timm model ('tu-' names), which needs timm: {TIMM_EXTRA}"
        ) from error
    return timm


def check_timm_encoder(name: str, argument: str = "encoder") -> str:
    """`name` if timm is installed and has its model, else a `ValueError` (the extra to install, or
    timm's names closest to the unknown one)."""
    timm = import_timm(name, argument)
    model, _ = timm_model(name)
    if not model or not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise ValueError(
            f"{argument}={name!r}: timm {timm.__version__} has no model {model!r}{hint}; "
            "timm.list_models('pattern*') lists its names"
        )
    return name


class TimmEncoder(nn.Module):
    """A timm model's `features_only` stages as an encoder: `out_channels` and `strides` from its
    `feature_info`, every stage's map returned. `gradient_checkpointing` goes to timm's
    `set_grad_checkpointing`, where the model has it (timm's recomputation moves the BN running
    statistics a second time per step, unlike the dilated ResNets' `recomputed`)."""

    def __init__(self, name: str, *, in_channels: int = 3, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.name = check_timm_encoder(name)
        self.in_channels = in_channels
        self.model = self._create(pretrained=False)
        self.out_channels: tuple[int, ...] = tuple(self.model.feature_info.channels())
        self.strides: tuple[int, ...] = tuple(self.model.feature_info.reduction())
        if gradient_checkpointing and hasattr(self.model, "set_grad_checkpointing"):
            self.model.set_grad_checkpointing(True)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images `[B, C, H, W]` -> the stages' maps."""
        return list(self.model(images))

    def load_timm_weights(self) -> str:
        """Load timm's pretrained weights of this model (fetched by timm, or from its cache) and
        return where they came from; a clear `RuntimeError` when they cannot be fetched."""
        model, _ = timm_model(self.name)
        try:
            pretrained = self._create(pretrained=True)
        except (OSError, RuntimeError) as error:  # huggingface_hub's and urllib's errors are these
            raise RuntimeError(
                f"could not fetch timm's pretrained weights of {model!r} for encoder {self.name!r} "
                f"({type(error).__name__}: {error}). Offline, fetch them into timm's cache (the Hugging "
                "Face cache, HF_HOME) on a machine with internet access, or build without pretrained_backbone"
            ) from error
        self.model.load_state_dict(pretrained.state_dict())
        return f"timm {pretrained.pretrained_cfg.get('hf_hub_id') or model}"

    def _create(self, pretrained: bool) -> nn.Module:
        timm = import_timm(self.name)
        model, stride = timm_model(self.name)
        try:
            return timm.create_model(model, features_only=True, in_chans=self.in_channels,
                                     pretrained=pretrained, output_stride=stride)  # fmt: skip
        except (TypeError, AssertionError) as error:  # timm's refusals of `output_stride`
            raise ValueError(
                f"encoder {self.name!r}: timm model {model!r} cannot be built at output stride {stride} "
                f"({type(error).__name__}: {error}); only models that trade stride for dilation can "
                "(resnet*, convnext*, efficientnet*, mobilenetv3*, regnet*, ...)"
            ) from error


def timm_builder(name: str) -> Callable[..., TimmEncoder]:
    """The builder of the `tu-` encoder `name`, taking every builder's `in_channels` and
    `gradient_checkpointing`."""
    return partial(TimmEncoder, name)
