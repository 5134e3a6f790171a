"""`difnet.diagnostics` against answers known in advance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from difnet.data import SyntheticShapes
from difnet.data.palettes import IGNORE_INDEX
from difnet.diagnostics import (
    WALK_OVERRIDES,
    WalkOverride,
    cascade_output,
    diagnose,
    transition_shares,
)
from difnet.diffusion import transition_matrix
from difnet.diffusion.label_statistics import label_propagate, node_labels
from difnet.evaluation import evaluate
from difnet.models import DifNet, SimDeepLab
from difnet.models.heads import upsample

V = IGNORE_INDEX


def test_the_override_grid_is_24_scalar_settings_and_5_switch_offs():
    assert len(WALK_OVERRIDES) == 29 and len({o.name for o in WALK_OVERRIDES}) == 29
    learned = ([0.3] * 5, [0.6] * 5)
    assert WalkOverride("x", 0.8, 0.25, (1,)).scalars(*learned) == ([0.8] * 5, [0.0] + [0.25] * 4)
    off = [o for o in WALK_OVERRIDES if o.mu is None]
    assert [o.off for o in off] == [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5)]
    assert off[-1].scalars(*learned) == ([0.3] * 5, [0.6, 0.0, 0.0, 0.0, 0.0])


def test_the_cascade_follows_eqs_4_and_5_and_a_walk_at_beta_0_passes_through():
    nodes = torch.tensor([[0, 0, 1]])
    seed = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    walk = [lambda y: label_propagate(nodes, y)]
    walked = torch.tensor([[[0.5, 0.0], [0.5, 0.0], [0.0, 2.0]]])
    expected = 0.5 * (0.5 * walked + 0.5 * seed) + 0.5 * seed
    torch.testing.assert_close(cascade_output(walk, seed, [0.5], [0.5]), expected)
    torch.testing.assert_close(cascade_output(walk * 2, seed, [0.5, 0.9], [0.0, 0.0]), seed)


def test_with_label_built_transitions_the_best_override_beats_the_seed():
    generator = torch.Generator().manual_seed(0)
    nodes = torch.randint(0, 4, (1, 200), generator=generator)
    truth = F.one_hot(nodes, 4).float()
    seed = truth + 0.9 * torch.randn(1, 200, 4, generator=generator)  # a seed wrong on many nodes
    walks = [lambda y: label_propagate(nodes, y)] * 5
    learned = ([0.5] * 5, [0.5] * 5)

    def accuracy(y: torch.Tensor) -> float:
        return float((y.argmax(-1) == nodes).float().mean())

    scores = {o.name: accuracy(cascade_output(walks, seed, *o.scalars(*learned))) for o in WALK_OVERRIDES}
    assert accuracy(seed) < 0.8
    assert max(scores.values()) == 1.0 > accuracy(seed)
    assert scores["learned, walk 1 off"] > accuracy(seed)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, head_init="normal").eval()
    scenes = SyntheticShapes(3, size=48, num_classes=3, seed=1)
    return model, scenes


def test_diagnose_scores_walk_5_as_evaluate_does_and_the_learned_setting_as_walk_5(tiny):
    model, scenes = tiny
    report = diagnose(model, scenes, small_classes=[scenes.class_names[2]])
    assert list(report.miou) == ["seed", *(f"walk {t}" for t in range(1, 6)), "oracle"]
    assert report.per_class_iou["walk 5"] == evaluate(model, scenes, progress=False).metrics.per_class_iou
    assert report.walk_gain == report.miou["walk 5"] - report.miou["seed"]
    # a fresh model's walks are at mu = beta = 0.5: that grid point is the model itself
    assert report.overrides["mu 0.5, beta 0.5"] == pytest.approx(report.miou["walk 5"], abs=1e-12)
    assert report.overrides["learned, walks 1-4 off"] != report.overrides["mu 0.95, beta 1.0"]
    best = report.best_override
    assert best["miou"] == max(report.overrides.values())
    assert best["gain"] == pytest.approx(best["miou"] - report.miou["seed"])
    assert "Walk gain" in report.format() and "oracle" in report.format()


@torch.no_grad()
def explicit_level_means(model: DifNet, images: torch.Tensor, labels: torch.Tensor, small: int):
    """Self-weight over labelled nodes and in-class share over small-class nodes, from explicit P."""
    out = model(images, intermediates=True)
    grid = tuple(out.walks[-1].shape[-2:])
    nodes = node_labels(labels, grid, model.num_classes)[0]
    others = ~torch.eye(len(nodes), dtype=torch.bool)
    same = (nodes[:, None] == nodes[None]) & others
    labelled = nodes != V
    self_weights, small_shares = [], []
    for features in out.features:
        P = transition_matrix(features)[0]
        self_weights.append(float(P.diagonal()[labelled].mean()))
        share = (P * same).sum(-1) / (P * others).sum(-1)
        chosen = (nodes == small) & same.any(-1)
        small_shares.append(float(share[chosen].mean()) if chosen.any() else None)
    return self_weights, small_shares


def test_diagnose_reports_the_self_weight_and_small_class_share_of_the_explicit_matrices(tiny):
    model, scenes = tiny
    images, labels = scenes[0]
    report = diagnose(model, scenes, small_classes=[scenes.class_names[1]], limit=1)
    self_weights, small_shares = explicit_level_means(model, images[None], labels[None], small=1)
    assert report.mean_self_weight == pytest.approx(self_weights, rel=1e-5)
    assert report.small_class_share == pytest.approx(small_shares, rel=1e-5)
    assert report.small_class_share != report.in_class_share


@torch.no_grad()
def explicit_error_shares(model: DifNet, images: torch.Tensor, labels: torch.Tensor):
    """At the labelled nodes the seed gets wrong, the share of P's off-diagonal mass reaching
    nodes whose seed holds the true class, and nodes whose seed holds the same wrong class."""
    out = model(images, intermediates=True)
    grid = tuple(out.walks[-1].shape[-2:])
    nodes = node_labels(labels, grid, model.num_classes)[0]
    predicted = upsample(out.seed, grid).flatten(2)[0].argmax(0)
    others = ~torch.eye(len(nodes), dtype=torch.bool)
    right = (nodes[:, None] == predicted[None]) & others
    echo = (predicted[:, None] == predicted[None]) & others
    same_class = (nodes[:, None] == nodes[None]) & others
    wrong = (nodes != V) & (predicted != nodes) & same_class.any(-1)
    right_shares, echo_shares = [], []
    for features in out.features:
        P = transition_matrix(features)[0]
        sent = (P * others).sum(-1)
        right_shares.append(float(((P * right).sum(-1) / sent)[wrong].mean()))
        echo_shares.append(float(((P * echo).sum(-1) / sent)[wrong].mean()))
    return right_shares, echo_shares, int(wrong.sum())


def test_diagnose_reports_the_shares_at_the_nodes_the_seed_gets_wrong_as_explicit_matrices_do(tiny):
    model, scenes = tiny
    images, labels = scenes[0]
    report = diagnose(model, scenes, limit=1)
    right_shares, echo_shares, wrong = explicit_error_shares(model, images[None], labels[None])
    assert wrong > 0  # a fresh model's seed gets nodes wrong, so the statistic is exercised
    assert report.seed_error_share == pytest.approx(right_shares, rel=1e-5)
    assert report.seed_error_seed_share == pytest.approx(echo_shares, rel=1e-5)
    assert all(r + e <= 1 + 1e-6 for r, e in zip(report.seed_error_share, report.seed_error_seed_share))
    assert report.seed_error_share != report.in_class_share
    assert "the seed gets wrong" in report.format()


def test_the_identity_kernel_reports_self_weight_one_no_share_and_no_walk_gain(tiny):
    _, scenes = tiny
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, kernel="identity").eval()
    report = diagnose(model, scenes, limit=2)
    assert report.mean_self_weight == [1.0] * 5
    assert report.in_class_share == [None] * 5
    assert report.seed_error_share == report.seed_error_seed_share == [None] * 5
    assert report.walk_gain == 0.0 and report.best_override["gain"] == 0.0


def test_transition_shares_with_batch_statistics_leave_the_model_untouched(tiny):
    model, scenes = tiny
    before = copy.deepcopy(model.state_dict())
    shares = transition_shares(model, scenes, [1], batch_statistics=True, batch_size=3)
    assert set(shares) == {"in_class_share", "small_class_share", "mean_self_weight"}
    assert all(0 <= s <= 1 for s in shares["in_class_share"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    evaluated = transition_shares(model, scenes, [1])
    assert evaluated["mean_self_weight"] != shares["mean_self_weight"]  # running vs batch statistics


def test_diagnose_refuses_other_models_and_unknown_classes(tiny):
    _, scenes = tiny
    with pytest.raises(TypeError, match="needs a DifNet"):
        diagnose(SimDeepLab(depth=18, num_classes=3), scenes)
    with pytest.raises(ValueError, match="not classes of the dataset"):
        diagnose(tiny[0], scenes, small_classes=["Pole"])
