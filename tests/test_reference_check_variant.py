"""check_variant: accepts correct diffusion variants, rejects wrong ones with a readable report."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import (
    VariantMismatch,
    VariantReport,
    attainable_residual,
    cascade,
    check_variant,
    closed_form,
    random_walk,
    transition_matrix,
)
from reference.__main__ import main as self_check


def neumann_series(P, s, mu, terms=800):
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
    # GMRES stops at residual r = attainable_residual, so its error is only bounded by cond * r
    krylov_rtol = attainable_residual(dtype, 0.95) * (1 + 0.95) / (1 - 0.95)
    variants = {
        neumann_series: None,
        (lambda P, s, mu: closed_form(P, s, mu, method="iterative", tol=1e-14)): krylov_rtol,
    }
    for variant, rtol in variants.items():
        report = check_variant(variant, dtype=dtype, n=n, k=k, batch=batch, seed=seed, trials=2, rtol=rtol)
        assert isinstance(report, VariantReport) and report.passed
        assert len(report.trials) == 2
        assert all(trial.max_abs_error <= trial.allowed_abs_error for trial in report.trials)
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
    assert message.count("\n") == 4 + len(report.probes) + len(report.trials)


def softmax_rows(f):
    weights = np.exp(f @ np.swapaxes(f, -1, -2))
    return weights / weights.sum(axis=-1, keepdims=True)


def softmax_columns(f):
    """The wrong normalisation: every column of P sums to one instead of every row."""
    weights = np.exp(f @ np.swapaxes(f, -1, -2))
    return weights / weights.sum(axis=-2, keepdims=True)


def right_step(Py, y, s, mu, beta):
    return beta * (mu * Py + (1 - mu) * s) + (1 - beta) * y


def missing_factor_step(Py, y, s, mu, beta):
    return beta * (mu * Py + s) + (1 - beta) * y


def swapped_beta_step(Py, y, s, mu, beta):
    return (1 - beta) * (mu * Py + (1 - mu) * s) + beta * y


def mu_beta_swapped_step(Py, y, s, mu, beta):
    return mu * (beta * Py + (1 - beta) * s) + (1 - mu) * y


def own_cascade(normalise, step):
    """A user's cascade on features, with its own P and its own step (Eqs. 4-5 when both are right)."""

    def run(features, s, mus, betas):
        y = s
        for f, mu, beta in zip(features, mus, betas):
            y = step(normalise(f) @ y, y, s, mu, beta)
        return y

    return run


def own_closed_form(normalise, factor=True):
    def solve(f, s, mu):
        P = normalise(f)
        y = np.linalg.solve(np.eye(P.shape[-1]) - mu * P, s)
        return (1 - mu) * y if factor else y

    return solve


ROWS, CONSTANT = "rows sum to one", "a constant seed stays constant"
BETA_ZERO, CONTRACTION = "beta = 0 returns the previous y", "walks contract toward the closed form"
FIXED_POINT = "y is the fixed point of the walk"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("kind", "variant", "failing"),
    [
        ("cascade", own_cascade(softmax_rows, missing_factor_step), {CONSTANT, CONTRACTION}),
        ("cascade", own_cascade(softmax_rows, swapped_beta_step), {BETA_ZERO, CONTRACTION}),
        ("cascade", own_cascade(softmax_rows, mu_beta_swapped_step), {BETA_ZERO}),
        ("cascade", own_cascade(softmax_columns, right_step), {ROWS, CONSTANT}),
        ("closed_form", own_closed_form(softmax_rows, factor=False), {CONSTANT, FIXED_POINT}),
        ("closed_form", own_closed_form(softmax_columns), {ROWS, CONSTANT, FIXED_POINT}),
    ],
    ids=["missing 1-mu", "swapped beta", "mu for beta", "column-normalised", "cf missing 1-mu", "cf columns"],
)
def test_wrong_implementations_fail_the_probe_of_their_property(dtype, kind, variant, failing):
    with pytest.raises(VariantMismatch) as error:
        check_variant(variant, kind=kind, dtype=dtype, pass_features=True, trials=2)
    report = error.value.report
    assert {name.split(" at rate")[0] for name in report.failed_probes} == failing
    for probe in report.probes:
        assert f"{'ok  ' if probe.passed else 'FAIL'} {probe.name}: {probe.error:.3e}" in str(error.value)


