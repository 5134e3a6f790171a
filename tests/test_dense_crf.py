"""The dense CRF refiner (`difnet.refinement.DenseCRF`, pydensecrf2): marginals, the inference it
shares between iteration counts, what it fixes, its fit against `evaluate`, and its errors."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import Tensor, nn

from difnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from difnet.evaluation import evaluate
from difnet.refinement import DenseCRF, RefinedModel, dense_crf_grid, fit_dense_crf

needs_crf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None,
    reason='the dense CRF needs pydensecrf2 (pip install "difnet[crf]")',
)


def normalised(rgb: Tensor) -> Tensor:
    """Colours in [0, 1], `[3, H, W]`, as the models take them (ImageNet's normalisation)."""
    return (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


class TwoHalves(torch.utils.data.Dataset):
    """Images whose left half is black and right half white, holding classes 0 and 1."""

    num_classes, ignore_index, class_names = 2, 255, ["left", "right"]

    def __init__(self, count: int = 2, size: tuple[int, int] = (17, 23)) -> None:
        label = torch.zeros(size, dtype=torch.long)
        label[:, size[1] // 2 :] = 1
        self.items = [(normalised(label.float().expand(3, *size)), label) for _ in range(count)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.items[index]


class NoisySeed(nn.Module):
    """Scores that are right but unsure everywhere and wrong (unsure too) on a grid of pixels."""

    num_classes, in_channels = 2, 3

    def forward(self, images: Tensor) -> Tensor:
        right = (images[:, :1] > 0).float()
        flipped = torch.zeros_like(right)
        flipped[..., 1:-1:3, 1:-1:3] = 1
        truth = (right - flipped).abs()
        return torch.cat([1 - truth, truth], 1) * 0.8  # softmax: 0.69 for the class it says


@needs_crf
def test_marginals_are_probabilities_at_odd_sizes_and_each_count_equals_its_own_inference():
    torch.manual_seed(0)
    probabilities, images = torch.randn(2, 4, 13, 19).softmax(1), torch.randn(2, 3, 13, 19)
    crf = DenseCRF(iterations=3)
    out = crf(probabilities, images)
    assert out.shape == probabilities.shape and torch.allclose(out.sum(1), torch.ones(2, 13, 19), atol=1e-5)
    states = dict(crf.states(probabilities, images, [7, 1, 3]))
    assert list(states) == [1, 3, 7] and torch.equal(states[3], out)
    assert torch.equal(states[7], DenseCRF(iterations=7)(probabilities, images))


@needs_crf
def test_it_fixes_unsure_isolated_mistakes_that_the_colours_contradict():
    dataset, model = TwoHalves(), NoisySeed()
    image = dataset[0][0][None]
    probabilities = model(image).softmax(1)
    assert (probabilities.argmax(1) != dataset[0][1]).any()
    assert torch.equal(DenseCRF()(probabilities, image).argmax(1), dataset[0][1][None])


@needs_crf
def test_the_fit_scores_each_setting_as_evaluate_scores_it_and_picks_one_that_fixes():
    dataset, model = TwoHalves(), NoisySeed()
    settings = dense_crf_grid((3.0, 50.0), (13.0,), (0.01, 10.0), (1, 5))
    fit = fit_dense_crf(model, dataset, settings)
    assert fit.model_miou == pytest.approx(evaluate(model, dataset, progress=False).metrics.miou)
    for crf, score in fit.scores:
        assert score == pytest.approx(
            evaluate(RefinedModel(model, crf), dataset, progress=False).metrics.miou
        )
    assert fit.best_miou == 1.0 > fit.model_miou and fit.crf.bilateral_weight == 10.0
    assert fit.to_dict()["crf"]["iterations"] == fit.crf.iterations


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"iterations": 2.5}, "iterations must be a positive integer"),
        ({"colour_sigma": 0.0}, "colour_sigma must be a positive finite number"),
        ({"bilateral_weight": float("nan")}, "bilateral_weight must be a positive finite number"),
    ],
)
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DenseCRF(**options)


def test_bad_inputs_are_refused_before_the_crf_runs():
    crf = DenseCRF()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] \(RGB\)"):
        crf(torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="share batch size and"):
        crf(torch.rand(1, 2, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="must be finite"):
        crf(torch.full((1, 2, 8, 8), float("nan")), torch.rand(1, 3, 8, 8))


def test_without_pydensecrf_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    with pytest.raises(ImportError, match=r'pip install "difnet\[crf\]"'):
        DenseCRF()(torch.rand(1, 2, 8, 8).softmax(1), torch.rand(1, 3, 8, 8))
