"""Loading torchvision ImageNet ResNet checkpoints into the dilated backbones.

The checkpoint's depth is read from its keys (stage block counts, basic or bottleneck blocks)
and must match the backbone's; torchvision's `fc.*` classifier is reported as unexpected.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from difnet.models.resnet import RESNET_SPECS, Bottleneck

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
TORCHVISION_URLS: dict[int, str] = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    152: "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}

PretrainedSource = str | os.PathLike[str]
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


@dataclass(frozen=True)
class LoadReport:
    """What a checkpoint load left out: model keys it lacked and checkpoint keys nobody took."""

    source: str
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]


def read_resnet_state_dict(source: PretrainedSource, depth: int) -> tuple[dict[str, Tensor], str]:
    """The state dict of a torchvision ResNet-`depth` from a file or `"imagenet"` (download).

    Returns the tensors and a description of where they came from. Refuses files that are
    not state dicts, hold pickled code, or hold a ResNet of another depth.
    """
    if isinstance(source, str) and source.lower() == IMAGENET:
        state, origin = _download_imagenet(depth), TORCHVISION_URLS[depth]
    else:
        state, origin = _read_file(Path(source)), str(source)
    found = resnet_depth(state)
    if found is None:
        raise ValueError(f"{origin} is not a torchvision ResNet state dict (no conv1/layer1-4 keys)")
    if found != depth:
        raise ValueError(
            f"{origin} holds a ResNet-{found} checkpoint but the model's backbone is "
            f"ResNet-{depth}; pass a resnet{depth} checkpoint or build the model with depth={found}"
        )
    return state, origin


def load_pretrained_backbones(
    backbones: Mapping[str, nn.Module], source: PretrainedSource, depth: int, in_channels: int = 3
) -> dict[str, LoadReport]:
    """Read the ResNet-`depth` checkpoint `source` once and load it into every named backbone,
    its first convolution adapted to `in_channels` (`adapt_first_conv`)."""
    state, origin = read_resnet_state_dict(source, depth)
    state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_channels)
    return {name: load_backbone(module, state, origin) for name, module in backbones.items()}


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """An RGB `conv1` weight `[64, 3, k, k]` for `in_channels` inputs, as smp does: the mean of
    the three for one channel; for more, the RGB filters repeated in turn and scaled by
    `3 / in_channels`, which keeps the response's scale (exactly the RGB response to an image
    repeated `in_channels / 3` times when that divides)."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.mean(dim=1, keepdim=True)
    repeated = weight[:, [c % weight.shape[1] for c in range(in_channels)]]
    return repeated * (weight.shape[1] / in_channels)


def load_backbone(backbone: nn.Module, state: Mapping[str, Tensor], origin: str) -> LoadReport:
    """Copy `state` into `backbone` non-strictly, after checking every shared key's shape."""
    wrong = shape_mismatches(backbone, state)
    if wrong:
        raise ValueError(f"{origin} does not fit the backbone: " + "; ".join(wrong[:5]))
    result = backbone.load_state_dict(state, strict=False)
    report = LoadReport(origin, tuple(result.missing_keys), tuple(result.unexpected_keys))
    logger.info(
        "loaded %s: %d tensors, missing %s, unexpected %s",
        origin,
        len(state) - len(report.unexpected_keys),
        list(report.missing_keys) or "none",
        list(report.unexpected_keys) or "none",
    )
    if report.missing_keys:
        logger.warning("%s lacks backbone tensors %s", origin, list(report.missing_keys))
    return report


def shape_mismatches(module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """`"key: checkpoint (shape) vs model (shape)"` for each tensor of `state` that `module`
    holds with another shape."""
    own = module.state_dict()
    return [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and value.shape != own[key].shape
    ]


def resnet_depth(state: Mapping[str, Tensor]) -> int | None:
    """The torchvision ResNet depth whose layout `state` has, or None if it matches none."""
    blocks = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, index = int(match[1]) - 1, int(match[2])
            blocks[stage] = max(blocks[stage], index + 1)
    bottleneck = any(key.endswith(".conv3.weight") for key in state)
    for depth, (block, layers) in RESNET_SPECS.items():
        if tuple(blocks) == layers and (block is Bottleneck) == bottleneck:
            return depth
    return None


def _read_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained backbone checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError here
        raise ValueError(
            f"{path} is not a loadable weights-only checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _download_imagenet(depth: int) -> dict[str, Tensor]:
    url = TORCHVISION_URLS[depth]
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except OSError as error:  # URLError and socket errors are OSErrors
        filename = url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not download the ImageNet ResNet-{depth} weights from {url} ({error}). "
            f"Fetch {filename} on a machine with internet access and pass its path as "
            f"pretrained_backbone='/path/to/{filename}', or put it in {cache}"
        ) from error
