"""DifNet: a seed branch (DeepLabV2-style scores times an importance map) diffused by a cascade
of random walks whose transition matrices come from a second, similarity backbone (Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
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
from difnet.models.base import SegmentationModel
from difnet.models.checkpointing import recomputed
from difnet.models.heads import (
    DEFAULT_HEAD_INIT,
    HEAD_INITS,
    UNSATURATED_PSI_SCALE,
    ImportanceHead,
    Projection,
    score_head,
    upsample,
)
from difnet.models.pretrained import PretrainedSource
from difnet.models.resnet import DilatedResNet

NUM_LEVELS = 5  # the input image and the outputs of layer1..layer4
DIFFUSION_STRIDES: tuple[int, ...] = (4, 8)


@dataclass
class DifNetOutput:
    """Everything DifNet computes for a batch; maps are `[B, C, h, w]`.

    `scores` (x), `importance` (M) and `seed` (s = M x) lie on the output-stride-8 grid;
    `walks` (y_1..y_5) on the diffusion grid (stride 8, or 4 with `diffusion_stride=4`);
    `logits` is y_5 upsampled to the input size; `mu`, `beta` are `[5]` tensors; `features`
    are the 5 levels' node features Psi_t `[B, N, 64]` that every P_t comes from, through `kernel`
    and each walk's learned logit factor in `temperatures` (None where it has none).
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


