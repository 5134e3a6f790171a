"""What a transition matrix does with the labels, without ever holding it whole.

Nodes are the cells of the diffusion grid, the same cells adaptive pooling uses for Psi_t. A
node's label is the majority label of the labelled pixels of its cell; a node whose cell is more
than half void (255) is void and left out of every statistic.

Two statistics of a row `P[i, :]`, computed in blocks of rows so that memory grows as `N` times
the block, never `N^2`:

- the **self-weight** `P[i, i]`, the mass that stays put;
- the **in-class share**: of the mass node `i` sends to *other* nodes, the share that reaches
  nodes of its own class. The identity (no diffusion) sends nothing and has no share (NaN), a
  label-built `P` has share 1, a uniform `P` the class's frequency among the other nodes. Counting
  `P[i, i]` as in-class instead would score the identity a perfect 1, which is why the share
  leaves it out. A node with no other node of its class within the kernel's reach has no share.

`transition_loss` (difnet.training.losses) is `-log` of the same share, so the loss and the
diagnostics measure one thing, and switching the diffusion off cannot lower it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from difnet.data.palettes import IGNORE_INDEX
from difnet.diffusion.kernels import PAPER_KERNEL, TransitionKernel, full_precision, transition_logits

VOID_FRACTION = 0.5  # a node whose cell is more void than this is void
BLOCK_ELEMENTS = 2**22  # rows per block times N: 16 MiB of float32 logits per image


def node_labels(labels: Tensor, grid: Sequence[int], num_classes: int) -> Tensor:
    """Labels `[B, H, W]` (255 = void) -> node labels `[B, h*w]` on the grid: the majority label of
    each cell's labelled pixels, or 255 where more than half the cell is void."""
    void = labels == IGNORE_INDEX
    one_hot = F.one_hot(labels.masked_fill(void, num_classes).long(), num_classes + 1)
    fractions = F.adaptive_avg_pool2d(one_hot.permute(0, 3, 1, 2).float(), tuple(grid))
    majority = fractions[:, :num_classes].argmax(1)
    majority[fractions[:, num_classes] > VOID_FRACTION] = IGNORE_INDEX
    return majority.flatten(1)


def label_propagate(nodes: Tensor, values: Tensor) -> Tensor:
    """`P y` for the label-built `P` of node labels `[B, N]`: a labelled node's row is uniform over
    the labelled nodes of its class (itself included), a void node's row stays on itself. Values
    `[B, N, K]`; computed from per-class means, in `O(N K)`."""
    labelled = nodes != IGNORE_INDEX
    classes = nodes.masked_fill(~labelled, 0)
    members = F.one_hot(classes, int(classes.max()) + 1).to(values.dtype) * labelled[..., None]
    sums = members.transpose(1, 2) @ values  # [B, C, K]
    means = sums / members.sum(1)[..., None].clamp(min=1)
    return torch.where(labelled[..., None], means.gather(1, classes[..., None].expand_as(values)), values)


@dataclass
class RowStatistics:
    """Per node `[B, N]`: `self_weight` `P[i, i]` and the log of the in-class share of the mass
    sent to other nodes (`log_share`; NaN where the share is undefined: void nodes, nodes with no
    reachable node of their class, and every node under the identity kernel)."""

    self_weight: Tensor
    log_share: Tensor

    @property
    def share(self) -> Tensor:
        return self.log_share.exp()


def row_statistics(
    features: Tensor,
    nodes: Tensor,
    *,
    kernel: TransitionKernel = PAPER_KERNEL,
    grid: Sequence[int] | None = None,
    temperature: Tensor | float | None = None,
    targets: Tensor | None = None,
) -> RowStatistics:
    """Self-weight and in-class share of every row of the transition matrix of features
    `[B, N, d]` (under `kernel` and `temperature`) for node labels `[B, N]`: the share reaching
    the other nodes whose label in `targets` `[B, N]` (default: `nodes`) is the row's label in
    `nodes`. Differentiable; with gradients on, each block of rows is recomputed in backward
    rather than kept."""
    targets = nodes if targets is None else targets
    batch, count = nodes.shape
    if features.shape[:2] != (batch, count):
        raise ValueError(
            f"features [B, N, d] and node labels [B, N] must share B and N "
            f"(got {tuple(features.shape)} and {tuple(nodes.shape)})"
        )
    if targets.shape != nodes.shape:
        raise ValueError(
            f"targets must be node labels like nodes {tuple(nodes.shape)} (got {tuple(targets.shape)})"
        )
    if kernel.is_identity:
        ones = torch.ones(batch, count, device=nodes.device)
        return RowStatistics(ones, torch.full_like(ones, float("nan")))
    block = max(1, BLOCK_ELEMENTS // count)
    with full_precision(features) as (features,):
        pieces = []
        for start in range(0, count, block):
            rows = torch.arange(start, min(start + block, count), device=nodes.device)
            arguments = (features, nodes, targets, rows, kernel, grid, temperature)
            if torch.is_grad_enabled() and features.requires_grad:
                pieces.append(checkpoint(_block_statistics, *arguments, use_reentrant=False))
            else:
                pieces.append(_block_statistics(*arguments))
    return RowStatistics(*(torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True)))


def _block_statistics(
    features: Tensor,
    nodes: Tensor,
    targets: Tensor,
    rows: Tensor,
    kernel: TransitionKernel,
    grid: Sequence[int] | None,
    temperature: Tensor | float | None,
) -> tuple[Tensor, Tensor]:
    """`(P[i, i], log in-class share)` `[B, n]` for the rows `rows` `[n]`."""
    logits = transition_logits(features, rows, kernel=kernel, grid=grid, temperature=temperature)
    own = logits.gather(-1, rows.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    self_weight = torch.exp(own - logits.logsumexp(-1))
    others = torch.ones_like(logits, dtype=torch.bool)
    others[:, torch.arange(len(rows), device=rows.device), rows] = False
    row_labels = nodes[:, rows]
    peers = others & (row_labels[..., None] == targets[:, None, :]) & (row_labels[..., None] != IGNORE_INDEX)
    peers = peers & torch.isfinite(logits)
    defined = peers.any(-1)
    # rows without a peer get finite stand-ins, so that no gradient passes through -inf
    peer_logits = torch.where(peers, logits, float("-inf")).masked_fill(~defined[..., None], 0.0)
    other_logits = torch.where(others, logits, float("-inf")).masked_fill(~defined[..., None], 0.0)
    log_share = peer_logits.logsumexp(-1) - other_logits.logsumexp(-1)
    return self_weight, log_share.masked_fill(~defined, float("nan"))


def mean_share_loss(statistics: RowStatistics, floor: float) -> Tensor:
    """Mean of `-log max(share, floor)` over the nodes whose share is defined (0 if none is)."""
    defined = ~statistics.log_share.isnan()
    log_share = statistics.log_share.masked_fill(~defined, 0.0).clamp(min=math.log(floor))
    return -(log_share * defined).sum() / defined.sum().clamp(min=1)
