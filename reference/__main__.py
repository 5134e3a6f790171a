"""`python -m reference`: verify the reference against itself and print a short report.

Each check compares two independent routes to the same quantity (a softmax and SciPy's, a walk
and a linear solve, GMRES and LU, Eq. 2 and the closed form, the cascade and the walk) or a
contraction rate with its bound, on seeded random problems, in float32 and float64; each fails
for some wrong implementation (column-normalised P, a missing (1 - mu), a swapped beta). A check
that raises is reported as FAIL and the others still run. Exits 0 when every check passes, else 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy
import scipy.special

from reference import (
    VariantMismatch,
    cascade,
    check_variant,
    closed_form,
    closed_form_laplacian,
    random_walk,
    transition_matrix,
    walk_error_bound,
)


@dataclass(frozen=True)
class Check:
    """One verified identity: its largest observed error, the error allowed, and any exception."""

    name: str
    error: float
    allowed: float
    note: str = ""

    @property
    def passed(self) -> bool:
        """Whether the error is within the allowance (NaN never is)."""
        return self.error <= self.allowed


@dataclass(frozen=True)
class Setup:
    """The shared problem of one dtype: P, s, mu, its closed form, and the relative error allowed."""

    dtype: numpy.dtype
    n: int
    rng: numpy.random.Generator
    P: numpy.ndarray
    s: numpy.ndarray
    mu: float
    exact: numpy.ndarray
    allowed: float

    @property
    def label(self) -> str:
        return f"[{self.dtype.name}]"

    @property
    def scale(self) -> float:
        return float(numpy.abs(self.s).max())

    def draw(self, *shape: int, scale: float = 1.0) -> numpy.ndarray:
        """Standard normal values times `scale`, in the dtype."""
        return (scale * self.rng.standard_normal(shape)).astype(self.dtype)


def run_checks(n: int, seed: int) -> Iterator[Check]:
    """Yield every check on problems with `n` nodes, in float64 then float32; an exception is a FAIL."""
    for dtype in (numpy.float64, numpy.float32):
        setup = _setup(numpy.dtype(dtype), n, numpy.random.default_rng(seed))
        for check in CHECKS:
            try:
                yield check(setup)
            except (VariantMismatch, ValueError, ArithmeticError, RuntimeError) as error:
                reason = str(error).splitlines()[0]
                name = f"{setup.label} {check.__doc__.splitlines()[0]}"
                yield Check(name, math.nan, setup.allowed, f"raised {type(error).__name__}: {reason}")


def _setup(dtype: numpy.dtype, n: int, rng: numpy.random.Generator) -> Setup:
    k, d, mu = 5, 16, 0.9
    features = d**-0.25 * rng.standard_normal((2, n, d))
    logits = features @ numpy.swapaxes(features, -1, -2)
    P = scipy.special.softmax(logits, axis=-1).astype(dtype)  # not transition_matrix: only one check tests it
    s = rng.standard_normal((2, n, k)).astype(dtype)
    allowed = 1e3 * float(numpy.finfo(dtype).eps)  # relative to the size of the values
    return Setup(dtype, n, rng, P, s, mu, closed_form(P, s, mu), allowed)


def softmax_rows(setup: Setup) -> Check:
    """rows of P are the row-wise softmax of f f^T at large feature norms"""
    norm = 1e4 if setup.dtype == numpy.float64 else 10.0  # exp(norm^2) overflows either dtype
    direction = setup.draw(16)
    direction /= numpy.linalg.norm(direction)
    features = (norm * direction + setup.draw(2, setup.n, 16) / norm).astype(setup.dtype)
    logits = features.astype(numpy.float64) @ numpy.swapaxes(features, -1, -2).astype(numpy.float64)
    expected = scipy.special.softmax(logits, axis=-1)
    P = transition_matrix(features)
    typical = float(numpy.median(expected.max(axis=-1)))
    eps = float(numpy.finfo(setup.dtype).eps)
    return Check(
        f"{setup.label} rows of softmax(f f^T) at feature norm {norm:g} (logits {norm**2:.0e}, median "
        f"row's largest entry {typical:.2f}) equal SciPy's softmax",
        _max_error(P, expected) / float(expected.max()),
        16 * eps * float(numpy.abs(logits).max()),  # the logits' rounding, amplified by exp
    )


def walk_converges(setup: Setup) -> Check:
    """walk converges to the closed form"""
    steps = _steps(setup)
    walked = random_walk(setup.P, setup.s, setup.mu, steps)
    return Check(
        f"{setup.label} walk of {steps} steps converges to the closed form",
        _max_error(walked, setup.exact) / setup.scale,
        setup.allowed,
    )


def walk_bound(setup: Setup) -> Check:
    """walk iterates obey the mu^T bound"""
    times = (1, 2, 5, 10)
    ratios, slack = [], []
    for t in times:
        error = numpy.abs(random_walk(setup.P, setup.s, setup.mu, t) - setup.exact).max(axis=-2)
        bound = walk_error_bound(setup.P, setup.s, setup.mu, t)
        ratios.append(float((error / bound).max()))
        slack.append(float((setup.allowed * setup.scale / bound).max()))
    return Check(
        f"{setup.label} walk iterates obey the mu^T bound (largest |y_t - y*| / bound, t = 1, 2, 5, 10)",
        max(ratios),
        1 + max(slack),
    )


def solvers_agree(setup: Setup) -> Check:
    """iterative (GMRES) solve equals the dense solve"""
    iterative = closed_form(setup.P, setup.s, setup.mu, method="iterative", tol=1e-14)
    condition = (1 + setup.mu) / (1 - setup.mu)  # bounds cond(I - mu P), which scales the solvers' errors
    return Check(
        f"{setup.label} iterative (GMRES) solve equals the dense solve",
        _max_error(iterative, setup.exact) / setup.scale,
        setup.allowed * condition,
    )


def laplacian_form(setup: Setup) -> Check:
    """Eq. 2 equals the closed form with P = D^-1 W, s = M x"""
    W = numpy.exp(setup.draw(2, setup.n, setup.n))
    m = setup.rng.uniform(size=(2, setup.n)).astype(setup.dtype)
    laplacian = closed_form_laplacian(W, m, setup.s, setup.mu)
    diffused = closed_form(W / W.sum(axis=-1, keepdims=True), m[..., None] * setup.s, setup.mu)
    return Check(
        f"{setup.label} Eq. 2 equals the closed form with P = D^-1 W, s = M x",
        _max_error(laplacian, diffused) / setup.scale,
        setup.allowed,
    )


def cascade_full_steps(setup: Setup) -> Check:
    """cascade with beta = 1 equals the walk"""
    ys = cascade([setup.P] * 5, setup.s, [setup.mu] * 5, [1.0] * 5)
    error = max(_max_error(y, random_walk(setup.P, setup.s, setup.mu, t)) for t, y in enumerate(ys))
    return Check(f"{setup.label} cascade with beta = 1 equals the walk", error / setup.scale, setup.allowed)


def cascade_frozen(setup: Setup) -> Check:
    """cascade with beta = 0 leaves y unchanged"""
    frozen = cascade([setup.P] * 5, setup.s, [setup.mu] * 5, [0.0] * 5)
    return Check(
        f"{setup.label} cascade with beta = 0 leaves y unchanged",
        max(_max_error(y, setup.s) for y in frozen),
        0.0,
    )


def cascade_converges(setup: Setup) -> Check:
    """cascade of copies of P converges to the closed form"""
    rate = 1 - CASCADE_BETA * (1 - setup.mu)  # contraction factor of one cascade step with a shared P
    walks = math.ceil(math.log(setup.allowed) / math.log(rate))
    long = cascade([setup.P] * walks, setup.s, [setup.mu] * walks, [CASCADE_BETA] * walks)[-1]
    return Check(
        f"{setup.label} cascade of {walks} copies of P converges to the closed form",
        _max_error(long, setup.exact) / setup.scale,
        setup.allowed,
    )


def cascade_rate(setup: Setup) -> Check:
    """cascade of copies of P contracts at rate 1 - beta (1 - mu)"""
    rate = 1 - CASCADE_BETA * (1 - setup.mu)
    walks = 40
    ys = cascade([setup.P] * walks, setup.s, [setup.mu] * walks, [CASCADE_BETA] * walks)
    initial = numpy.abs(setup.s - setup.exact).max(axis=-2)
    ratio = max(
        float((numpy.abs(y - setup.exact).max(axis=-2) / (rate**t * initial)).max())
        for t, y in enumerate(ys[1:], start=1)
    )
    return Check(
        f"{setup.label} cascade of copies of P contracts at 1 - beta (1 - mu) = {rate:.2f} "
        f"(largest |y_t - y*| / bound, t = 1..{walks})",
        ratio,
        1 + setup.allowed * setup.scale / (rate**walks * float(initial.min())),
    )


def variant_accepts_walk(setup: Setup) -> Check:
    """check_variant accepts a long walk as a closed form"""
    steps = _steps(setup)
    report = check_variant(_walk_variant(steps), dtype=setup.dtype.name, n=setup.n)
    worst = max(trial.max_abs_error / trial.allowed_abs_error for trial in report.trials)
    return Check(
        f"{setup.label} check_variant accepts a {steps}-step walk as a closed form (error / allowed)",
        worst,
        1.0,
    )


CASCADE_BETA = 0.8  # a swapped beta (1 - beta) would contract at another rate
CHECKS: list[Callable[[Setup], Check]] = [
    softmax_rows,
    walk_converges,
    walk_bound,
    solvers_agree,
    laplacian_form,
    cascade_full_steps,
    cascade_frozen,
    cascade_converges,
    cascade_rate,
    variant_accepts_walk,
]


def _steps(setup: Setup) -> int:
    return math.ceil(math.log(setup.allowed) / math.log(setup.mu))


def _walk_variant(steps: int) -> Callable[..., numpy.ndarray]:
    def walk(P: numpy.ndarray, s: numpy.ndarray, mu: float) -> numpy.ndarray:
        return random_walk(P, s, mu, steps)

    return walk


def _max_error(a: numpy.ndarray, b: numpy.ndarray) -> float:
    return float(numpy.abs(a.astype(numpy.float64) - b.astype(numpy.float64)).max())


def main(argv: list[str] | None = None) -> int:
    """Run the self-check, print one line per check, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m reference", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64, help="nodes N per problem (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be at least 1 (got {args.nodes})")

    checks = list(run_checks(args.nodes, args.seed))
    print(f"reference self-check: N={args.nodes}, seed={args.seed}, batch of 2, K=5, mu=0.9")
    for check in checks:
        status = "ok  " if check.passed else "FAIL"
        print(
            f"  {status} {check.error:9.2e} <= {check.allowed:8.2e}  {check.name}{check.note and ': '}{check.note}"
        )
    failed = sum(not check.passed for check in checks)
    print(f"{len(checks) - failed}/{len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
