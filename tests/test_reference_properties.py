"""Properties of the reference diffusion over generated inputs, on NumPy and (with a GPU) CuPy."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reference import (
    attainable_residual,
    cascade,
    closed_form,
    closed_form_laplacian,
    random_walk,
    transition_matrix,
    walk_error_bound,
)

MAX_NODES = 48
DTYPES = st.sampled_from([np.float32, np.float64])


def _cupy_with_gpu() -> ModuleType:
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        pytest.skip(f"CuPy is installed but no CUDA device is usable: {error}")
    if devices == 0:
        pytest.skip("CuPy is installed but no CUDA device is present")
    return cupy


@pytest.fixture(scope="module", params=["numpy", "cupy"])
def xp(request: pytest.FixtureRequest) -> ModuleType:
    """The array module the properties run on; CuPy only where a GPU is present."""
    return np if request.param == "numpy" else _cupy_with_gpu()


def host(array: object) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def rounding(dtype: type, scale: float, mu: float = 0.0) -> float:
    """Rounding slack: 100 eps times the values' size and cond(I - mu P) <= (1+mu)/(1-mu)."""
    return 100 * float(np.finfo(dtype).eps) * scale * (1 + mu) / (1 - mu)


@dataclass
class Problem:
    """A diffusion problem: features, the seed s, mu, generated in NumPy of one dtype."""

    features: np.ndarray
    s: np.ndarray
    mu: float

    @property
    def dtype(self) -> type:
        return self.s.dtype.type

    @property
    def scale(self) -> float:
        return float(np.abs(self.s).max())


@st.composite
def problems(draw: st.DrawFn, max_mu: float = 0.95) -> Problem:
    """Random well-posed problems: P from nearly uniform to nearly one-hot rows, any mu in range."""
    dtype = draw(DTYPES)
    batch = draw(st.sampled_from([(), (2,), (2, 1)]))
    n = draw(st.integers(1, MAX_NODES))
    k = draw(st.integers(1, 4))
    d = draw(st.integers(1, 8))
    feature_scale = draw(st.floats(0.01, 3.0))
    seed_scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    mu = draw(st.floats(0.0, max_mu))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    features = (feature_scale * rng.standard_normal(batch + (n, d))).astype(dtype)
    s = (seed_scale * rng.standard_normal(batch + (n, k))).astype(dtype)
    return Problem(features, s, mu)


# transition_matrix ---------------------------------------------------------------------------


@st.composite
def extreme_features(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(DTYPES)
    shape = draw(st.sampled_from([(), (2,)])) + (draw(st.integers(1, 16)), draw(st.integers(1, 4)))
    magnitudes = st.floats(-1e4, 1e4, width=32) | st.sampled_from([1e4, -1e4, 0.0, 2.0**-100])
    return draw(hnp.arrays(dtype, shape, elements=magnitudes))


@given(features=extreme_features())
def test_transition_rows_are_probabilities_even_at_extreme_norms(xp, features):
    P = host(transition_matrix(xp.asarray(features)))
    n = features.shape[-2]
    assert P.shape == features.shape[:-1] + (n,)
    assert P.dtype == features.dtype
    assert np.isfinite(P).all() and (P >= 0).all()
    eps = float(np.finfo(features.dtype).eps)
    np.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=0, atol=(n + 2) * eps)


@given(problem=problems())
def test_transition_matrix_is_the_softmax_of_inner_products(xp, problem):
    f = problem.features.astype(np.float64)
    logits = f @ np.swapaxes(f, -1, -2)
    expected = scipy.special.softmax(logits, axis=-1)
    P = host(transition_matrix(xp.asarray(problem.features)))
    eps = float(np.finfo(problem.dtype).eps)
    np.testing.assert_allclose(P, expected, rtol=0, atol=100 * eps * (1 + np.abs(logits).max()))


# random_walk, walk_error_bound, closed_form --------------------------------------------------


