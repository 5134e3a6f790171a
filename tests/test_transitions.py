"""`difnet.diffusion.label_statistics`: the in-class share and the self-weight against answers known in advance,
for every kernel, with no N x N tensor; and the label-built walk of the oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from difnet.data.palettes import IGNORE_INDEX
from difnet.diffusion import SIMILARITIES, TransitionKernel, transition_matrix
from difnet.diffusion.label_statistics import label_propagate, node_labels, row_statistics

V = IGNORE_INDEX
NODES = torch.tensor([[0, 0, 0, 1, 1, 2, V, 0]])


def explicit_share(P: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """The definition, on an explicit P: same-class mass over all mass, both without P[i, i]."""
    others = ~torch.eye(P.shape[-1], dtype=torch.bool)
    same = (nodes[:, :, None] == nodes[:, None, :]) & others & (nodes[:, :, None] != V)
    return (P * same).sum(-1) / (P * others).sum(-1)


def test_node_labels_take_the_majority_and_leave_mostly_void_cells_void():
    labels = torch.tensor([[
        [0, 0, 1, V],
        [0, 1, V, V],
        [2, 2, 3, 3],
        [2, V, 3, 1],
    ]])  # fmt: skip
    assert node_labels(labels, (2, 2), num_classes=4).tolist() == [[0, V, 2, 3]]


def test_the_identity_has_no_share_and_full_self_weight():
    stats = row_statistics(torch.zeros(1, 8, 4), NODES, kernel=TransitionKernel("identity"))
    assert torch.isnan(stats.log_share).all()
    assert torch.equal(stats.self_weight, torch.ones(1, 8))


def test_features_that_make_p_the_identity_do_not_score_one():
    features = 40.0 * F.normalize(torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    stats = row_statistics(features, NODES)
    assert stats.self_weight.min() > 0.999  # P is the identity to float precision
    labelled = NODES != V
    share = stats.share[labelled & ~stats.log_share.isnan()]
    # the little mass sent away goes to the nearest other node, of whatever class: no perfect score
    assert share.numel() == 6 and share.mean() < 0.7


def test_a_label_built_p_scores_one():
    classes = NODES.clamp(max=3)
    features = 30.0 * F.one_hot(classes, 4).float()  # the void node is its own class 3
    stats = row_statistics(features, NODES)
    defined = ~stats.log_share.isnan()
    # nodes 3, 4 (class 1) and 0, 1, 2, 7 (class 0) have peers; class 2's only node and the void one don't
    assert defined.tolist() == [[True, True, True, True, True, False, False, True]]
    torch.testing.assert_close(stats.share[defined], torch.ones(int(defined.sum())))


def test_a_uniform_p_scores_the_class_frequency_among_the_other_nodes():
    stats = row_statistics(torch.zeros(1, 8, 4), NODES)
    # class 0 has 4 nodes: 3 of the 7 others; class 1 has 2: 1 of 7
    expected = torch.tensor([3, 3, 3, 1, 1, 0, 0, 3]) / 7
    defined = ~stats.log_share.isnan()
    torch.testing.assert_close(stats.share[defined], expected[defined[0]])
    torch.testing.assert_close(stats.self_weight, torch.full((1, 8), 1 / 8))


def test_targets_count_the_mass_reaching_nodes_whose_target_is_the_rows_label():
    # uniform P over 8 nodes; node 1 (label 0) is targeted by nodes 3 and 4 (target 0), besides itself
    targets = torch.tensor([[1, 0, 2, 0, 0, 1, 1, 2]])
    stats = row_statistics(torch.zeros(1, 8, 4), NODES, targets=targets)
    # row 1: of the 7 other nodes, 3 and 4 have target 0 -> 2/7; row 3 (label 1): 0, 5, 6 -> 3/7
    assert float(stats.share[0, 1]) == pytest.approx(2 / 7)
    assert float(stats.share[0, 3]) == pytest.approx(3 / 7)
    assert torch.isnan(stats.share[0, 6])  # void row
    with pytest.raises(ValueError, match=r"targets must be node labels like nodes \(1, 8\)"):
        row_statistics(torch.zeros(1, 8, 4), NODES, targets=targets[:, :4])


@pytest.mark.parametrize("similarity", [s for s in SIMILARITIES if s != "identity"])
@pytest.mark.parametrize("radius", [None, 1, 2])
def test_statistics_match_the_explicit_matrix_of_every_kernel(similarity, radius):
    generator = torch.Generator().manual_seed(1)
    grid = (4, 5)
    features = torch.randn(2, 20, 6, generator=generator)
    nodes = torch.randint(0, 3, (2, 20), generator=generator)
    nodes[0, 3] = V
    kernel = TransitionKernel(similarity, radius)
    P = transition_matrix(features, kernel=kernel, grid=grid, temperature=0.7)
    stats = row_statistics(features, nodes, kernel=kernel, grid=grid, temperature=0.7)
    torch.testing.assert_close(stats.self_weight, P.diagonal(dim1=1, dim2=2))
    expected = explicit_share(P, nodes)
    defined = ~stats.log_share.isnan()
    torch.testing.assert_close(stats.share[defined], expected[defined])
    # undefined exactly where no other node of the class is within reach (and void nodes)
    reachable = (P > 0) & ~torch.eye(20, dtype=torch.bool)
    has_peer = (reachable & (nodes[:, :, None] == nodes[:, None, :])).any(-1) & (nodes != V)
    assert torch.equal(defined, has_peer)


def test_blocks_of_rows_give_the_same_answer_and_gradient(monkeypatch):
    import difnet.diffusion.label_statistics as transitions

    features = torch.randn(1, 30, 5, requires_grad=True)
    nodes = torch.randint(0, 2, (1, 30), generator=torch.Generator().manual_seed(2))
    whole = row_statistics(features, nodes)
    (grad_whole,) = torch.autograd.grad(whole.log_share.nansum(), features)
    monkeypatch.setattr(transitions, "BLOCK_ELEMENTS", 30 * 7)  # blocks of 7 rows
    blocked = row_statistics(features, nodes)
    (grad_blocked,) = torch.autograd.grad(blocked.log_share.nansum(), features)
    torch.testing.assert_close(blocked.log_share, whole.log_share, equal_nan=True)
    torch.testing.assert_close(grad_blocked, grad_whole)


def test_nodes_without_a_peer_pass_no_nan_gradient():
    features = torch.randn(1, 8, 4, requires_grad=True)
    stats = row_statistics(features, NODES)
    stats.log_share.nan_to_num(0.0).sum().backward()
    assert torch.isfinite(features.grad).all()


def test_the_statistics_hold_no_n_by_n_tensor(monkeypatch):
    import difnet.diffusion.label_statistics as transitions

    count = 4096
    monkeypatch.setattr(transitions, "BLOCK_ELEMENTS", count * 64)
    features = torch.randn(1, count, 8, requires_grad=True)
    nodes = torch.randint(0, 3, (1, count))
    largest = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        largest.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stats = row_statistics(features, nodes)
    stats.log_share.nansum().backward()
    assert max(largest) < count * count // 8
    assert math.isfinite(float(features.grad.abs().sum()))


def test_label_propagate_averages_each_class_and_keeps_void_nodes():
    nodes = torch.tensor([[0, 1, 0, V, 1, 1]])
    values = torch.arange(12.0).view(1, 6, 2)
    out = label_propagate(nodes, values)
    same = (nodes[:, :, None] == nodes[:, None, :]).float()
    same[0, 3] = F.one_hot(torch.tensor(3), 6).float()
    torch.testing.assert_close(out, (same / same.sum(-1, keepdim=True)) @ values)
