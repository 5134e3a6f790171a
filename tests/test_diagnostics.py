"""`difnet.diagnostics` against answers known in advance."""

from __future__ import annotations

import pytest
import torch

from difnet.data import SyntheticShapes
from difnet.data.palettes import IGNORE_INDEX
from difnet.diagnostics import (
    diagnose,
    in_class_mass,
    label_transitions,
    node_labels,
    oracle_walks,
    transition_mass,
)
from difnet.evaluation import evaluate
from difnet.models import DifNet, SimDeepLab

V = IGNORE_INDEX


def test_node_labels_take_the_majority_and_leave_mostly_void_cells_void():
    labels = torch.tensor([[
        [0, 0, 1, V],
        [0, 1, V, V],
        [2, 2, 3, 3],
        [2, V, 3, 1],
    ]])  # fmt: skip
    assert node_labels(labels, (2, 2), num_classes=4).tolist() == [[0, V, 2, 3]]


def test_label_built_transitions_keep_every_row_in_class_and_void_nodes_on_themselves():
    nodes = torch.tensor([[0, 1, 0, V, 1, 1]])
    matrices = label_transitions(nodes)
    torch.testing.assert_close(matrices.sum(-1), torch.ones(1, 6))
    mass = in_class_mass(matrices, nodes)
    labelled = nodes != V
    torch.testing.assert_close(mass[labelled], torch.ones(int(labelled.sum())))
    assert torch.isnan(mass[~labelled]).all()
    assert matrices[0, 3].tolist() == [0, 0, 0, 1, 0, 0]
    assert matrices[0, 1, 4] == pytest.approx(1 / 3)


def test_in_class_mass_of_a_uniform_matrix_is_each_class_share():
    nodes = torch.tensor([[0, 0, 0, 1]])
    mass = in_class_mass(torch.full((1, 4, 4), 0.25), nodes)
    torch.testing.assert_close(mass, torch.tensor([[0.75, 0.75, 0.75, 0.25]]))


def test_the_oracle_on_a_one_hot_seed_from_the_labels_is_exact_at_the_grid():
    generator = torch.Generator().manual_seed(0)
    nodes = torch.randint(0, 4, (2, 50), generator=generator)
    nodes[0, :5] = V
    seed = torch.nn.functional.one_hot(nodes.clamp(max=3), 4).float() * torch.rand(
        2, 50, 1, generator=generator
    )
    walks = oracle_walks(seed, nodes, mu=[0.9, 0.5, 0.3], beta=[0.5, 1.0, 0.7])
    assert len(walks) == 3
    labelled = nodes != V
    assert torch.equal(walks[-1].argmax(-1)[labelled], nodes[labelled])


def test_the_oracle_follows_eqs_4_and_5():
    nodes = torch.tensor([[0, 0, 1]])
    seed = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    (y,) = oracle_walks(seed, nodes, mu=[0.5], beta=[0.5])
    walked = torch.tensor([[[0.5, 0.0], [0.5, 0.0], [0.0, 2.0]]])
    expected = 0.5 * (0.5 * walked + 0.5 * seed) + 0.5 * seed
    torch.testing.assert_close(y, expected)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, head_init="normal").eval()
    scenes = SyntheticShapes(3, size=48, num_classes=3, seed=1)
    return model, scenes


def test_diagnose_scores_walk_5_as_evaluate_does(tiny):
    model, scenes = tiny
    report = diagnose(model, scenes, small_classes=[scenes.class_names[2]])
    assert list(report.miou) == ["seed", *(f"walk {t}" for t in range(1, 6)), "oracle"]
    assert report.per_class_iou["walk 5"] == evaluate(model, scenes, progress=False).metrics.per_class_iou
    assert len(report.in_class_mass) == len(report.small_class_mass) == 5
    assert all(0 <= m <= 1 for m in report.in_class_mass)
    assert "oracle" in report.format()


def test_transition_mass_with_batch_statistics_leaves_the_model_untouched(tiny):
    model, scenes = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mass, small = transition_mass(model, scenes, [1], batch_statistics=True, batch_size=3)
    assert len(mass) == 5 and all(0 <= m <= 1 for m in mass)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_diagnose_refuses_other_models_and_unknown_classes(tiny):
    _, scenes = tiny
    with pytest.raises(TypeError, match="needs a DifNet"):
        diagnose(SimDeepLab(depth=18, num_classes=3), scenes)
    with pytest.raises(ValueError, match="not classes of the dataset"):
        diagnose(tiny[0], scenes, small_classes=["Pole"])
