"""The opt-in loss on DifNet's transition matrices: -log of the in-class share the diagnostics
report (`difnet.diffusion.label_statistics`), which self-weight cannot lower, and its place in the training loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from difnet.diffusion import TransitionKernel
from difnet.diffusion.label_statistics import node_labels, row_statistics
from difnet.models import DifNet
from difnet.training.losses import SHARE_FLOOR, training_loss, transition_loss


def labels_with_void(batch: int = 2, size: int = 16, classes: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (batch, size // 4, size // 4), generator=generator)
    labels = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)  # one label per 4x4 cell
    labels[:, :4, :4] = 255  # one void cell per image
    return labels


def test_it_is_minus_log_of_the_in_class_share_averaged_over_levels_and_nodes_that_have_one():
    labels, grid = labels_with_void(), (4, 4)
    features = [torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    nodes = node_labels(labels, grid, 3)
    expected = []
    for f in features:
        share = row_statistics(f, nodes).share
        expected.append(-share[~share.isnan()].clamp(min=SHARE_FLOOR).log().mean())
    assert (nodes == 255).sum() == 2
    torch.testing.assert_close(transition_loss(features, grid, labels, 3), torch.stack(expected).mean())


def test_label_aligned_features_cost_less_than_features_that_make_p_the_identity():
    labels, grid = labels_with_void(), (4, 4)
    nodes = node_labels(labels, grid, 3)
    aligned = 30.0 * F.one_hot(nodes.clamp(max=2), 3).float()
    aligned[nodes == 255] = 0.0
    identity_like = 40.0 * F.normalize(
        torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    aligned_loss = transition_loss([aligned], grid, labels, 3)
    identity_loss = transition_loss([identity_like], grid, labels, 3)
    assert aligned_loss.item() < 1e-6
    assert identity_loss.item() > 1.0  # self-weight near 1 lowers nothing
    uniform = torch.zeros(2, 16, 4)  # every row uniform: the class's share of the other nodes
    share = row_statistics(uniform, nodes).share
    expected = -share[~share.isnan()].log().mean()
    torch.testing.assert_close(transition_loss([uniform], grid, labels, 3), expected)


def test_a_local_kernel_and_temperatures_reach_the_loss_and_its_gradient():
    labels, grid = labels_with_void(1), (4, 4)
    features = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(4)).requires_grad_()
    temperature = torch.tensor(0.5, requires_grad=True)
    kernel = TransitionKernel("distance", 1)
    loss = transition_loss([features], grid, labels, 3, kernel=kernel, temperatures=[temperature])
    nodes = node_labels(labels, grid, 3)
    log_share = row_statistics(features, nodes, kernel=kernel, grid=grid, temperature=temperature).log_share
    # shares below the floor count as the floor (far apart random features send almost nothing)
    expected = -log_share[~log_share.isnan()].clamp(min=math.log(SHARE_FLOOR)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert features.grad.abs().sum() > 0 and temperature.grad != 0


def test_an_all_void_batch_gives_zero_and_the_gradient_reaches_the_features():
    grid = (4, 4)
    features = torch.randn(1, 16, 8, requires_grad=True)
    assert transition_loss([features], grid, torch.full((1, 16, 16), 255), 3).item() == 0.0
    transition_loss([features], grid, labels_with_void(1), 3).backward()
    assert features.grad.abs().sum() > 0


def test_the_training_loss_adds_the_weighted_transition_loss_of_the_models_own_kernel():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, kernel="distance", kernel_radius=2, learn_temperature=True).eval()
    images = torch.randn(1, 3, 32, 32)
    out = model(images, intermediates=True)
    grid = tuple(out.walks[-1].shape[-2:])
    assert len(out.features) == 5
    assert all(f.shape[:2] == (1, grid[0] * grid[1]) for f in out.features)
    labels = torch.randint(0, 3, (1, 32, 32))
    plain = training_loss(model, images, labels)
    both = training_loss(model, images, labels, transition_weight=0.5)
    own = transition_loss(out.features, grid, labels, 3, kernel=model.kernel, temperatures=out.temperatures)
    torch.testing.assert_close(both - plain, 0.5 * own)
    assert own != transition_loss(out.features, grid, labels, 3)  # the paper's kernel differs