@pytest.mark.parametrize("kind", ["closed_form", "cascade"])
def test_correct_own_implementations_pass_every_probe(kind):
    variant = own_cascade(softmax_rows, right_step) if kind == "cascade" else own_closed_form(softmax_rows)
    for dtype in ("float32", "float64"):
        report = check_variant(variant, kind=kind, dtype=dtype, pass_features=True, trials=2)
        assert report.passed and len(report.probes) == (5 if kind == "cascade" else 4)


def test_the_missing_factor_reads_off_the_constant_seed():
    with pytest.raises(VariantMismatch) as error:
        check_variant(own_cascade(softmax_rows, missing_factor_step), kind="cascade", pass_features=True)
    constant = next(probe for probe in error.value.report.probes if probe.name == CONSTANT)
    assert constant.error > 0.5 and "a seed of ones comes out between 2.37" in constant.detail


def production_cascade(features, s, mus, betas):
    """difnet's fused Cascade in the dtype it is given (mu, beta set through their sigmoids)."""
    torch = pytest.importorskip("torch")
    from difnet.diffusion import Cascade

    features = [torch.from_numpy(np.asarray(f))[None] for f in features]
    cascade_ = Cascade(len(features)).to(features[0].dtype)
    with torch.no_grad():
        for walk, mu, beta in zip(cascade_.walks, mus, betas):
            walk.raw_mu.fill_(torch.logit(torch.tensor(mu, dtype=torch.float64)).item())
            walk.raw_beta.fill_(torch.logit(torch.tensor(beta, dtype=torch.float64)).item())
        return cascade_(features, torch.from_numpy(np.asarray(s))[None])[-1][0]


@pytest.mark.parametrize("n", [32, 1024])
def test_production_cascade_passes_the_derived_float32_tolerance_up_to_n_1024(n):
    report = check_variant(
        production_cascade, kind="cascade", pass_features=True, dtype="float32", n=n, trials=2
    )
    assert report.passed and report.rtol is None and "2 eps sqrt(n) kappa" in report.tolerance
    assert all(probe.passed for probe in report.probes)


@pytest.mark.parametrize("kind", ["cascade", "closed_form"])
def test_a_constant_bias_of_5e_5_fails_in_float32_at_the_default_n(kind):
    def biased(*args):
        return (production_cascade(*args).numpy() if kind == "cascade" else closed_form(*args)) + 5e-5

    with pytest.raises(VariantMismatch) as error:
        check_variant(biased, kind=kind, pass_features=kind == "cascade", dtype="float32")
    report = error.value.report
    assert all(not trial.passed for trial in report.trials)
    assert "mu = 0 returns s" in report.failed_probes


def test_cascade_errors_are_given_per_walk_and_the_first_bad_walk_is_named():
    def wrong_from_walk_3(Ps, s, mus, betas):
        mus = [mu if t < 2 else mu / 2 for t, mu in enumerate(mus)]
        return cascade(Ps, s, mus, betas)[-1]

    with pytest.raises(VariantMismatch) as error:
        check_variant(wrong_from_walk_3, kind="cascade", walks=4, trials=2)
    for trial in error.value.report.trials:
        assert len(trial.walk_errors) == len(trial.walk_allowed) == 4
        assert trial.first_bad_walk == 3 and max(trial.walk_errors[:2]) < 1e-14
        assert " walk 3  " in str(error.value)


def test_report_columns_fit_the_kind():
    closed = str(check_variant(neumann_series, trials=1))
    walks = str(check_variant(lambda Ps, s, mus, betas: cascade(Ps, s, mus, betas)[-1], kind="cascade"))
    assert closed.splitlines()[-2].endswith("ok   mu") and "betas" not in closed
    header = "ok   first bad walk, rel err after each walk; mus / betas"
    assert walks.splitlines()[-6].endswith(header)
    assert all(len(line.split(";")[0].split()) == 6 + 5 for line in walks.splitlines()[-5:])


def test_a_variant_returning_nan_fails():
    with pytest.raises(VariantMismatch, match="FAILED 0/2 trials") as error:
        check_variant(lambda P, s, mu: np.full_like(s, np.nan), trials=2)
    assert np.isnan(error.value.report.max_abs_error)


def test_a_variant_returning_the_wrong_shape_is_named():
    with pytest.raises(VariantMismatch, match=r"returned shape \(8,\), expected \(8, 3\)"):
        check_variant(lambda P, s, mu: s[:, 0], n=8, k=3)


