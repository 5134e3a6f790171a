"""The bilateral walk: the reference's walk on its kernel, what it fixes and what it leaves, its
fit, and its errors."""

from __future__ import annotations

import numpy
import pytest
import torch
from torch import Tensor, nn

import reference
from difnet.evaluation import evaluate
from difnet.refinement import BilateralWalk, RefinedModel, bilateral_grid, cheapest_within, fit_bilateral_walk

FLIP = 1e-3  # channel 2's mark of a flipped seed pixel: too faint for the colour kernel to see


class TwoRegions(torch.utils.data.Dataset):
    """Images whose left and right halves differ in colour (channel 0) and hold classes 0 and 1;
    channel 2 marks, faintly, isolated pixels where `MarkedSeed` predicts the wrong class."""

    num_classes, ignore_index, class_names = 2, 255, ["left", "right"]

    def __init__(self, count: int = 3, size: tuple[int, int] = (16, 20)) -> None:
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(count):
            label = torch.zeros(size, dtype=torch.long)
            label[:, size[1] // 2 :] = 1
            flips = torch.zeros(size)
            flips[1:-1:3, 1:-1:3] = (
                torch.rand(flips[1:-1:3, 1:-1:3].shape, generator=generator) < 0.7
            ).float()
            image = torch.stack([label.float(), torch.zeros(size), FLIP * flips])
            self.items.append((image, label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.items[index]


class MarkedSeed(nn.Module):
    """Predicts each half's class with probability 0.88, wrongly where channel 2 marks a pixel."""

    num_classes = 2

    def forward(self, images: Tensor) -> Tensor:
        right = (images[:, 0] > 0.5) ^ (images[:, 2] > FLIP / 2)
        return torch.stack([torch.zeros_like(images[:, 0]), 4.0 * right.float() - 2.0], dim=1)


def test_matches_the_reference_walk_on_its_kernel() -> None:
    walk = BilateralWalk(stride=1, radius=2, steps=3, colour_sigma=0.3, position_sigma=1.5, mu=0.8)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    probabilities = torch.rand(2, 4, 5, 6, generator=generator, dtype=torch.float64).softmax(1)
    features = walk.guide_features(images).numpy()
    P = reference.transition_matrix(features, "distance", radius=2, grid=(5, 6))
    seed = probabilities.flatten(2).transpose(1, 2).numpy()
    expected = reference.random_walk(P, seed, 0.8, 3)
    walked = walk(probabilities, images).flatten(2).transpose(1, 2).numpy()
    numpy.testing.assert_allclose(walked, expected, rtol=1e-5, atol=1e-6)


def test_kernel_is_bilateral() -> None:
    """Pixels of another colour, or farther away, get less weight, as the closed form says."""
    walk = BilateralWalk(stride=1, radius=3, steps=1, colour_sigma=0.5, position_sigma=2.0)
    features = walk.guide_features(torch.tensor([[[[0.0, 0.0, 0.0, 1.0]]]]))
    P = reference.transition_matrix(features.double().numpy(), "distance", radius=3, grid=(1, 4))[0]
    # logits -(dc^2 / colour_sigma^2 + dp^2 / position_sigma^2) / 2, from pixel 0 to pixels 1-3
    assert P[0, 1] / P[0, 2] == pytest.approx(numpy.exp((4 - 1) / (2 * 2.0**2)))
    assert P[0, 1] / P[0, 3] == pytest.approx(numpy.exp((9 - 1) / (2 * 2.0**2) + 1 / (2 * 0.5**2)))


def test_fixes_isolated_errors_without_crossing_the_colour_edge() -> None:
    dataset, model = TwoRegions(), MarkedSeed()
    image, label = dataset[0]
    probabilities = model(image[None]).softmax(1)
    walk = BilateralWalk(stride=1, radius=2, steps=10, colour_sigma=0.05, position_sigma=2.0)
    walked = walk(probabilities, image[None])
    assert (probabilities.argmax(1) != label).sum() > 0
    assert torch.equal(walked.argmax(1)[0], label)
    assert torch.allclose(walked.sum(1), torch.ones_like(walked[:, 0]), atol=1e-6)
    # no mass crosses the colour edge: whatever the right half holds, the left half walks alike
    other = probabilities.clone()
    other[..., label == 1] = other[..., label == 1].flip(1)
    left = label == 0
    assert torch.allclose(walk(other, image[None])[..., left], walked[..., left], atol=1e-6)


def test_a_blind_colour_kernel_blurs_across_the_edge() -> None:
    dataset, model = TwoRegions(), MarkedSeed()
    image, label = dataset[0]
    probabilities = model(image[None]).softmax(1)
    blind = BilateralWalk(stride=1, radius=3, steps=15, colour_sigma=100.0, position_sigma=100.0, mu=0.97)
    edge = label.shape[1] // 2 - 1
    assert (blind(probabilities, image[None])[0, 0, :, edge] < probabilities[0, 0, :, edge] - 0.1).all()


def test_odd_sizes_and_strides_keep_the_input_size() -> None:
    walk = BilateralWalk(stride=2, radius=1, steps=2)
    assert walk.grid((13, 17)) == (7, 9)
    out = walk(torch.rand(2, 3, 13, 17).softmax(1), torch.rand(2, 3, 13, 17))
    assert out.shape == (2, 3, 13, 17)


def test_fit_scores_each_setting_as_evaluate_scores_it() -> None:
    dataset, model = TwoRegions(), MarkedSeed()
    settings = bilateral_grid((0.05, 100.0), (2.0,), (0.8, 0.97), (1, 4, 10), stride=1, radius=2)
    fit = fit_bilateral_walk(model, dataset, settings)
    assert fit.model_miou == pytest.approx(evaluate(model, dataset, progress=False).metrics.miou)
    for walk, score in fit.scores[::5]:
        refined = evaluate(RefinedModel(model, walk), dataset, progress=False).metrics.miou
        assert score == pytest.approx(refined)
    assert fit.walk.colour_sigma == 0.05
    assert fit.best_miou == 1.0 > fit.model_miou
    assert fit.to_dict()["walk"]["colour_sigma"] == 0.05


def test_a_fit_with_a_tolerance_takes_the_cheapest_walk_within_it_of_the_best() -> None:
    dataset, model = TwoRegions(), MarkedSeed()
    # the longest walks first: the first best is the dearest of the settings that tie
    settings = bilateral_grid((0.05, 100.0), (2.0,), (0.8, 0.97), (10, 4, 1), stride=1, radius=2)
    best = fit_bilateral_walk(model, dataset, settings)
    fast = fit_bilateral_walk(model, dataset, settings, tolerance=0.02)
    within = [walk for walk, score in best.scores if score >= best.best_miou - 0.02]
    assert fast.walk.cost == min(walk.cost for walk in within) < best.walk.cost
    assert fast.scores == best.scores  # the same search, another choice
    assert cheapest_within(best.scores, 0.0, lambda walk: walk.cost) in [
        w for w, s in best.scores if s == best.best_miou
    ]
    with pytest.raises(ValueError, match="tolerance must be at least 0"):
        fit_bilateral_walk(model, dataset, settings, tolerance=-0.1)


def test_a_walks_cost_counts_its_products_entries_and_grid() -> None:
    assert BilateralWalk(stride=1, radius=3, steps=100, mu=0.99).cost == 42 * 49  # the Chebyshev series' 42
    assert BilateralWalk(stride=1, radius=3, steps=100, mu=0.99, solver="steps").cost == 100 * 49
    assert BilateralWalk(stride=2, radius=1, steps=5, mu=0.9).cost == 5 * 9 / 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stride": 0}, "stride must be a positive integer"),
        ({"steps": 1.5}, "steps must be a positive integer"),
        ({"colour_sigma": 0.0}, "colour_sigma must be a positive number"),
        ({"mu": 1.0}, "mu must lie strictly between 0 and 1"),
    ],
)
def test_refuses_bad_settings(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BilateralWalk(**options)


def test_refuses_mismatched_inputs() -> None:
    walk = BilateralWalk()
    with pytest.raises(ValueError, match=r"share batch size and \(H, W\).*\(1, 2, 8, 8\) and \(1, 3, 8, 9\)"):
        walk(torch.rand(1, 2, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
        walk(torch.rand(2, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="at least one setting"):
        fit_bilateral_walk(MarkedSeed(), TwoRegions(), [])