class DifNet(SegmentationModel):
    """DifNet-`depth`: `model(images [B, C, H, W])` -> logits `[B, num_classes, H, W]`.

    `aspp=False` gives the paper's noASPP seed head; `walk="materialized"` builds every P_t
    explicitly (debugging); `diffusion_stride=4` diffuses on a 2x finer grid than the seed's.
    `psi_scale_init` is the initial BN scale of every Psi_t: the default 64^(-1/4) starts
    `f f^T` at 1/8 of its BN-normalised value so the walks mix from the first step; 1.0 is the
    authors' code exactly (docs/fidelity.md). `gradient_checkpointing=True` recomputes the
    backbones' stages and the Psi_t during backward: the same gradients for about half the
    training memory.
    `pretrained_backbone` (a torchvision ResNet checkpoint path, or "imagenet") initialises
    both backbones; the loads' missing/unexpected keys are kept in `backbone_load_reports`.
    `in_channels` other than 3 (grey, RGB-NIR, ...) also sets Psi_0's, which sees the image.

    Options beyond the paper: `head_init` "normal" (the default: better from scratch) starts the
    score head at DeepLab's N(0, 0.01), "he" at the authors' effective init (their model exactly);
    each of the following off gives the authors' model:
    `shared_backbone=True` reads the similarity levels from the seed backbone (one ResNet, half
    the compute, every layer trained by both branches); `normalize_importance=True` divides M by
    its per-image mean over the grid, so M weights nodes relative to each other without scaling
    the seed, and the gradient reaching the seed branch, down (y_5 is linear in s, so this only
    fixes the scale of the logits, not their argmax).
    The transition kernel (`difnet.diffusion.TransitionKernel`): `kernel` "dot" is the paper's
    `f_i . f_j`, "distance" `-||f_i - f_j||^2`, "identity" P = I (every walk returns the seed: the
    first stage of staged training); `kernel_radius` r keeps each row to the nodes within r grid
    cells; `learn_temperature=True` gives every walk a learned factor on its logits;
    `beta_init` below 0.5 starts the walks nearer switched off (the paper: 0.5).
    """

    name = "difnet"

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 21,
        aspp: bool = True,
        pretrained_backbone: PretrainedSource | None = None,
        walk: WalkMethod = "fused",
        diffusion_stride: int = 8,
        psi_scale_init: float = UNSATURATED_PSI_SCALE,
        gradient_checkpointing: bool = False,
        in_channels: int = 3,
        head_init: str = DEFAULT_HEAD_INIT,
        shared_backbone: bool = False,
        normalize_importance: bool = False,
        kernel: str = "dot",
        kernel_radius: int | None = None,
        learn_temperature: bool = False,
        beta_init: float = 0.5,
    ) -> None:
        super().__init__(depth=depth, num_classes=num_classes, in_channels=in_channels,
                         gradient_checkpointing=gradient_checkpointing, aspp=aspp, walk=walk,
                         diffusion_stride=diffusion_stride, head_init=head_init,
                         shared_backbone=shared_backbone, normalize_importance=normalize_importance,
                         kernel=kernel, kernel_radius=kernel_radius, learn_temperature=learn_temperature,
                         beta_init=beta_init)  # fmt: skip
        if (
            isinstance(psi_scale_init, bool)
            or not isinstance(psi_scale_init, int | float)
            or not (0 < psi_scale_init < float("inf"))
        ):
            raise ValueError(f"psi_scale_init must be a positive number (got {psi_scale_init!r})")
        for name, flag in (("aspp", aspp), ("shared_backbone", shared_backbone),
                           ("normalize_importance", normalize_importance),
                           ("learn_temperature", learn_temperature)):  # fmt: skip
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False (got {flag!r})")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS} (got {head_init!r})")
        if walk not in WALK_METHODS:
            raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
        if diffusion_stride not in DIFFUSION_STRIDES:
            raise ValueError(
                f"diffusion_stride must be one of {DIFFUSION_STRIDES} (got {diffusion_stride!r})"
            )
        self.diffusion_stride = diffusion_stride
        self.normalize_importance = normalize_importance
        self.seed_frozen = False
        self.seed_backbone = self.new_backbone()
        self.classifier = score_head(self.seed_backbone.out_channels[-1], num_classes, aspp, head_init)
        self.importance = ImportanceHead(num_classes)
        self.similarity_backbone = None if shared_backbone else self.new_backbone()
        level_channels = (in_channels, *self.seed_backbone.out_channels)
        self.projections = nn.ModuleList(Projection(c, scale_init=psi_scale_init) for c in level_channels)
        self.kernel = TransitionKernel(kernel, kernel_radius)
        self.cascade = Cascade(NUM_LEVELS, walk, self.kernel, learn_temperature=learn_temperature,
                               beta_init=beta_init)  # fmt: skip
        self.load_pretrained_backbone(pretrained_backbone)

    def backbones(self) -> dict[str, DilatedResNet]:
        if self.similarity_backbone is None:
            return {"seed": self.seed_backbone}
        return {"seed": self.seed_backbone, "similarity": self.similarity_backbone}

    def walk_parameters_module(self) -> nn.Module:
        return self.cascade

    def seed_branch_modules(self) -> dict[str, nn.Module]:
        """The modules that make the seed `s = M x`, by state-dict prefix: the seed backbone, the
        score head and the importance map (staged training trains them first, then freezes them)."""
        return {
            "seed_backbone": self.seed_backbone,
            "classifier": self.classifier,
            "importance": self.importance,
        }

    def freeze_seed_branch(self, frozen: bool = True) -> DifNet:
        """Stop (or resume) training the seed branch, whose BN layers then stay in eval mode: staged
        training's second stage, where only Psi_t, the kernel and the walks (and a separate similarity
        backbone) learn. With `shared_backbone` the similarity levels come from the frozen backbone.
        Returns the model."""
        self.seed_frozen = frozen
        for module in self.seed_branch_modules().values():
            module.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> DifNet:
        super().train(mode)
        if mode and self.seed_frozen:
            for module in self.seed_branch_modules().values():
                module.eval()
        return self

    def forward(self, images: Tensor, *, intermediates: bool = False) -> Tensor | DifNetOutput:
        """Images `[B, C, H, W]` (normalised floats) -> logits `[B, K, H, W]`, or with
        `intermediates=True` the whole `DifNetOutput` (through `forward`, so that wrappers such
        as DistributedDataParallel see it: training's auxiliary seed loss uses it)."""
        out = self.forward_intermediates(images)
        return out if intermediates else out.logits

    def forward_intermediates(self, images: Tensor) -> DifNetOutput:
        """The full computation: scores, importance, seed, every walk, and the walk weights."""
        self.check_images(images)
        if self.similarity_backbone is None:  # one backbone pass feeds both branches
            stages = self.seed_backbone(images)
            return self.diffuse(self.classifier(stages[-1]), [images, *stages])
        return self.diffuse(self.seed_branch(images), self.similarity_branch(images))

    def seed_branch(self, images: Tensor) -> Tensor:
        """Class scores x `[B, K, h', w']` of the seed backbone and its classifier (stride 8)."""
        return self.classifier(self.seed_backbone(images)[-1])

    def similarity_branch(self, images: Tensor) -> list[Tensor]:
        """The 5 levels the transition matrices come from: `images` and layer1..layer4's outputs
        (of the seed backbone with `shared_backbone`)."""
        backbone = self.similarity_backbone or self.seed_backbone
        return [images, *backbone(images)]

    def diffuse(self, scores: Tensor, levels: Sequence[Tensor]) -> DifNetOutput:
        """The diffusion stage on the branches' outputs: importance map, seed, Psi_t, the 5 walks,
        upsampling to the input size (a method apart so the branches can be timed or overlapped)."""
        importance = self.importance(scores)
        if self.normalize_importance:
            importance = importance / importance.mean(dim=(-2, -1), keepdim=True)
        seed = importance * scores
        features, grid = self._diffusion_features(levels)
        walks = self.cascade(features, flatten_nodes(upsample(seed, grid)), grid)
        maps = [unflatten_nodes(y, grid) for y in walks]
        return DifNetOutput(
            logits=upsample(maps[-1], levels[0].shape[-2:]),
            scores=scores,
            importance=importance,
            seed=seed,
            walks=maps,
            mu=self.cascade.mu,
            beta=self.cascade.beta,
            features=features,
            kernel=self.kernel,
            temperatures=[walk.temperature for walk in self.cascade.walks],
        )

    def _diffusion_features(self, levels: Sequence[Tensor]) -> tuple[list[Tensor], tuple[int, int]]:
        """`Psi_t` node features `[B, N, 64]` of the 5 levels, and the diffusion grid `(h, w)`."""
        # layer1 is at stride 4 and layer4 at the seed's stride 8
        grid = tuple(levels[1 if self.diffusion_stride == 4 else -1].shape[-2:])
        # Psi_0 works at the input's full resolution: with checkpointing, recompute it too
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        features = [
            flatten_nodes(
                recomputed(partial(psi, size=grid), level, [psi.bn]) if recompute else psi(level, grid)
            )
            for psi, level in zip(self.projections, levels, strict=True)
        ]
        return features, grid

    def transition_rows(
        self,
        images: Tensor,
        nodes: Tensor | Sequence[Sequence[int]],
        *,
        levels: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Rows of every `P_t` for grid nodes `(row, col)` `[n, 2]`, as maps `[B, 5, n, h, w]`.

        Only the `n` requested rows are computed; `(h, w)` is the diffusion grid of `images`.
        `levels`, this model's `similarity_branch(images)` when already computed, saves
        running the similarity backbone again.
        """
        self.check_images(images)
        levels = self.similarity_branch(images) if levels is None else levels
        features, grid = self._diffusion_features(levels)
        flat = _flat_node_indices(nodes, grid, images.device)
        rows = torch.stack(
            [
                transition_rows(f, flat, kernel=self.kernel, grid=grid, temperature=walk.temperature)
                for f, walk in zip(features, self.cascade.walks, strict=True)
            ],
            dim=1,
        )
        return rows.unflatten(-1, grid)

    def walk_parameters(self) -> dict[str, list[float]]:
        """The learned walk weights, `{"mu": [mu_1..mu_5], "beta": [beta_1..beta_5]}` (Table 3)."""
        with torch.no_grad():
            return {"mu": self.cascade.mu.tolist(), "beta": self.cascade.beta.tolist()}


def _flat_node_indices(
    nodes: Tensor | Sequence[Sequence[int]], grid: tuple[int, int], device: torch.device
) -> Tensor:
    """Flat indices `row * w + col` of `(row, col)` pairs `[n, 2]`, checked against the grid."""
    nodes = torch.as_tensor(nodes, device=device)
    if nodes.dim() != 2 or nodes.shape[1] != 2 or nodes.is_floating_point() or nodes.dtype == torch.bool:
        raise ValueError(
            f"nodes must be integer (row, col) pairs of shape [n, 2] "
            f"(got dtype {nodes.dtype}, shape {tuple(nodes.shape)})"
        )
    height, width = grid
    rows, cols = nodes.unbind(1)
    if bool(((rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)).any()):
        raise ValueError(f"nodes must lie on the {height}x{width} diffusion grid (got {nodes.tolist()})")
    return rows * width + cols
