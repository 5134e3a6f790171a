"""Every training loss in one place: the paper's cross-entropy on the prediction, and DifNet's
opt-in auxiliary terms (a cross-entropy on the seed scores, a loss on the transition matrices).

The transition loss: the paper leaves every P_t unsupervised; Bertasius et al. (CVPR 2017) and
PSA (Ahn and Kwak 2018) learn affinities from the labels instead. Here each row of P_t should
send the mass it gives *other* nodes to nodes of its own class: the loss is `-log` of the
in-class share of `difnet.diffusion.label_statistics`, which leaves the self-weight `P[i, i]` out, so a P that
collapses to the identity (no diffusion) cannot lower it. P is never built whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difnet.data.palettes import IGNORE_INDEX
from difnet.diffusion import PAPER_KERNEL, TransitionKernel
from difnet.diffusion.label_statistics import mean_share_loss, node_labels, row_statistics
from difnet.models.heads import upsample

SHARE_FLOOR = 1e-6  # keeps -log finite for a row that sends nothing to its class


def pixel_loss(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Cross-entropy averaged over labelled pixels (0, not NaN, for a batch with none); with class
    `weights` `[C]`, the weighted mean `sum w_y * loss / sum w_y` of torch's weighted
    `cross_entropy(reduction="mean")` (class-balanced training, `difnet.training.class_weights`)."""
    labelled = labels != IGNORE_INDEX
    if weights is None:
        total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / labelled.sum().clamp(min=1)
    weights = weights.to(logits.device, torch.float32)
    total = F.cross_entropy(
        logits.float(), labels, weight=weights, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    weight_sum = (weights[labels.masked_fill(~labelled, 0)] * labelled).sum()
    # 0 when no pixel is labelled, or every labelled pixel's class weighs 0: the sum is 0 then too
    return total / weight_sum.clamp(min=torch.finfo(torch.float32).tiny)


def transition_loss(
    features: Sequence[Tensor],
    grid: Sequence[int],
    labels: Tensor,
    num_classes: int,
    *,
    kernel: TransitionKernel = PAPER_KERNEL,
    temperatures: Sequence[Tensor | None] | None = None,
) -> Tensor:
    """Mean over the levels t and the nodes i with a defined share of `-log` (the share of the mass
    row `i` of `P_t` sends to other nodes that reaches nodes of `i`'s class), from node features
    `[B, N, d]` per level (`DifNetOutput.features`) and pixel labels `[B, H, W]`."""
    nodes = node_labels(labels, grid, num_classes)
    temperatures = temperatures or [None] * len(features)
    losses = [
        mean_share_loss(row_statistics(f, nodes, kernel=kernel, grid=grid, temperature=t), SHARE_FLOOR)
        for f, t in zip(features, temperatures, strict=True)
    ]
    return torch.stack(losses).mean()


def training_loss(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    aux_seed_weight: float = 0.0,
    transition_weight: float = 0.0,
    *,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of the prediction, plus DifNet's opt-in auxiliary terms: `aux_seed_weight`
    times the cross-entropy of its seed scores upsampled to the labels (deep supervision of the
    seed branch), and `transition_weight` times `transition_loss` (label-supervised P_t). Both
    cross-entropies weigh each pixel by its class's entry of `class_weights` (None: all 1)."""
    if not aux_seed_weight and not transition_weight:
        return pixel_loss(model(images), labels, class_weights)
    out = model(images, intermediates=True)
    loss = pixel_loss(out.logits, labels, class_weights)
    if aux_seed_weight:
        seed_scores = upsample(out.scores, labels.shape[-2:])
        loss = loss + aux_seed_weight * pixel_loss(seed_scores, labels, class_weights)
    if transition_weight:
        grid = tuple(out.walks[-1].shape[-2:])
        loss = loss + transition_weight * transition_loss(
            out.features, grid, labels, out.scores.shape[1], kernel=out.kernel, temperatures=out.temperatures
        )
    return loss