@given(problem=problems())
def test_walk_converges_to_closed_form_within_the_mu_power_bound(xp, problem):
    P, s, mu = transition_matrix(xp.asarray(problem.features)), xp.asarray(problem.s), problem.mu
    exact = host(closed_form(P, s, mu))
    eps = float(np.finfo(problem.dtype).eps)
    steps = 1 if mu == 0 else math.ceil(math.log(eps) / math.log(mu))
    slack = rounding(problem.dtype, problem.scale, mu)
    initial = host(walk_error_bound(P, s, mu, 0))
    np.testing.assert_allclose(initial, np.abs(problem.s - exact).max(axis=-2), atol=slack)

    y = s
    for t in range(steps + 1):
        if t > 0:
            y = random_walk(P, s, mu, 1, y0=y)
        error = np.abs(host(y) - exact).max(axis=-2)
        assert (error <= mu**t * initial + slack).all(), f"iterate {t} breaks the mu^T bound"
    assert y.dtype == problem.dtype
    np.testing.assert_allclose(host(random_walk(P, s, mu, steps)), host(y), rtol=0, atol=slack)
    np.testing.assert_allclose(host(y), exact, rtol=0, atol=2 * slack)
    for t in (1, steps // 2, steps):
        np.testing.assert_allclose(
            host(walk_error_bound(P, s, mu, t)), mu**t * initial, rtol=1e-5, atol=slack
        )


@given(problem=problems())
def test_closed_form_is_the_fixed_point_of_the_walk(xp, problem):
    P, s, mu = transition_matrix(xp.asarray(problem.features)), xp.asarray(problem.s), problem.mu
    y = closed_form(P, s, mu)
    assert y.dtype == problem.dtype and y.shape == problem.s.shape
    step = host(mu * (P @ y) + (1 - mu) * s)
    slack = rounding(problem.dtype, problem.scale, mu)
    np.testing.assert_allclose(step, host(y), rtol=0, atol=slack)


@given(problem=problems())
def test_closed_form_batches_and_broadcasts_like_separate_solves(xp, problem):
    P = transition_matrix(xp.asarray(problem.features))
    shared = P.reshape((-1,) + P.shape[-2:])[0]  # one P [N, N] against a batch of seeds
    s, mu = xp.asarray(problem.s), problem.mu
    batched, broadcast = host(closed_form(P, s, mu)), host(closed_form(shared, s, mu))
    slack = rounding(problem.dtype, problem.scale, mu)
    for index in np.ndindex(problem.s.shape[:-2]):
        np.testing.assert_allclose(
            batched[index], host(closed_form(P[index], s[index], mu)), rtol=0, atol=slack
        )
        np.testing.assert_allclose(
            broadcast[index], host(closed_form(shared, s[index], mu)), rtol=0, atol=slack
        )


@given(problem=problems())
def test_iterative_solver_agrees_with_dense_solver(xp, problem):
    P, s, mu = transition_matrix(xp.asarray(problem.features)), xp.asarray(problem.s), problem.mu
    dense = host(closed_form(P, s, mu))
    iterative = closed_form(P, s, mu, method="iterative", tol=1e-12)
    assert iterative.dtype == problem.dtype and iterative.shape == dense.shape
    residual = max(1e-12, attainable_residual(problem.dtype, mu))  # what GMRES was asked for
    allowed = 10 * residual * (1 + mu) / (1 - mu) * np.abs(dense).max()
    np.testing.assert_allclose(host(iterative), dense, rtol=0, atol=allowed)


def test_iterative_solver_agrees_with_dense_solver_at_larger_n():
    rng = np.random.default_rng(0)
    P = transition_matrix(rng.standard_normal((640, 16)) / 2)
    s = rng.standard_normal((640, 21))
    dense = closed_form(P, s, 0.9)
    np.testing.assert_allclose(closed_form(P, s, 0.9, method="iterative"), dense, atol=1e-8)


# closed_form_laplacian -----------------------------------------------------------------------


@given(problem=problems(), sparsity=st.floats(0.0, 0.9), seed=st.integers(0, 2**32 - 1))
def test_laplacian_form_equals_closed_form_with_normalised_affinity(xp, problem, sparsity, seed):
    rng = np.random.default_rng(seed)
    n = problem.s.shape[-2]
    shape = problem.s.shape[:-1] + (n,)
    W = rng.exponential(size=shape) * (rng.uniform(size=shape) >= sparsity)  # not symmetric
    W = (W + np.eye(n)).astype(problem.dtype)  # every degree positive
    m = rng.uniform(size=problem.s.shape[:-1]).astype(problem.dtype)
    y = closed_form_laplacian(xp.asarray(W), xp.asarray(m), xp.asarray(problem.s), problem.mu)
    assert y.dtype == problem.dtype
    P = W / W.sum(axis=-1, keepdims=True)  # D^-1 W
    expected = closed_form(xp.asarray(P), xp.asarray(m[..., None] * problem.s), problem.mu)
    np.testing.assert_allclose(
        host(y), host(expected), rtol=0, atol=rounding(problem.dtype, problem.scale, problem.mu)
    )


# cascade -------------------------------------------------------------------------------------


@given(problem=problems(), walks=st.integers(1, 8))
def test_cascade_with_unit_betas_and_shared_P_is_the_plain_walk(xp, problem, walks):
    P, s, mu = transition_matrix(xp.asarray(problem.features)), xp.asarray(problem.s), problem.mu
    ys = cascade([P] * walks, s, [mu] * walks, [1.0] * walks)
    assert len(ys) == walks + 1
    for t, y in enumerate(ys):
        assert y.dtype == problem.dtype
        np.testing.assert_allclose(
            host(y),
            host(random_walk(P, s, mu, t)),
            rtol=0,
            atol=4 * float(np.finfo(problem.dtype).eps) * problem.scale,
        )


@given(problem=problems(), mus=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=6))
def test_cascade_with_zero_betas_leaves_y_unchanged(xp, problem, mus):
    rng = np.random.default_rng(len(mus))
    features = [problem.features * float(rng.uniform(0.1, 2)) for _ in mus]
    Ps = [transition_matrix(xp.asarray(f)) for f in features]
    ys = cascade(Ps, xp.asarray(problem.s), mus, [0.0] * len(mus))
    assert len(ys) == len(mus) + 1
    for y in ys:
        np.testing.assert_array_equal(host(y), problem.s)


