"""`python -m reference`: verify the reference against itself and print a short report.

Each check compares two independent routes to the same quantity (a walk and a linear solve,
GMRES and LU, Eq. 2 and the closed form, the cascade and the walk) on seeded random problems,
in float32 and float64. Exits 0 when every check is within tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy

from reference import (
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
    """One verified identity: its largest observed error and the error allowed."""

    name: str
    error: float
    allowed: float

    @property
    def passed(self) -> bool:
        """Whether the error is within the allowance (NaN never is)."""
        return self.error <= self.allowed


def run_checks(n: int, seed: int) -> Iterator[Check]:
    """Yield every check on problems with `n` nodes, in float64 then float32."""
    for dtype in (numpy.float64, numpy.float32):
        yield from _checks_for(numpy.dtype(dtype), n, numpy.random.default_rng(seed))


def _checks_for(dtype: numpy.dtype, n: int, rng: numpy.random.Generator) -> Iterator[Check]:
    label = f"[{dtype.name}]"
    k, d, mu = 5, 16, 0.9
    allowed = 1e3 * float(numpy.finfo(dtype).eps)  # relative to the size of the values

    def draw(*shape: int, scale: float = 1.0) -> numpy.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype)

    huge = transition_matrix(draw(2, n, d, scale=1e4 / math.sqrt(d)))
    row_error = float(numpy.abs(huge.sum(axis=-1) - 1).max())
    finite = bool(numpy.isfinite(huge).all() and (huge >= 0).all())
    yield Check(
        f"{label} rows of softmax(f f^T) sum to one at feature norms 1e4",
        row_error if finite else math.nan,
        allowed,
    )

    P = transition_matrix(draw(2, n, d, scale=d**-0.25))
    s = draw(2, n, k)
    scale = float(numpy.abs(s).max())
    exact = closed_form(P, s, mu)
    steps = math.ceil(math.log(allowed) / math.log(mu))
    walked = random_walk(P, s, mu, steps)
    yield Check(
        f"{label} walk of {steps} steps converges to the closed form",
        _max_error(walked, exact) / scale,
        allowed,
    )

    overshoot = max(
        float(
            (numpy.abs(random_walk(P, s, mu, t) - exact).max(axis=-2) - walk_error_bound(P, s, mu, t)).max()
        )
        for t in (0, 1, 5, 20)
    )
    yield Check(f"{label} walk iterates obey the mu^T bound (overshoot)", overshoot / scale, allowed)

    iterative = closed_form(P, s, mu, method="iterative", tol=1e-14)
    condition = (1 + mu) / (1 - mu)  # bounds cond(I - mu P), which scales the solvers' errors
    yield Check(
        f"{label} iterative (GMRES) solve equals the dense solve",
        _max_error(iterative, exact) / scale,
        allowed * condition,
    )

    W = numpy.exp(draw(2, n, n))
    m = rng.uniform(size=(2, n)).astype(dtype)
    laplacian = closed_form_laplacian(W, m, s, mu)
    diffused = closed_form(W / W.sum(axis=-1, keepdims=True), m[..., None] * s, mu)
    yield Check(
        f"{label} Eq. 2 equals the closed form with P = D^-1 W, s = M x",
        _max_error(laplacian, diffused) / scale,
        allowed,
    )

    ys = cascade([P] * 5, s, [mu] * 5, [1.0] * 5)
    yield Check(
        f"{label} cascade with beta = 1 equals the walk",
        max(_max_error(y, random_walk(P, s, mu, t)) for t, y in enumerate(ys)) / scale,
        allowed,
    )
    frozen = cascade([P] * 5, s, [mu] * 5, [0.0] * 5)
    yield Check(
        f"{label} cascade with beta = 0 leaves y unchanged", max(_max_error(y, s) for y in frozen), 0.0
    )
    beta = 0.5
    rate = 1 - beta * (1 - mu)  # contraction factor of one cascade step with a shared P
    walks = math.ceil(math.log(allowed) / math.log(rate))
    long = cascade([P] * walks, s, [mu] * walks, [beta] * walks)[-1]
    yield Check(
        f"{label} cascade of {walks} copies of P converges to the closed form",
        _max_error(long, exact) / scale,
        allowed,
    )

    report = check_variant(_walk_variant(steps), dtype=dtype.name, n=n)
    yield Check(
        f"{label} check_variant accepts a {steps}-step walk as a closed form",
        report.max_rel_error,
        report.rtol,
    )


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
        print(f"  {status} {check.error:9.2e} <= {check.allowed:8.1e}  {check.name}")
    failed = sum(not check.passed for check in checks)
    print(f"{len(checks) - failed}/{len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
