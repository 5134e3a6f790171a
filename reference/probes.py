"""Named properties of the diffusion that `check_variant` probes first, so a failure says what is wrong.

Each probe runs the variant on one seeded problem changed to isolate one property (a constant
seed, `mu = 0`, `beta = 0`, a shared `P`) and reports the number it saw against the number allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from reference._problems import Problem, Tolerance, VariantCall, closed_form_conditioning, errors
from reference.solvers import closed_form

CONTRACTION_BETAS = (1.0, 0.5)  # the contraction probe alternates full walks and half steps


@dataclass(frozen=True)
class ProbeResult:
    """One named property: the number observed, the largest number allowed, and what it means."""

    name: str
    error: float
    allowed: float
    detail: str

    @property
    def passed(self) -> bool:
        """Whether the property holds within tolerance (NaN never does)."""
        return self.error <= self.allowed

    def __str__(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}: {self.error:.3e} <= {self.allowed:.2e}; {self.detail}"


def run_probes(call: VariantCall, problem: Problem, tolerance: Tolerance) -> tuple[ProbeResult, ...]:
    """Every probe of `call.kind` on `problem`: the shared ones, then the closed form's or the cascade's."""
    probes = [*_constant_seed(call, problem, tolerance), _mu_zero(call, problem, tolerance)]
    if call.kind == "closed_form":
        probes.append(_fixed_point(call, problem, tolerance))
    else:
        probes += [_beta_zero(call, problem, tolerance), _contraction(call, problem, tolerance)]
    return tuple(probes)


def _conditioning(call: VariantCall, mus: list[float]) -> float:
    return closed_form_conditioning(mus[0]) if call.kind == "closed_form" else float(len(mus))


def _relative(error: float, scale: float, tolerance: Tolerance, conditioning: float) -> tuple[float, float]:
    """`error / scale` and the relative error allowed at that scale."""
    return error / scale, tolerance.allowed(conditioning, scale) / scale


def _constant_seed(call: VariantCall, problem: Problem, tolerance: Tolerance) -> list[ProbeResult]:
    """A seed of ones: rows summing to one keep it equal across nodes, and the weights keep it at 1."""
    ones = numpy.ones_like(problem.s, dtype=numpy.float64)
    y = call(problem, ones, problem.mus, problem.betas)
    conditioning = _conditioning(call, problem.mus)
    spread = float((y.max(axis=-2) - y.min(axis=-2)).max())  # NaN if y holds one
    typical = float(numpy.median(problem.Ps[0].max(axis=-1)))
    rows = ProbeResult(
        "rows sum to one",
        *_relative(spread, 1.0, tolerance, conditioning),
        f"a seed of ones comes out between {y.min():.6g} and {y.max():.6g} across the nodes "
        f"(P is not one-hot: the median row's largest entry is {typical:.3f})",
    )
    error, _ = errors(y, ones)
    kept = ProbeResult(
        "a constant seed stays constant",
        *_relative(error, 1.0, tolerance, conditioning),
        f"a seed of ones comes out between {y.min():.6g} and {y.max():.6g}; "
        f"the restart and walk weights must sum to one, e.g. the (1 - mu) factor",
    )
    return [rows, kept]


def _mu_zero(call: VariantCall, problem: Problem, tolerance: Tolerance) -> ProbeResult:
    """With every `mu = 0` the walk only restarts, so the output is the seed."""
    mus = [0.0] * len(problem.mus)
    s = problem.s.astype(numpy.float64)
    error, scale = errors(call(problem, s, mus, problem.betas), s)
    return ProbeResult(
        "mu = 0 returns s",
        *_relative(error, scale, tolerance, _conditioning(call, mus)),
        f"max |y - s| = {error:.3e} with every mu = 0",
    )


def _fixed_point(call: VariantCall, problem: Problem, tolerance: Tolerance) -> ProbeResult:
    """A closed form `y` is the walk's fixed point: `mu P y + (1 - mu) s = y`."""
    mu, P, s = problem.mus[0], problem.Ps[0], problem.s.astype(numpy.float64)
    y = call(problem, s, problem.mus, problem.betas)
    error, scale = errors(mu * (P @ y) + (1 - mu) * s, y)
    return ProbeResult(
        "y is the fixed point of the walk",
        *_relative(error, max(scale, float(numpy.abs(s).max())), tolerance, _conditioning(call, [mu])),
        f"max |mu P y + (1 - mu) s - y| = {error:.3e} at mu = {mu:.3f}",
    )


def _walk_outputs(
    call: VariantCall, problem: Problem, s: numpy.ndarray, mus: list[float], betas: list[float]
) -> list[numpy.ndarray]:
    """`[y_0 = s, y_1, ..., y_T]` of a cascade variant, calling it on the first t walks for each t."""
    return [s] + [call(problem, s, mus[:t], betas[:t]) for t in range(1, len(mus) + 1)]


def _beta_zero(call: VariantCall, problem: Problem, tolerance: Tolerance) -> ProbeResult:
    """A walk with `beta = 0` returns the previous `y` unchanged (Eq. 5); every other walk is zeroed."""
    walks = len(problem.mus)
    zeroed = [t for t in range(walks) if t % 2 == 1 or walks == 1]
    betas = [0.0 if t in zeroed else beta for t, beta in enumerate(problem.betas)]
    s = problem.s.astype(numpy.float64)
    ys = _walk_outputs(call, problem, s, problem.mus, betas)
    changes = [errors(ys[t + 1], ys[t]) for t in zeroed]
    worst = max(range(len(zeroed)), key=lambda i: _nan_last(changes[i][0] / changes[i][1]))
    error, scale = changes[worst]
    return ProbeResult(
        "beta = 0 returns the previous y",
        *_relative(error, scale, tolerance, float(zeroed[worst] + 1)),
        f"walk {zeroed[worst] + 1} (beta = 0) changed y by up to {error:.3e}",
    )


def _contraction(call: VariantCall, problem: Problem, tolerance: Tolerance) -> ProbeResult:
    """With one `P` and `mu`, walk t brings y toward the closed form by `1 - beta_t (1 - mu)` (mu at beta = 1)."""
    walks, mu, P = len(problem.mus), problem.mus[0], problem.Ps[0]
    shared = Problem(problem.features[:1] * walks, problem.s, [mu] * walks, problem.betas, [P] * walks)
    betas = [CONTRACTION_BETAS[t % 2] for t in range(walks)]
    s = problem.s.astype(numpy.float64)
    exact = closed_form(P, s, mu)
    ys = _walk_outputs(call, shared, s, shared.mus, betas)
    initial, scale = errors(s, exact)
    ratios, bound = [], initial
    for t in range(1, walks + 1):
        bound *= 1 - betas[t - 1] * (1 - mu)
        error, _ = errors(ys[t], exact)
        ratios.append(error / (bound + tolerance.allowed(float(t), scale)))
    worst = max(range(walks), key=lambda i: _nan_last(ratios[i]))
    return ProbeResult(
        "walks contract toward the closed form at rate 1 - beta (1 - mu)",
        ratios[worst],
        1.0,
        f"with one P, mu = {mu:.3f} and betas {' '.join(f'{b:g}' for b in betas)}: after walk {worst + 1} "
        f"|y - y*| is {ratios[worst]:.3g} times its bound (rounding included)",
    )


def _nan_last(value: float) -> float:
    """Sort key that ranks NaN above every number, so the worst case shown is a NaN if there is one."""
    return math.inf if math.isnan(value) else value