@given(problem=problems(max_mu=0.9), beta=st.floats(0.3, 1.0))
def test_cascade_of_copies_of_P_converges_to_closed_form(xp, problem, beta):
    P, s, mu = transition_matrix(xp.asarray(problem.features)), xp.asarray(problem.s), problem.mu
    exact = host(closed_form(P, s, mu))
    rate = 1 - beta * (1 - mu)  # ||beta mu P + (1 - beta) I||_inf
    eps = float(np.finfo(problem.dtype).eps)
    walks = 1 if rate == 0 else math.ceil(math.log(eps) / math.log(rate))
    ys = cascade([P] * walks, s, [mu] * walks, [beta] * walks)
    initial = np.abs(problem.s - exact).max(axis=-2)
    slack = rounding(problem.dtype, problem.scale, mu) / beta
    for t, y in enumerate(ys):
        error = np.abs(host(y) - exact).max(axis=-2)
        assert (error <= rate**t * initial + slack).all(), f"walk {t} contracts too slowly"
    np.testing.assert_allclose(host(ys[-1]), exact, rtol=0, atol=2 * slack)


# dtypes and imports --------------------------------------------------------------------------


def test_mixed_precision_promotes_to_float64_and_float32_stays_float32():
    rng = np.random.default_rng(0)
    P32 = transition_matrix(rng.standard_normal((6, 3)).astype(np.float32))
    s32, s64 = rng.standard_normal((6, 2)).astype(np.float32), rng.standard_normal((6, 2))
    assert closed_form(P32, s32, 0.5).dtype == np.float32
    assert closed_form(P32, s64, 0.5).dtype == np.float64
    assert random_walk(P32, s32, 0.5, 3).dtype == np.float32
    assert cascade([P32], s32, [0.5], [0.5])[-1].dtype == np.float32
    assert transition_matrix(np.arange(6).reshape(3, 2)).dtype == np.float64


def test_importing_reference_does_not_import_cupy():
    code = "import sys, reference; assert 'cupy' not in sys.modules, 'cupy was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attainable_residual_docstring_states_what_the_code_computes():
    doc = attainable_residual.__doc__
    factor = float(re.search(r"(\d+) eps cond", doc).group(1))
    at_zero, at_099 = (float(x) for x in re.findall(r"(\d\.\de-\d) at mu = ", doc))
    eps = float(np.finfo(np.float32).eps)
    assert attainable_residual(np.float32, 0.0) == factor * eps
    assert f"{attainable_residual(np.float32, 0.0):.1e}" == f"{at_zero:.1e}"
    assert f"{attainable_residual(np.float32, 0.99):.1e}" == f"{at_099:.1e}"
