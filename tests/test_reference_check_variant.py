"""check_variant: accepts correct diffusion variants, rejects wrong ones with a readable report."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import (
    VariantMismatch,
    VariantReport,
    cascade,
    check_variant,
    closed_form,
    random_walk,
    transition_matrix,
)
from reference.__main__ import main as self_check


def neumann_series(P, s, mu, terms=400):
    """(1 - mu) sum_k (mu P)^k s: a correct closed form by another route."""
    y, term = np.zeros_like(s), (1 - mu) * s
    for _ in range(terms):
        y, term = y + term, mu * (P @ term)
    return y


def cascade_from_features(features, s, mus, betas):
    """A cascade that forms each P itself from the features, as a fused model op would."""
    return cascade([transition_matrix(f) for f in features], s, mus, betas)[-1]


@given(
    dtype=st.sampled_from(["float32", "float64"]),
    n=st.integers(1, 24),
    k=st.integers(1, 4),
    batch=st.sampled_from([(), (3,)]),
    seed=st.integers(0, 2**16),
)
def test_correct_closed_form_variants_pass(dtype, n, k, batch, seed):
    for variant in (neumann_series, lambda P, s, mu: closed_form(P, s, mu, method="iterative")):
        report = check_variant(variant, dtype=dtype, n=n, k=k, batch=batch, seed=seed, trials=2)
        assert isinstance(report, VariantReport) and report.passed
        assert len(report.trials) == 2
        assert report.max_abs_error <= min(trial.allowed_abs_error for trial in report.trials)
        assert all(len(trial.mus) == 1 and trial.betas == () for trial in report.trials)


@given(dtype=st.sampled_from(["float32", "float64"]), walks=st.integers(1, 6))
def test_correct_cascade_variants_pass_with_matrices_or_features(dtype, walks):
    by_matrices = check_variant(
        lambda Ps, s, mus, betas: cascade(Ps, s, mus, betas)[-1],
        kind="cascade",
        dtype=dtype,
        walks=walks,
        trials=2,
    )
    by_features = check_variant(
        cascade_from_features, kind="cascade", dtype=dtype, walks=walks, trials=2, pass_features=True
    )
    for report in (by_matrices, by_features):
        assert report.passed and all(len(t.mus) == len(t.betas) == walks for t in report.trials)


def test_torch_attention_cascade_passes_as_the_readme_shows():
    torch = pytest.importorskip("torch")

    def fused_cascade(features, s, mus, betas):
        """DifNet's cascade (Eqs. 4-5) with P y computed by attention: P is never formed."""
        s = y = torch.from_numpy(s)
        for f, mu, beta in zip(features, mus, betas):
            f = torch.from_numpy(f)
            walked = torch.nn.functional.scaled_dot_product_attention(f, f, y, scale=1.0)
            y = beta * (mu * walked + (1 - mu) * s) + (1 - beta) * y
        return y

    report = check_variant(
        fused_cascade, kind="cascade", pass_features=True, dtype="float32", batch=(2,), n=64, k=21, d=16
    )
    assert report.passed and report.max_rel_error < 1e-5


@pytest.mark.parametrize(
    ("kind", "variant"),
    [
        ("closed_form", lambda P, s, mu: closed_form(P, s, mu) / (1 - mu)),  # forgot (1 - mu)
        ("closed_form", lambda P, s, mu: random_walk(P, s, mu, 3)),  # too few steps
        ("closed_form", lambda P, s, mu: closed_form(P @ P, s, mu)),  # two steps per walk
        ("cascade", lambda Ps, s, mus, betas: cascade(Ps, s, betas, mus)[-1]),  # swapped
        ("cascade", lambda Ps, s, mus, betas: cascade(Ps[::-1], s, mus, betas)[-1]),  # order
    ],
)
def test_wrong_variants_raise_with_a_report(kind, variant):
    with pytest.raises(VariantMismatch) as error:
        check_variant(variant, kind=kind, trials=3)
    report = error.value.report
    assert isinstance(error.value, AssertionError)
    assert not report.passed and report.max_abs_error > report.trials[0].allowed_abs_error
    message = str(error.value)
    assert "FAILED" in message and f"kind={kind!r}" in message and "NO" in message
    assert message.count("\n") == 2 + len(report.trials)  # header, rule, column names, trials


def test_a_variant_returning_nan_fails():
    with pytest.raises(VariantMismatch, match="FAILED 0/2 trials") as error:
        check_variant(lambda P, s, mu: np.full_like(s, np.nan), trials=2)
    assert np.isnan(error.value.report.max_abs_error)


def test_a_variant_returning_the_wrong_shape_is_named():
    with pytest.raises(VariantMismatch, match=r"trial 0 returned shape \(8,\), expected \(8, 3\)"):
        check_variant(lambda P, s, mu: s[:, 0], n=8, k=3)


def test_tolerances_are_reported_and_can_be_loosened():
    def three_steps(P, s, mu):
        return random_walk(P, s, mu, 3)

    report = check_variant(three_steps, rtol=1.0, trials=2)
    assert report.passed and report.rtol == 1.0 and report.atol == 1e-10
    assert "PASSED 2/2 trials" in str(report) and "rtol=1.0e+00" in str(report)


def test_problems_are_seeded():
    def record(P, s, mu):
        seen.append((P.copy(), mu))
        return closed_form(P, s, mu)

    seen: list = []
    check_variant(record, seed=7, trials=2)
    check_variant(record, seed=7, trials=2)
    check_variant(record, seed=8, trials=2)
    assert np.array_equal(seen[0][0], seen[2][0]) and seen[0][1] == seen[2][1]
    assert not np.array_equal(seen[0][0], seen[4][0])


def test_self_check_passes_and_reports_every_check(capsys):
    assert self_check(["--nodes", "24"]) == 0
    output = capsys.readouterr().out
    assert "18/18 checks passed" in output and "FAIL" not in output
