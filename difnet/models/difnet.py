"""DifNet: a seed branch (DeepLabV2-style scores times an importance map) diffused by a cascade
of random walks whose transition matrices come from a second, similarity encoder (Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from difnet.diffusion import WALK_METHODS, Cascade, TransitionKernel, WalkMethod
from difnet.diffusion.guided import DEFAULT_STEPS, check_walk_settings
from difnet.encoders.registry import check_encoder, model_encoder
from difnet.models.base import SegmentationModel
from difnet.models.diffusion_head import UNSATURATED_PSI_SCALE, DiffusionHead, DifNetOutput, ImportanceHead
from difnet.models.heads import DEFAULT_HEAD_INIT, HEAD_INITS, score_head
from difnet.models.pretrained import PretrainedSource

DEFAULT_DEPTH = 50
# the diffusion strides of the `depth` shorthand (a dilated ResNet at output stride 8): layer1's
# grid and the scores' (the training command line's choices)
DIFFUSION_STRIDES: tuple[int, ...] = (4, 8)


class DifNet(SegmentationModel):
    """DifNet on registered encoders: `model(images [B, C, H, W])` -> logits `[B, num_classes, H, W]`.

    The seed branch is `encoder` and a score head, the similarity branch `similarity_encoder`
    (by default the same encoder, a second copy): both names from `difnet.encoders.ENCODERS`, or
    timm models as `"tu-<timm name>"`.
    `depth=D` (default 50) is shorthand for `encoder="resnetD"`, the dilated ResNet-D at output
    stride 8 of the paper; giving both is refused unless they agree. They feed `head`, a
    `DiffusionHead`: the seed branch's class scores, and the image with the similarity encoder's
    stages as its levels (the ResNets' 4 stages: 5 levels, 5 walks).

    `diffusion_stride` is the stride (against the input) of the grid the walks run on: by default
    the scores' grid, at the seed encoder's output stride; a finer one is the grid of the first
    similarity encoder stage at that stride (for a ResNet at output stride 16, 8 diffuses the
    upsampled seed on layer2's grid; at output stride 8, 4 on layer1's). A stride no similarity
    stage has, or coarser than the scores', is refused.

    `aspp=False` gives the paper's noASPP seed head; `walk="materialized"` builds every P_t
    explicitly (debugging). `psi_scale_init` is the initial BN scale of every Psi_t: the default
    64^(-1/4) starts `f f^T` at 1/8 of its BN-normalised value so the walks mix from the first
    step; 1.0 is the authors' code exactly (docs/fidelity.md). `gradient_checkpointing=True`
    recomputes the encoders' stages (where they support it) and the Psi_t during backward: the
    same gradients for about half the training memory.
    `pretrained_backbone` (a torchvision ResNet checkpoint path, or "imagenet" / True) initialises
    both encoders, which must be ResNets, or timm models (`"tu-<timm name>"`) for "imagenet" / True,
    which load timm's own weights; the loads' missing/unexpected keys are kept in
    `backbone_load_reports`. `in_channels` other than 3 (grey, RGB-NIR, ...) also sets Psi_0's,
    which sees the image.

    Options beyond the paper: `head_init` "normal" (the default: better from scratch) starts the
    score head at DeepLab's N(0, 0.01), "he" at the authors' effective init (their model exactly);
    each of the following off gives the authors' model:
    `shared_backbone=True` reads the similarity levels from the seed encoder (one encoder, half
    the compute, every layer trained by both branches); `normalize_importance=True` divides M by
    its per-image mean over the grid, so M weights nodes relative to each other without scaling
    the seed, and the gradient reaching the seed branch, down (y_5 is linear in s, so this only
    fixes the scale of the logits, not their argmax).
    The transition kernel (`difnet.diffusion.TransitionKernel`): `kernel` "dot" is the paper's
    `f_i . f_j`, "distance" `-||f_i - f_j||^2`, "identity" P = I (every walk returns the seed: the
    first stage of staged training); `kernel_radius` r keeps each row to the nodes within r grid
    cells; `learn_temperature=True` gives every walk a learned factor on its logits;
    `beta_init` below 0.5 starts the walks nearer switched off (the paper: 0.5).
    `guided_walk_stride` (e.g. 2) ends the cascade with `guided_walk_steps` steps of a learned
    bilateral walk on the image at that stride (`difnet.diffusion.guided.GuidedWalk`): what the stride-8
    seed lacks is where the image's edges lie; None (the default) is the paper's cascade.
    `guided_walk_level` (e.g. 1, the first ResNet stage) adds that similarity level to its kernel.
    """

    name = "difnet"

    def __init__(
        self,
        depth: int | None = None,
        num_classes: int = 21,
        aspp: bool = True,
        pretrained_backbone: PretrainedSource | bool | None = None,
        walk: WalkMethod = "fused",
        diffusion_stride: int | None = None,
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
        encoder: str | None = None,
        similarity_encoder: str | None = None,
        guided_walk_stride: int | None = None,
        guided_walk_steps: int = DEFAULT_STEPS,
        guided_walk_level: int | None = None,
    ) -> None:
        encoder = model_encoder(depth, encoder, DEFAULT_DEPTH)
        similarity_encoder = (
            encoder if similarity_encoder is None else check_encoder(similarity_encoder, "similarity_encoder")
        )
        if shared_backbone and similarity_encoder != encoder:
            raise ValueError(
                f"shared_backbone=True reads the similarity levels from the seed encoder {encoder!r}, "
                f"which contradicts similarity_encoder={similarity_encoder!r}; give only one of them"
            )
        for name, flag in (("aspp", aspp), ("shared_backbone", shared_backbone)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False (got {flag!r})")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS} (got {head_init!r})")
        if walk not in WALK_METHODS:
            raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
        architecture = {"aspp": aspp, "walk": walk, "head_init": head_init, "shared_backbone": shared_backbone,
                        "normalize_importance": normalize_importance, "kernel": kernel,
                        "kernel_radius": kernel_radius, "learn_temperature": learn_temperature,
                        "beta_init": beta_init, "similarity_encoder": similarity_encoder,
                        "guided_walk_stride": guided_walk_stride, "guided_walk_steps": guided_walk_steps,
                        "guided_walk_level": guided_walk_level}  # fmt: skip
        super().__init__(encoder=encoder, num_classes=num_classes, in_channels=in_channels,
                         gradient_checkpointing=gradient_checkpointing, **architecture)  # fmt: skip
        self.similarity_encoder = similarity_encoder
        self.seed_frozen = False
        self.seed_backbone = self.new_backbone(encoder)
        self.classifier = score_head(self.seed_backbone.out_channels[-1], num_classes, aspp, head_init)
        self.similarity_backbone = None if shared_backbone else self.new_backbone(similarity_encoder)
        similarity = self.similarity_backbone or self.seed_backbone
        grid_level, self.diffusion_stride = diffusion_grid_level(
            diffusion_stride, self.seed_backbone.strides[-1], similarity.strides
        )
        self._architecture["diffusion_stride"] = self.diffusion_stride
        self.head = DiffusionHead((in_channels, *similarity.out_channels), num_classes, walk=walk,
                                  grid_level=grid_level, psi_scale_init=psi_scale_init,
                                  normalize_importance=normalize_importance, kernel=kernel,
                                  kernel_radius=kernel_radius, learn_temperature=learn_temperature,
                                  beta_init=beta_init, gradient_checkpointing=gradient_checkpointing,
                                  guided_walk_stride=guided_walk_stride,
                                  guided_walk_steps=guided_walk_steps,
                                  guided_walk_level=guided_walk_level)  # fmt: skip
        self.load_pretrained_backbone(pretrained_backbone)

    # the diffusion stage's parts, where code written before `head` finds them
    @property
    def importance(self) -> ImportanceHead:
        return self.head.importance

    @property
    def projections(self) -> nn.ModuleList:
        return self.head.projections

    @property
    def cascade(self) -> Cascade:
        return self.head.cascade

    @property
    def kernel(self) -> TransitionKernel:
        return self.head.kernel

    @property
    def normalize_importance(self) -> bool:
        return self.head.normalize_importance

    def backbones(self) -> dict[str, nn.Module]:
        if self.similarity_backbone is None:
            return {"seed": self.seed_backbone}
        return {"seed": self.seed_backbone, "similarity": self.similarity_backbone}

    def backbone_encoders(self) -> dict[str, str]:
        if self.similarity_backbone is None:
            return {"seed": self.encoder}
        return {"seed": self.encoder, "similarity": self.similarity_encoder}

    def walk_module(self) -> nn.Module:
        """The cascade's walks and, if any, the guided walk: the "walk" learning-rate group."""
        if self.head.guided_walk is None:
            return self.head.cascade
        return nn.ModuleList([self.head.cascade, self.head.guided_walk])

    def seed_source_config(self) -> dict[str, Any]:
        """What the config of a model whose seed branch this one takes (`load_seed_branch`) must
        hold: the seed backbone, score head and importance map's architecture (the kernel, the
        walks and the similarity branch may differ)."""
        return {
            key: self.config.get(key) for key in ("name", "encoder", "num_classes", "in_channels", "aspp")
        }

    def seed_branch_modules(self) -> dict[str, nn.Module]:
        """The modules that make the seed `s = M x`, by state-dict prefix: the seed backbone, the
        score head and the importance map (staged training trains them first, then freezes them)."""
        return {
            "seed_backbone": self.seed_backbone,
            "classifier": self.classifier,
            "head.importance": self.head.importance,
        }

    def set_guided_walk(
        self, *, stride: int | None = None, steps: int | None = None, mu: float | None = None
    ) -> DifNet:
        """Give the guided walk another grid `stride`, step count or restart weight `mu` (those
        given), kept in `config` and the weights so that saving and loading keep them (as
        `difnet.refinement.fit_guided_walk` picks them). Its position scale and radius count grid
        cells, so a finer grid also narrows its reach. Returns the model."""
        walk = self.head.guided_walk
        if walk is None:
            raise ValueError("this DifNet has no guided walk: build it with guided_walk_stride")
        stride, steps = walk.stride if stride is None else stride, walk.steps if steps is None else steps
        check_walk_settings(
            "set_guided_walk", stride=stride, steps=steps, **({} if mu is None else {"mu": mu})
        )
        walk.stride, walk.steps = stride, steps
        if mu is not None:
            walk.set_mu(mu)
        for config in (self._architecture, self.head._config):
            config.update(guided_walk_stride=stride, guided_walk_steps=steps)
        return self

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
        """Class scores x `[B, K, h', w']` of the seed encoder and its classifier (at the encoder's
        output stride)."""
        return self.classifier(self.seed_backbone(images)[-1])

    def similarity_branch(self, images: Tensor) -> list[Tensor]:
        """The levels the transition matrices come from: `images` and the similarity encoder's
        stages (a ResNet's layer1..layer4; the seed encoder's with `shared_backbone`)."""
        backbone = self.similarity_backbone or self.seed_backbone
        return [images, *backbone(images)]

    def diffuse(self, scores: Tensor, levels: Sequence[Tensor]) -> DifNetOutput:
        """The diffusion stage (`head`) on the branches' outputs, logits at the input size (a method
        apart so the branches can be timed or overlapped)."""
        return self.head(scores, levels)

    def transition_maps(
        self,
        images: Tensor,
        nodes: Tensor | Sequence[Sequence[int]],
        *,
        levels: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Rows of every `P_t` for grid nodes `(row, col)` `[n, 2]`, as maps `[B, T, n, h, w]`.

        Only the `n` requested rows are computed; `(h, w)` is the diffusion grid of `images`.
        `levels`, this model's `similarity_branch(images)` when already computed, saves
        running the similarity encoder again.
        """
        self.check_images(images)
        levels = self.similarity_branch(images) if levels is None else levels
        if self.head.grid_level is not None or self.similarity_encoder == self.encoder:
            scores_grid = tuple(levels[-1].shape[-2:])  # the seed encoder's last stage is the last level
        else:  # another encoder may round the grid otherwise: the seed branch's own
            scores_grid = tuple(self.seed_branch(images).shape[-2:])
        grid = self.head.diffusion_grid(scores_grid, levels)
        return self.head.transition_maps(_flat_node_indices(nodes, grid, images.device), levels, grid)

    def walk_scalars(self) -> dict[str, list[float]]:
        """The learned walk weights, `{"mu": [mu_1..mu_T], "beta": [beta_1..beta_T]}` (Table 3)."""
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


def diffusion_grid_level(
    diffusion_stride: int | None, scores_stride: int, level_strides: Sequence[int]
) -> tuple[int | None, int]:
    """The head's `grid_level` for `diffusion_stride` (None: the scores' grid) and that stride,
    given the scores' stride and the similarity encoder's stage strides (level `i + 1`)."""
    if diffusion_stride is None:
        return None, scores_stride
    allowed = (*sorted({stride for stride in level_strides if stride < scores_stride}), scores_stride)
    if (
        isinstance(diffusion_stride, bool)
        or not isinstance(diffusion_stride, int)
        or diffusion_stride not in allowed
    ):
        raise ValueError(
            f"diffusion_stride must be one of {allowed} (got {diffusion_stride!r}): the stride of the "
            "scores' grid, or a finer one of the similarity encoder's stages"
        )
    if diffusion_stride == scores_stride:
        return None, scores_stride
    return 1 + list(level_strides).index(diffusion_stride), diffusion_stride
