"""The walk's Chebyshev solver: the same probabilities as the walk taken step by step (and as the
reference's walk), at odd sizes, batch > 1 and every kernel option; gradients by finite
differences; non-finite inputs and unknown solvers refused."""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from difnet.diffusion import (
    GuidedWalk,
    TransitionKernel,
    chebyshev_degree,
    chebyshev_walk,
    local_transition,
    restart_walk,
)
from difnet.refinement import BilateralWalk

FITTED = {"stride": 1, "radius": 3, "steps": 100, "mu": 0.99}


def inputs(
    batch: int, classes: int, height: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and images with edges: random cells of colour, probabilities from noisy cells."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 4, 4, generator=generator).repeat_interleave(4, 2).repeat_interleave(4, 3)
    images = images[..., :height, :width] + 0.05 * torch.randn(batch, 3, height, width, generator=generator)
    logits = 3 * torch.randn(batch, classes, height, width, generator=generator)
    return logits.softmax(1), images


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(11, 13), (12, 7)])
def test_chebyshev_matches_the_steps_at_the_fitted_setting(
    radius: int, stride: int, size: tuple[int, int]
) -> None:
    probabilities, images = inputs(3, 5, *size)
    setting = {**FITTED, "radius": radius, "stride": stride, "colour_sigma": 0.2, "position_sigma": 2.0}
    fast = BilateralWalk(**setting)(probabilities, images)
    plain = BilateralWalk(**setting, solver="steps")(probabilities, images)
    assert BilateralWalk(**setting).solver == "chebyshev"  # the default
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.sum(1), torch.ones_like(fast[:, 0]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps, mu", [(100, 0.99), (60, 0.99), (30, 0.97), (100, 0.9)])
def test_chebyshev_matches_the_reference_walk_in_double_precision(steps: int, mu: float) -> None:
    probabilities, images = inputs(1, 4, 9, 10, seed=1)
    walk = GuidedWalk(
        3, stride=1, radius=2, steps=steps, mu=mu, colour_sigma=0.3, position_sigma=1.5
    ).double()
    features = walk.features(images.double()).detach()
    P = reference.transition_matrix(features[0].numpy(), "distance", radius=2, grid=(9, 10))
    start = probabilities.double().flatten(2).transpose(1, 2)[0].numpy()
    expected = reference.random_walk(P, start, mu, steps)
    assert chebyshev_degree(mu, steps) < steps
    out = walk(probabilities.double(), images.double())
    numpy.testing.assert_allclose(out.flatten(2).transpose(1, 2)[0].detach().numpy(), expected, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 150), mu=st.floats(0.05, 0.995), seed=st.integers(0, 2**16))
def test_the_truncated_series_stays_within_its_tail_on_any_symmetric_kernel(
    steps: int, mu: float, seed: int
) -> None:
    """On a random symmetric `W`, `P = D^-1 W`: the series agrees with `steps` plain steps to its bound."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 20, 3, generator=generator, dtype=torch.float64)
    transition = local_transition(features, TransitionKernel("distance", 2), (4, 5))
    start = torch.rand(1, 20, 3, generator=generator, dtype=torch.float64)
    degree = chebyshev_degree(mu, steps)
    assert 0 <= degree <= steps
    plain = next(restart_walk(transition, start, mu, [steps]))[1]
    torch.testing.assert_close(
        next(chebyshev_walk(transition, start, mu, [steps]))[1], plain, rtol=0, atol=1e-4
    )


def test_the_degree_saves_products_where_the_walk_is_long_and_none_where_it_is_short() -> None:
    assert chebyshev_degree(0.99, 100) <= 45
    assert chebyshev_degree(0.97, 3) == 3


def test_gradients_of_the_learned_walk_match_finite_differences() -> None:
    walk = GuidedWalk(3, stride=1, radius=1, steps=40, mu=0.95, colour_sigma=0.5, position_sigma=1.0).double()
    assert chebyshev_degree(0.95, 40) < 40  # the Chebyshev path is the one checked
    probabilities, images = (t.double().requires_grad_(True) for t in inputs(2, 3, 5, 6, seed=2))
    names = ("raw_mu", "colour.weight", "raw_position_scale")
    weights = tuple(
        dict(walk.named_parameters())[name].detach().clone().requires_grad_(True) for name in names
    )

    def walked(probabilities, images, *weights):
        return torch.func.functional_call(walk, dict(zip(names, weights)), (probabilities, images))

    assert torch.autograd.gradcheck(walked, (probabilities, images, *weights))


@pytest.mark.parametrize("which", ["probabilities", "images"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_are_refused(which: str, bad: float) -> None:
    probabilities, images = inputs(1, 3, 6, 7)
    (probabilities if which == "probabilities" else images)[0, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=f"{which} must be finite"):
        BilateralWalk()(probabilities, images)


def test_finite_inputs_whose_sum_overflows_pass() -> None:
    """The check sums first: a sum that overflows on finite values is looked at value by value."""
    probabilities, images = inputs(1, 3, 6, 7)
    images[0, :, :2] = torch.finfo(torch.float32).max
    assert torch.isinf(images.sum())
    BilateralWalk(stride=1, steps=2)(probabilities, images)


def test_an_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="solver must be one of"):
        BilateralWalk(solver="multigrid")
    with pytest.raises(ValueError, match="solver must be one of"):
        GuidedWalk(3, solver="multigrid")
