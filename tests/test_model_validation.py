"""Bad images are refused at the model boundary with a message naming the problem."""

from __future__ import annotations

import pytest
import torch

from difnet.models import DifNet, SimDeepLab


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return [DifNet(depth=18, num_classes=3), SimDeepLab(depth=18, num_classes=3)]


def with_value(value: float) -> torch.Tensor:
    images = torch.zeros(1, 3, 32, 32)
    images[0, 1, 5, 7] = value
    return images


@pytest.mark.parametrize(
    "images, problem",
    [
        (torch.zeros(3, 32, 32), r"3-D tensor of shape \(3, 32, 32\).*unsqueeze\(0\)"),
        (torch.zeros(1, 1, 32, 32), r"3 \(RGB\) channels.*\(1, 1, 32, 32\)"),
        (torch.zeros(1, 4, 32, 32), r"3 \(RGB\) channels.*\(1, 4, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"floating-point.*torch\.uint8"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int64), r"floating-point.*torch\.int64"),
        (torch.zeros(1, 3, 15, 32), r"at least 16x16 pixels.*\(1, 3, 15, 32\)"),
        (torch.zeros(1, 3, 32, 8), r"at least 16x16 pixels"),
    ],
)
def test_bad_images_raise_a_value_error_naming_the_problem(models, images, problem):
    for model in models:
        with pytest.raises(ValueError, match=problem):
            model(images)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_is_refused_where_data_enters_not_in_every_forward(models, value):
    from difnet.evaluation import predict_probabilities

    for model in models:
        with pytest.raises(
            ValueError, match=r"images contain NaN or infinite values \(shape \(1, 3, 32, 32\)\)"
        ):
            predict_probabilities(model.eval(), with_value(value))
        model(with_value(value))  # the forward reads shapes only: no full scan, no host sync


def test_bad_images_are_refused_by_every_entry_point(models):
    difnet = models[0]
    with pytest.raises(ValueError, match="3-D"):
        difnet.forward_intermediates(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="3-D"):
        difnet.transition_maps(torch.zeros(3, 32, 32), [[0, 0]])


def test_non_tensors_are_a_type_error(models):
    with pytest.raises(TypeError, match="torch.Tensor.*ndarray"):
        models[1](torch.zeros(1, 3, 32, 32).numpy())


def test_the_smallest_valid_image_runs(models):
    for model in models:
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)
