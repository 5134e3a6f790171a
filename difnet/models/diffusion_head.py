"""DifNet's diffusion stage as a module of its own (Sec. 4): the importance map M, the node
features Psi_t of each similarity level and the cascade of random walks, on class scores and
feature maps from any model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difnet.diffusion import (
    PAPER_KERNEL,
    WALK_METHODS,
    Cascade,
    TransitionKernel,
    WalkMethod,
    flatten_nodes,
    transition_rows,
    unflatten_nodes,
)
from difnet.diffusion.guided import DEFAULT_STEPS, GuidedWalk, log_probabilities
from difnet.models.checkpointing import recomputed
from difnet.models.heads import upsample
from difnet.models.serialization import load_state, read_saved, save_pretrained
from difnet.models.validation import check_num_classes, check_positive_int

PROJECTION_CHANNELS = 64
# Psi's BN scale at init such that f f^T starts as (BN-normalised inner product) / sqrt(64),
# the softmax's scale in attention: unsaturated transitions from the first step (docs/fidelity.md)
UNSATURATED_PSI_SCALE = PROJECTION_CHANNELS**-0.25


def _importance_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 5, padding=2, bias=False)


class ImportanceHead(nn.Sequential):
    """`M = H(x)`: BN-ReLU-conv5x5 three times (K -> 8 -> 4 -> 1), then sigmoid; `[B, 1, h, w]`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
            _importance_conv(num_classes, 8),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            _importance_conv(8, 4),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            _importance_conv(4, 1),
            nn.Sigmoid(),
        )


class Projection(nn.Module):
    """`Psi_t`: 1x1 convolution to 64 channels (with bias), BN, adaptive max pool to the grid.

    `scale_init` is the BN scale gamma at init (1 in the authors' code). Since
    `f f^T = sum_c gamma_c^2 z_c z_c^T` for BN-normalised `z`, gamma is a learned per-channel
    temperature of the transition softmax, and `scale_init` its starting value.
    """

    def __init__(
        self, in_channels: int, out_channels: int = PROJECTION_CHANNELS, scale_init: float = 1.0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, scale_init)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Features `[B, C_t, H_t, W_t]` -> `[B, 64, h, w]` (channels_last) on the grid `size`.

        Runs in the parameters' dtype with autocast off: the features enter `f f^T` unscaled, so
        bfloat16 rounding here would move the transition matrices as much as rounding the logits.
        """
        # channels_last halves the time of Psi_0 (64 channels at full resolution) on CPU,
        # and the pooled maps then flatten to nodes without a copy
        x = x.to(self.conv.weight.dtype).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, enabled=False):
            if self.training:
                x = self.bn(self.conv(x))
            else:  # eval BN is a per-channel affine map: fold it into the conv, one pass less
                x = F.conv2d(x, *self._folded_conv())
            if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
                return adaptive_max_pool_by_gather(x, size)  # exporters lack adaptive max pooling
            return F.adaptive_max_pool2d(x, size)

    def _folded_conv(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of the 1x1 convolution equal to `bn(conv(x))` with running statistics."""
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = self.conv.weight * scale[:, None, None, None]
        return weight, (self.conv.bias - self.bn.running_mean) * scale + self.bn.bias


