"""The opt-in loss on DifNet's transition matrices: -log of the in-class mass the diagnostics
report, computed without building P, zero for class-aligned features, and added to the training loss."""

from __future__ import annotations

import torch

from difnet.diagnostics import in_class_mass, node_labels
from difnet.diffusion import transition_matrix
from difnet.models import DifNet
from difnet.training.loop import training_loss
from difnet.training.losses import transition_loss


def labels_with_void(batch: int = 2, size: int = 16, classes: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (batch, size // 4, size // 4), generator=generator)
    labels = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)  # one label per 4x4 cell
    labels[:, :4, :4] = 255  # one void cell per image
    return labels


def test_it_is_minus_log_of_the_diagnostics_in_class_mass_averaged_over_levels_and_labelled_nodes():
    labels, grid = labels_with_void(), (4, 4)
    features = [torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    nodes = node_labels(labels, grid, 3)
    expected = []
    for f in features:
        mass = in_class_mass(transition_matrix(f), nodes)
        expected.append(-mass[~mass.isnan()].log().mean())
    assert (nodes == 255).sum() == 2
    torch.testing.assert_close(transition_loss(features, grid, labels, 3), torch.stack(expected).mean())


def test_class_aligned_features_cost_nothing_and_mixing_ones_cost_log_of_the_class_share():
    labels, grid = labels_with_void(), (4, 4)
    nodes = node_labels(labels, grid, 3)
    aligned = 30.0 * torch.nn.functional.one_hot(nodes.clamp(max=2), 3).float()
    aligned[nodes == 255] = 0.0
    assert transition_loss([aligned], grid, labels, 3).item() < 1e-6
    uniform = torch.zeros(2, 16, 4)  # every row uniform: in-class mass = the class's share of nodes
    labelled = nodes[nodes != 255].reshape(2, -1)
    shares = [(row[:, None] == row[None]).float().sum(1) / 16 for row in labelled]
    expected = -torch.cat(shares).log().mean()
    torch.testing.assert_close(transition_loss([uniform], grid, labels, 3), expected)


def test_an_all_void_batch_gives_zero_and_the_gradient_reaches_the_features():
    grid = (4, 4)
    features = torch.randn(1, 16, 8, requires_grad=True)
    assert transition_loss([features], grid, torch.full((1, 16, 16), 255), 3).item() == 0.0
    transition_loss([features], grid, labels_with_void(1), 3).backward()
    assert features.grad.abs().sum() > 0


def test_the_model_exposes_the_node_features_its_walks_use():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3).eval()
    images = torch.randn(1, 3, 32, 32)
    out = model(images, intermediates=True)
    grid = tuple(out.walks[-1].shape[-2:])
    assert len(out.features) == 5
    assert all(f.shape[:2] == (1, grid[0] * grid[1]) for f in out.features)
    labels = torch.randint(0, 3, (1, 32, 32))
    plain = training_loss(model, images, labels)
    both = training_loss(model, images, labels, transition_weight=0.5)
    torch.testing.assert_close(both - plain, 0.5 * transition_loss(out.features, grid, labels, 3))
