"""Bad inputs raise ValueError/TypeError naming the offending argument and its value."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import (
    cascade,
    check_variant,
    closed_form,
    closed_form_laplacian,
    random_walk,
    transition_matrix,
    walk_error_bound,
)

RNG = np.random.default_rng(0)
P = transition_matrix(RNG.standard_normal((4, 3)))
S = RNG.standard_normal((4, 2))
W = np.exp(RNG.standard_normal((4, 4)))
M = RNG.uniform(size=4)

WALKS = {
    "closed_form": lambda P, s, mu, **kw: closed_form(P, s, mu),
    "closed_form_iterative": lambda P, s, mu, **kw: closed_form(P, s, mu, method="iterative"),
    "random_walk": lambda P, s, mu, **kw: random_walk(P, s, mu, 3, **kw),
    "walk_error_bound": lambda P, s, mu, **kw: walk_error_bound(P, s, mu, 3, **kw),
    "cascade": lambda P, s, mu, **kw: cascade([P], s, [mu], [0.5]),
}
WALKS_WITH_Y0 = ["random_walk", "walk_error_bound"]


def with_value(array: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    changed = np.array(array, dtype=np.float64)
    changed[index] = value
    return changed


# shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("walk", WALKS)
def test_seed_with_wrong_node_count_names_both_shapes(walk):
    P_name = "Ps[0]" if walk == "cascade" else "P"
    pattern = rf"s has shape \(5, 2\) but {re.escape(P_name)} has shape \(4, 4\)"
    with pytest.raises(ValueError, match=pattern):
        WALKS[walk](P, RNG.standard_normal((5, 2)), 0.5)


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("bad_P", [P[:, :3], P[0]], ids=["not square", "one dimension"])
def test_transition_matrix_must_be_a_square_stack(walk, bad_P):
    with pytest.raises(ValueError, match=re.escape(str(bad_P.shape))):
        WALKS[walk](bad_P, S, 0.5)


@pytest.mark.parametrize("walk", WALKS)
def test_seed_must_be_a_matrix_stack(walk):
    with pytest.raises(ValueError) as error:
        WALKS[walk](P, S[:, 0], 0.5)
    assert "s " in str(error.value) and "(4,)" in str(error.value)
    assert "[..., N, K]" in str(error.value)


@pytest.mark.parametrize("walk", WALKS)
def test_batch_dimensions_that_do_not_broadcast_are_named(walk):
    Ps = np.stack([P, P])
    seeds = np.stack([S, S, S])
    with pytest.raises(ValueError, match="batch dimensions do not broadcast") as error:
        WALKS[walk](Ps, seeds, 0.5)
    assert "(2, 4, 4)" in str(error.value) and "(3, 4, 2)" in str(error.value)


@pytest.mark.parametrize("walk", WALKS_WITH_Y0)
def test_start_with_wrong_class_count_names_both_shapes(walk):
    with pytest.raises(ValueError, match=r"y0 has shape \(4, 3\) but s has shape \(4, 2\)"):
        WALKS[walk](P, S, 0.5, y0=np.zeros((4, 3)))


def test_features_must_be_a_matrix_stack():
    with pytest.raises(ValueError, match=r"features must have shape \[\.\.\., N, d\].*\(3,\)"):
        transition_matrix(np.ones(3))


@pytest.mark.parametrize(
    ("m", "x", "pattern"),
    [
        (M[:3], S, r"m has shape \(3,\) but W has shape \(4, 4\)"),
        (M, S[:3], r"x has shape \(3, 2\) but W has shape \(4, 4\)"),
    ],
)
def test_laplacian_inputs_must_match_the_affinity(m, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        closed_form_laplacian(W, m, x, 0.5)


# mu, beta, steps ------------------------------------------------------------------------------


@given(mu=st.floats(allow_nan=True).filter(lambda mu: not 0 <= mu < 1))
def test_mu_outside_unit_interval_is_refused_with_its_value(mu):
    for walk in WALKS.values():
        with pytest.raises(ValueError, match=re.escape(repr(mu))):
            walk(P, S, mu)
    with pytest.raises(ValueError, match=rf"mu must lie in \[0, 1\).*{re.escape(repr(mu))}"):
        closed_form_laplacian(W, M, S, mu)


@pytest.mark.parametrize("mu", ["0.5", None, [0.5]])
def test_mu_must_be_a_number(mu):
    with pytest.raises(TypeError, match="mu must be a real number"):
        closed_form(P, S, mu)


def test_cascade_names_the_walk_whose_parameter_is_out_of_range():
    with pytest.raises(ValueError, match=r"mus\[1\] must lie in \[0, 1\) \(got 1\.0\)"):
        cascade([P, P], S, [0.5, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"betas\[0\] must lie in \[0, 1\] \(got 1\.5\)"):
        cascade([P, P], S, [0.5, 0.5], [1.5, 0.5])


def test_cascade_needs_one_mu_and_beta_per_walk():
    with pytest.raises(ValueError, match=r"one entry per walk \(got 2, 1 and 2\)"):
        cascade([P, P], S, [0.5], [0.5, 0.5])


@pytest.mark.parametrize(("steps", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
@pytest.mark.parametrize("walk", [random_walk, walk_error_bound])
def test_steps_must_be_a_non_negative_integer(walk, steps, error):
    with pytest.raises(error, match=rf"steps must be a non-negative integer \(got {steps!r}\)"):
        walk(P, S, 0.5, steps)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"method": "lu"}, r"method must be one of \('dense', 'iterative'\) \(got 'lu'\)"),
        ({"tol": 0.0}, r"tol must be a positive real number \(got 0\.0\)"),
        ({"tol": float("nan")}, r"tol must be a positive real number \(got nan\)"),
    ],
)
def test_closed_form_options_are_checked(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        closed_form(P, S, 0.5, **kwargs)


# row-stochastic P ------------------------------------------------------------------------------


@given(row=st.integers(0, 3), factor=st.floats(0.0, 3.0).filter(lambda f: abs(f - 1) > 1e-3))
def test_rows_not_summing_to_one_are_named_with_their_sum(row, factor):
    bad = P.copy()
    bad[row] *= factor
    total = float(bad[row].sum(dtype=np.float64))
    expected = f"row {row} of P sums to {total!r} ({total - 1:+.2e} off one)"
    for name in ("closed_form", "random_walk", "walk_error_bound"):
        with pytest.raises(ValueError, match=re.escape(expected)):
            WALKS[name](bad, S, 0.5)
    with pytest.raises(ValueError, match=re.escape(expected.replace("of P", "of Ps[1]"))):
        cascade([P, bad], S, [0.5, 0.5], [0.5, 0.5])


def test_row_in_a_batch_is_named_with_its_batch_index():
    bad = np.stack([P, P, P])
    bad[2, 1] *= 2
    with pytest.raises(ValueError, match=r"row 1 of P\[2\] sums to [0-9.]+ \(\+1\.00e\+00 off one\)"):
        closed_form(bad, S, 0.5)


def test_float32_rows_get_a_float32_tolerance():
    P32 = P.astype(np.float32)
    P32[0] *= np.float32(1 + 1e-5)  # float32 rounding-level, accepted
    closed_form(P32, S.astype(np.float32), 0.5)
    P64 = P.copy()
    P64[0] *= 1 + 1e-5  # far beyond float64 rounding, refused
    with pytest.raises(ValueError, match=r"row 0 of P sums to 1\.0000\d+ \(\+1\.00e-05 off one\)"):
        closed_form(P64, S, 0.5)


def test_a_float32_softmax_cast_to_float64_is_judged_by_float32_precision():
    rng = np.random.default_rng(3)
    P32 = transition_matrix(rng.standard_normal((64, 8)).astype(np.float32))
    off = np.abs(P32.sum(axis=-1, dtype=np.float64) - 1).max()
    assert off > 1.5e-8  # beyond float64's sqrt(eps): once refused as "sums to 1"
    closed_form(P32.astype(np.float64), rng.standard_normal((64, 2)), 0.5)


def test_a_sum_off_by_little_is_printed_with_enough_digits():
    P64 = P.copy()
    P64[0] *= 1 + 3e-8
    with pytest.raises(ValueError) as error:
        closed_form(P64, S, 0.5)
    total = float(P64[0].sum())
    assert f"sums to {total!r} (+3.00e-08 off one)" in str(error.value)
    assert float(str(error.value).split("sums to ")[1].split()[0]) != 1.0


def test_negative_transition_entries_are_refused():
    bad = with_value(P, (1, 2), -0.25)
    bad[1, 3] += 0.25 + P[1, 2]  # the row still sums to one
    with pytest.raises(ValueError, match=r"negative entry -0\.25 at index \(1, 2\)"):
        closed_form(bad, S, 0.5)


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        (with_value(W, (0, 1), -1.0), r"^W must be a non-negative .* entry -1 at index \(0, 1\)"),
        (with_value(W, (2, slice(None)), 0.0), r"row 2 of W sums to 0"),
    ],
)
def test_affinity_must_be_non_negative_with_positive_degrees(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        closed_form_laplacian(bad, M, S, 0.5)


# values and dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("P", lambda v: closed_form(with_value(P, (1, 1), v), S, 0.5)),
        ("s", lambda v: closed_form(P, with_value(S, (3, 0), v), 0.5)),
        ("s", lambda v: random_walk(P, with_value(S, (3, 0), v), 0.5, 2)),
        ("y0", lambda v: random_walk(P, S, 0.5, 2, y0=with_value(S, (3, 0), v))),
        ("y0", lambda v: walk_error_bound(P, S, 0.5, 2, y0=with_value(S, (3, 0), v))),
        ("features", lambda v: transition_matrix(with_value(S, (3, 0), v))),
        ("W", lambda v: closed_form_laplacian(with_value(W, (0, 0), v), M, S, 0.5)),
        ("m", lambda v: closed_form_laplacian(W, with_value(M, (1,), v), S, 0.5)),
        ("x", lambda v: closed_form_laplacian(W, M, with_value(S, (3, 0), v), 0.5)),
        ("Ps[1]", lambda v: cascade([P, with_value(P, (1, 1), v)], S, [0.5] * 2, [0.5] * 2)),
        ("s", lambda v: cascade([P], with_value(S, (3, 0), v), [0.5], [0.5])),
    ],
)
def test_non_finite_inputs_name_the_argument(name, call, value):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} contains a non-finite value"):
        call(value)


@pytest.mark.parametrize("bad", [P.astype(complex), np.full((4, 4), "a")], ids=["complex", "str"])
def test_non_real_arrays_are_refused(bad):
    with pytest.raises(TypeError, match=r"P must be a real-valued array \(got dtype"):
        closed_form(bad, S, 0.5)


def test_features_whose_inner_products_overflow_are_refused():
    features = np.full((3, 2), 1e20, dtype=np.float32)
    with pytest.raises(
        ValueError, match=r"features are too large for float32: the dot kernel's logits overflow"
    ):
        transition_matrix(features)


# check_variant's own arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"kind": "walk"}, ValueError, r"kind must be one of \('closed_form', 'cascade'\) \(got"),
        ({"dtype": "float16"}, ValueError, r"dtype must be 'float32' or 'float64' \(got 'float16'\)"),
        ({"trials": 0}, ValueError, r"trials must be at least 1 \(got 0\)"),
        ({"n": -2}, ValueError, r"n must be a non-negative integer \(got -2\)"),
        ({"rtol": -1e-3}, ValueError, r"rtol must be a positive real number \(got -0\.001\)"),
    ],
)
def test_check_variant_arguments_are_checked(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        check_variant(closed_form, **kwargs)