def test_tolerances_are_reported_and_can_be_loosened():
    def three_steps(P, s, mu):
        return random_walk(P, s, mu, 3)

    report = check_variant(three_steps, rtol=1.0, trials=2)
    assert report.passed and report.rtol == 1.0 and report.atol == np.finfo(np.float64).eps
    assert "rtol=1.0e+00 (given)" in str(report)
    assert "PASSED 2/2 trials" in str(report)


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
    assert "20/20 checks passed" in output and "FAIL" not in output


def test_self_check_reports_fail_and_runs_on_when_check_variant_mismatches(capsys, monkeypatch):
    import reference.__main__ as self_check_module

    monkeypatch.setattr(self_check_module, "_walk_variant", lambda steps: lambda P, s, mu: s)
    assert self_check(["--nodes", "16"]) == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if "FAIL" in line]
    assert len(failed) == 2 and all("check_variant accepts" in line for line in failed)
    assert "raised VariantMismatch" in failed[0] and "18/20 checks passed" in lines[-1]


def column_normalised_transition(features):
    logits = features @ np.swapaxes(features, -1, -2)
    weights = np.exp(logits - logits.max(axis=-2, keepdims=True))  # stable, and still wrong
    return weights / weights.sum(axis=-2, keepdims=True)


def walk_missing_factor(P, s, mu, steps, y0=None):
    y = s if y0 is None else y0
    for _ in range(steps):
        y = mu * (P @ y) + s
    return y


def cascade_swapped_beta(Ps, s, mus, betas):
    return cascade(Ps, s, mus, [1 - beta for beta in betas])


@pytest.mark.parametrize(
    ("name", "wrong", "caught"),
    [
        ("transition_matrix", column_normalised_transition, ["rows of softmax"]),
        ("random_walk", walk_missing_factor, ["walk of", "walk iterates obey", "check_variant accepts"]),
        ("cascade", cascade_swapped_beta, ["beta = 1 equals", "beta = 0 leaves", "contracts at"]),
    ],
)
def test_self_checks_catch_wrong_implementations(capsys, monkeypatch, name, wrong, caught):
    import reference.__main__ as self_check_module

    monkeypatch.setattr(self_check_module, name, wrong)
    assert self_check(["--nodes", "16"]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    for check in caught:
        assert sum(check in line for line in failed) == 2, f"{check} passed with a wrong {name}"


def kernel_cascade(similarity, radius=None, grid=None):
    """difnet's Cascade with the given transition kernel, as a `pass_features` cascade variant."""
    torch = pytest.importorskip("torch")
    from difnet.diffusion import Cascade, TransitionKernel

    def run(features, s, mus, betas):
        features = [torch.from_numpy(np.asarray(f))[None] for f in features]
        cascade_ = Cascade(len(features), kernel=TransitionKernel(similarity, radius)).to(features[0].dtype)
        with torch.no_grad():
            for walk, mu, beta in zip(cascade_.walks, mus, betas):
                walk.raw_mu.fill_(float(torch.logit(torch.tensor(mu, dtype=torch.float64))))
                walk.raw_beta.fill_(float(torch.logit(torch.tensor(beta, dtype=torch.float64))))
            return cascade_(features, torch.from_numpy(np.asarray(s))[None], grid)[-1][0]

    return run


KERNEL_CASES = [("dot", None), ("distance", None), ("dot", 2), ("distance", 1), ("identity", None)]


@pytest.mark.parametrize(("similarity", "radius"), KERNEL_CASES)
def test_every_production_kernel_matches_its_reference(similarity, radius):
    grid = (4, 6)
    report = check_variant(kernel_cascade(similarity, radius, grid), kind="cascade", pass_features=True,
                           kernel=similarity, radius=radius, grid=grid, trials=2)  # fmt: skip
    assert report.passed and report.n == 24 and report.kernel.startswith(similarity)


@pytest.mark.parametrize(
    ("production", "reference_kernel"),
    [
        (("dot", None), ("distance", None)),
        (("distance", 1), ("distance", 2)),
        (("distance", None), ("distance", 2)),
    ],
)
def test_check_variant_fails_when_the_production_kernel_is_not_the_reference(production, reference_kernel):
    grid = (4, 6)
    with pytest.raises(VariantMismatch):
        check_variant(kernel_cascade(*production, grid), kind="cascade", pass_features=True,
                      kernel=reference_kernel[0], radius=reference_kernel[1], grid=grid, trials=2)  # fmt: skip


def test_a_radius_needs_a_grid_and_the_kernel_must_be_known():
    with pytest.raises(ValueError, match="radius needs the"):
        check_variant(closed_form, radius=2)
    with pytest.raises(ValueError, match="kernel must be one of"):
        check_variant(closed_form, kernel="cosine")