def adaptive_max_pool_by_gather(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.adaptive_max_pool2d(x, size)` from gathers and max-reductions, which ONNX has.

    Adaptive pooling's window `i` along a side of length `n` pooled to `m` is
    `[floor(i n / m), ceil((i + 1) n / m))`; the windows' lengths differ by at most one, so each
    is gathered at the longest length, a shorter one repeating its last index (a max ignores
    repeats). Max over a rectangle is the max over rows of the max over columns. The sizes must
    be static: the exported graph holds the windows as constants.
    """
    for dim, out in zip((-2, -1), size, strict=True):
        x = _pool_side(x, dim, int(x.shape[dim]), int(out))
    return x


def _pool_side(x: Tensor, dim: int, length: int, out: int) -> Tensor:
    starts = [i * length // out for i in range(out)]
    ends = [-(-(i + 1) * length // out) for i in range(out)]
    width = max(e - s for s, e in zip(starts, ends, strict=True))
    index = torch.tensor(
        [[min(s + k, e - 1) for k in range(width)] for s, e in zip(starts, ends, strict=True)],
        device=x.device,
    )
    gathered = x.index_select(dim, index.flatten())
    shape = (*x.shape[:dim], out, width) if dim == -1 else (*x.shape[:dim], out, width, x.shape[-1])
    return gathered.reshape(shape).amax(dim=-1 if dim == -1 else -2)


@dataclass
class DifNetOutput:
    """Everything the diffusion stage computes for a batch; maps are `[B, C, h, w]`.

    `scores` (x), `importance` (M) and `seed` (s = M x) lie on the scores' grid; `walks`
    (y_1..y_T) on the diffusion grid; `logits` is y_T upsampled to the output size; `mu`, `beta`
    are `[T]` tensors; `features` are the T levels' node features Psi_t `[B, N, 64]` that every
    P_t comes from, through `kernel` and each walk's learned logit factor in `temperatures`
    (None where it has none). `guided_probabilities` holds the guided walk's probabilities on its grid (None
    without one), of which `logits` is then the log, upsampled; `guide` the level that joined the
    image in its kernel (None without one).
    """

    logits: Tensor
    scores: Tensor
    importance: Tensor
    seed: Tensor
    walks: list[Tensor]
    mu: Tensor
    beta: Tensor
    features: list[Tensor] = field(default_factory=list)
    kernel: TransitionKernel = PAPER_KERNEL
    temperatures: list[Tensor | None] = field(default_factory=list)
    guided_probabilities: Tensor | None = None
    guide: Tensor | None = None


def check_guided_walk_level(level: int | None, stride: int | None, levels: int) -> None:
    """A `ValueError` unless `level` is None, or the index of a level after the image (1 to
    `levels - 1`) for a head with a guided walk (`stride` not None)."""
    if level is None:
        return
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level < levels:
        raise ValueError(f"guided_walk_level must be None or a level index in [1, {levels}) (got {level!r})")
    if stride is None:
        raise ValueError(f"guided_walk_level={level} guides the guided walk: give guided_walk_stride too")


class DiffusionHead(nn.Module):
    """`head(scores [B, K, h, w], levels)` -> `DifNetOutput`: the seed `s = M x` diffused by one
    random walk per feature map in `levels` (of any strides; `level_channels` their channels).

    The diffusion grid is the scores' grid, or with `grid_level=i` the grid of `levels[i]`: for
    an encoder at output stride 16 or 32, `grid_level` naming its stride-8 (or stride-4) stage
    diffuses the upsampled seed on that finer grid. `logits` are y_T upsampled to `output_size`
    (default: the grid of `levels[0]`, the input size when the image is the first level).
    The walk and kernel options are `difnet.diffusion`'s (`Cascade`, `TransitionKernel`);
    `normalize_importance` divides M by its per-image mean; `psi_scale_init` is every Psi_t's BN
    scale at init; `gradient_checkpointing` recomputes the Psi_t during backward.
    `guided_walk_stride` ends the cascade with a `difnet.diffusion.guided.GuidedWalk` of
    `guided_walk_steps` steps on `levels[0]` (the image, in DifNet) pooled by that stride: y_T's
    probabilities diffused between nearby pixels of similar colour, on a grid finer than the
    seed's; `logits` are then their log. None (the default) is the paper's cascade.
    `guided_walk_level=i` (i >= 1) adds `levels[i]` to the guided walk's kernel (its `guide`).
    """

    name: ClassVar[str] = "diffusion_head"

    def __init__(
        self,
        level_channels: Sequence[int],
        num_classes: int,
        *,
        walk: WalkMethod = "fused",
        grid_level: int | None = None,
        psi_scale_init: float = UNSATURATED_PSI_SCALE,
        normalize_importance: bool = False,
        kernel: str = "dot",
        kernel_radius: int | None = None,
        learn_temperature: bool = False,
        beta_init: float = 0.5,
        gradient_checkpointing: bool = False,
        guided_walk_stride: int | None = None,
        guided_walk_steps: int = DEFAULT_STEPS,
        guided_walk_level: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(level_channels, int | str) or not level_channels:
            raise ValueError(f"level_channels must list at least one channel count (got {level_channels!r})")
        level_channels = [check_positive_int(c, "level_channels entry") for c in level_channels]
        check_positive_int(guided_walk_steps, "guided_walk_steps")
        check_num_classes(num_classes)
        check_guided_walk_level(guided_walk_level, guided_walk_stride, len(level_channels))
        if walk not in WALK_METHODS:
            raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
        if grid_level is not None and (
            isinstance(grid_level, bool)
            or not isinstance(grid_level, int)
            or not 0 <= grid_level < len(level_channels)
        ):
            raise ValueError(
                f"grid_level must be None or a level index in [0, {len(level_channels)}) (got {grid_level!r})"
            )
        if (
            isinstance(psi_scale_init, bool)
            or not isinstance(psi_scale_init, int | float)
            or not (0 < psi_scale_init < float("inf"))
        ):
            raise ValueError(f"psi_scale_init must be a positive number (got {psi_scale_init!r})")
        for flag_name, flag in (("normalize_importance", normalize_importance),
                                ("learn_temperature", learn_temperature)):  # fmt: skip
            if not isinstance(flag, bool):
                raise TypeError(f"{flag_name} must be True or False (got {flag!r})")
        self._config = {"level_channels": level_channels, "num_classes": num_classes, "walk": walk,
                        "grid_level": grid_level, "psi_scale_init": psi_scale_init,
                        "normalize_importance": normalize_importance, "kernel": kernel,
                        "kernel_radius": kernel_radius, "learn_temperature": learn_temperature,
                        "beta_init": beta_init, "gradient_checkpointing": gradient_checkpointing,
                        "guided_walk_stride": guided_walk_stride, "guided_walk_steps": guided_walk_steps,
                        "guided_walk_level": guided_walk_level}  # fmt: skip
        self.num_classes = num_classes
        self.grid_level = grid_level
        self.normalize_importance = normalize_importance
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.importance = ImportanceHead(num_classes)
        self.projections = nn.ModuleList(Projection(c, scale_init=psi_scale_init) for c in level_channels)
        self.kernel = TransitionKernel(kernel, kernel_radius)
        self.cascade = Cascade(len(level_channels), walk, self.kernel, learn_temperature=learn_temperature,
                               beta_init=beta_init)  # fmt: skip
        self.guided_walk_level = guided_walk_level
        self.guided_walk = (
            None
            if guided_walk_stride is None
            else GuidedWalk(level_channels[0], stride=guided_walk_stride, steps=guided_walk_steps,
                            guide_channels=None if guided_walk_level is None else level_channels[guided_walk_level])
        )  # fmt: skip

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this head (`DiffusionHead(**config)` less
        `name`), JSON-serialisable."""
        return {"name": self.name, **self._config}

    def forward(
        self, scores: Tensor, levels: Sequence[Tensor], *, output_size: Sequence[int] | None = None
    ) -> DifNetOutput:
        """Importance map, seed, Psi_t, the T walks, and y_T upsampled to `output_size`."""
        self._check_inputs(scores, levels)
        importance = self.importance(scores)
        if self.normalize_importance:
            importance = importance / importance.mean(dim=(-2, -1), keepdim=True)
        seed = importance * scores
        grid = self.diffusion_grid(tuple(scores.shape[-2:]), levels)
        features = self.features(levels, grid)
        walks = self.cascade(features, flatten_nodes(upsample(seed, grid)), grid)
        maps = [unflatten_nodes(y, grid) for y in walks]
        size = levels[0].shape[-2:] if output_size is None else output_size
        guide = None if self.guided_walk_level is None else levels[self.guided_walk_level]
        guided = (
            None
            if self.guided_walk is None
            else self.guided_walk(maps[-1].float().softmax(1), levels[0], guide)
        )
        return DifNetOutput(
            logits=upsample(maps[-1], size) if guided is None else log_probabilities(upsample(guided, size)),
            scores=scores,
            importance=importance,
            seed=seed,
            walks=maps,
            mu=self.cascade.mu,
            beta=self.cascade.beta,
            features=features,
            kernel=self.kernel,
            temperatures=[walk.temperature for walk in self.cascade.walks],
            guided_probabilities=guided,
            guide=guide,
        )

    def diffusion_grid(self, scores_grid: tuple[int, int], levels: Sequence[Tensor]) -> tuple[int, int]:
        """The `(h, w)` grid the walks run on: `levels[grid_level]`'s, else the scores'."""
        return scores_grid if self.grid_level is None else tuple(levels[self.grid_level].shape[-2:])

    def features(self, levels: Sequence[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        """`Psi_t` node features `[B, N, 64]` of every level, pooled to `grid`."""
        # Psi_0 may work at the input's full resolution: with checkpointing, recompute it too
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        return [
            flatten_nodes(
                recomputed(partial(psi, size=grid), level, [psi.bn]) if recompute else psi(level, grid)
            )
            for psi, level in zip(self.projections, levels, strict=True)
        ]

    def transition_maps(self, flat_nodes: Tensor, levels: Sequence[Tensor], grid: tuple[int, int]) -> Tensor:
        """Rows `[B, T, n, h, w]` of every `P_t` for the flat node indices `[n]` of `grid`."""
        features = self.features(levels, grid)
        rows = torch.stack(
            [
                transition_rows(f, flat_nodes, kernel=self.kernel, grid=grid, temperature=walk.temperature)
                for f, walk in zip(features, self.cascade.walks, strict=True)
            ],
            dim=1,
        )
        return rows.unflatten(-1, grid)

    def _check_inputs(self, scores: Tensor, levels: Sequence[Tensor]) -> None:
        """Raise a clear error unless `scores` and `levels` fit this head."""
        if scores.dim() != 4 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores must be [B, {self.num_classes}, h, w] (got shape {tuple(scores.shape)})"
            )
        channels = [projection.conv.in_channels for projection in self.projections]
        if len(levels) != len(channels):
            raise ValueError(f"expected {len(channels)} levels, one per walk (got {len(levels)})")
        for t, (level, expected) in enumerate(zip(levels, channels, strict=True)):
            if level.dim() != 4 or level.shape[0] != scores.shape[0] or level.shape[1] != expected:
                raise ValueError(
                    f"levels[{t}] must be [{scores.shape[0]}, {expected}, H, W] "
                    f"(got shape {tuple(level.shape)})"
                )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` to `directory`, as the models do."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, source: str | Path) -> DiffusionHead:
        """The head saved by `save_pretrained` (a folder or a Hub repo id), in eval mode."""
        saved = read_saved(source)
        if saved.config.get("name") != cls.name:
            raise TypeError(f"{source} holds a model named {saved.config.get('name')!r}, not a {cls.name}")
        head = cls(**{key: value for key, value in saved.config.items() if key != "name"})
        load_state(head, saved.state, saved.weights)
        return head.eval()
