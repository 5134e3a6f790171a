"""DifNet's opt-in auxiliary loss on its transition matrices, supervised by the labels.

The paper leaves every P_t = softmax(f f^T) unsupervised; Bertasius et al. (CVPR 2017) learn
their affinities from the labels instead. `transition_loss` offers that route: each node's row
should put its mass on nodes of its own class. Nodes are labelled as `difnet.diagnostics` labels
them (a cell's majority label; mostly-void cells are left out), so this loss is -log of the
quantity the diagnostics report as "in-class transition mass". P is never built: `P Y` for the
one-hot node labels Y goes through the same matrix-free `propagate` as the walks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from difnet.data.palettes import IGNORE_INDEX
from difnet.diagnostics import node_labels
from difnet.diffusion import propagate

MASS_FLOOR = 1e-6  # keeps -log finite for a row with no mass on its class


def transition_loss(
    features: Sequence[Tensor], grid: Sequence[int], labels: Tensor, num_classes: int
) -> Tensor:
    """Mean over the levels t and the labelled nodes i of `-log sum_j P_t[i, j] [y_j = y_i]`, from
    node features `[B, N, d]` per level (`DifNetOutput.features`) and pixel labels `[B, H, W]`.
    0 for a batch with no labelled node."""
    nodes = node_labels(labels, grid, num_classes)
    labelled = nodes != IGNORE_INDEX
    classes = nodes.masked_fill(~labelled, 0)
    one_hot = F.one_hot(classes, num_classes).to(torch.float32) * labelled[..., None]
    count = labelled.sum().clamp(min=1)
    losses = []
    for level in features:
        mass = propagate(level, one_hot).gather(-1, classes[..., None]).squeeze(-1)
        losses.append(-(mass.clamp(min=MASS_FLOOR).log() * labelled).sum() / count)
    return torch.stack(losses).mean()
