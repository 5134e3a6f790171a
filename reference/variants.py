"""Verify a caller's diffusion function against the reference on seeded random problems."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy

from reference._problems import (
    Kernel,
    Problem,
    Tolerance,
    VariantCall,
    WrongShape,
    closed_form_conditioning,
    draw_problem,
    errors,
)
from reference._validation import check_count, check_positive
from reference.probes import ProbeResult, run_probes
from reference.solvers import closed_form
from reference.walks import cascade

KINDS = ("closed_form", "cascade")


@dataclass(frozen=True)
class TrialResult:
    """One random problem: its walk parameters and the variant's errors on it.

    For a cascade, `walk_errors[t]` is the relative error after walk t + 1 (the variant called on
    the first t + 1 walks) and `walk_allowed[t]` the relative error allowed there.
    """

    trial: int
    mus: tuple[float, ...]
    betas: tuple[float, ...]
    max_abs_error: float
    max_rel_error: float
    allowed_abs_error: float
    walk_errors: tuple[float, ...] = ()
    walk_allowed: tuple[float, ...] = ()

    @property
    def first_bad_walk(self) -> int | None:
        """The first walk (counted from 1) beyond tolerance, or None."""
        for t, (error, allowed) in enumerate(zip(self.walk_errors, self.walk_allowed), start=1):
            if not error <= allowed:
                return t
        return None

    @property
    def passed(self) -> bool:
        """Whether the output, and every walk's, is within tolerance (a NaN error never is)."""
        return self.max_abs_error <= self.allowed_abs_error and self.first_bad_walk is None


@dataclass(frozen=True)
class VariantReport:
    """Errors of a diffusion variant: the named probes, then the random problems trial by trial.

    A trial passes when `max |y - y_ref| <= atol + rtol * max |y_ref|` (after every walk, for a
    cascade); the relative error is `max |y - y_ref| / max |y_ref|`. The reference is float64.
    Unless given, rtol is derived per problem: `2 eps sqrt(n) kappa`, see `tolerance`.
    """

    name: str
    kind: str
    dtype: str
    n: int
    k: int
    d: int
    batch: tuple[int, ...]
    rtol: float | None
    atol: float
    trials: tuple[TrialResult, ...]
    probes: tuple[ProbeResult, ...] = ()
    tolerance: str = ""
    kernel: str = "dot"

    @property
    def max_abs_error(self) -> float:
        """Largest absolute error over all trials (NaN if any trial produced NaN)."""
        return _worst(trial.max_abs_error for trial in self.trials)

    @property
    def max_rel_error(self) -> float:
        """Largest relative error over all trials (NaN if any trial produced NaN)."""
        return _worst(trial.max_rel_error for trial in self.trials)

    @property
    def failed_probes(self) -> tuple[str, ...]:
        """Names of the properties that did not hold."""
        return tuple(probe.name for probe in self.probes if not probe.passed)

    @property
    def passed(self) -> bool:
        """Whether every probe holds and every trial is within tolerance."""
        return not self.failed_probes and all(trial.passed for trial in self.trials)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        passed = sum(trial.passed for trial in self.trials)
        held = len(self.probes) - len(self.failed_probes)
        lines = [
            f"check_variant {self.name} (kind={self.kind!r}, {self.dtype}, n={self.n}, "
            f"k={self.k}, d={self.d}, batch={self.batch}, kernel {self.kernel}): {verdict} {passed}/"
            f"{len(self.trials)} trials, {held}/{len(self.probes)} probes",
            f"  tolerance: {self.tolerance}",
            "  probes (relative error <= allowed):",
            *(f"    {probe}" for probe in self.probes),
            "  trials: a trial passes when max|y - y_ref| <= atol + rtol * max|y_ref|",
            f"  {'trial':>5}  {'max abs err':>11}  {'max rel err':>11}  {'allowed':>9}  ok   "
            + (
                "mu" if self.kind == "closed_form" else "first bad walk, rel err after each walk; mus / betas"
            ),
        ]
        lines += [f"  {_trial_row(trial, self.kind)}" for trial in self.trials]
        return "\n".join(lines)


def _trial_row(trial: TrialResult, kind: str) -> str:
    row = (
        f"{trial.trial:>5}  {trial.max_abs_error:>11.3e}  {trial.max_rel_error:>11.3e}"
        f"  {trial.allowed_abs_error:>9.2e}  {'yes' if trial.passed else 'NO ':3}  "
    )
    if kind == "closed_form":
        return row + f"{trial.mus[0]:.3f}"
    first = "-" if trial.first_bad_walk is None else f"walk {trial.first_bad_walk}"
    walks = " ".join(f"{error:.1e}" for error in trial.walk_errors)
    mus = " ".join(f"{mu:.3f}" for mu in trial.mus)
    betas = " ".join(f"{beta:.3f}" for beta in trial.betas)
    return row + f"{first:>6}  {walks}; {mus} / {betas}"


class VariantMismatch(AssertionError):
    """A diffusion variant disagrees with the reference; `report` holds the errors, if any."""

    def __init__(self, message: str, report: VariantReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def check_variant(
    fn: Callable[..., Any],
    *,
    kind: Literal["closed_form", "cascade"] = "closed_form",
    trials: int = 5,
    n: int = 32,
    k: int = 4,
    d: int = 8,
    walks: int = 5,
    batch: Sequence[int] = (),
    dtype: str = "float64",
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    pass_features: bool = False,
    kernel: str = "dot",
    radius: int | None = None,
    grid: tuple[int, int] | None = None,
    xp: ModuleType = numpy,
) -> VariantReport:
    """Probe `fn` for the diffusion's properties, then compare it with the reference on random problems.

    Each problem draws features `f` `[*batch, n, d]` (standard normal scaled by d^-1/4), a seed
    `s` `[*batch, n, k]` (standard normal), and mu, beta uniform in (0.05, 0.95); P is
    `transition_matrix(f, kernel, radius=radius, grid=grid)`: the paper's `softmax(f f^T)` by default,
    or the reference of another kernel ("distance", "identity", a radius on the `(h, w)` grid, which
    then sets `n = h w`). Arrays reach `fn` as `xp` arrays of `dtype`:

    - `kind="closed_form"`: `fn(P, s, mu) -> y` must equal `closed_form(P, s, mu)`;
    - `kind="cascade"`: `fn(Ps, s, mus, betas) -> y_T` must equal `cascade(Ps, s, mus, betas)[-1]`;
      `fn` is called with the first 1, 2, ..., `walks` walks, so the report gives the error after
      each walk and names the first one beyond tolerance;

    with `pass_features=True`, `fn` receives the features (`f`, or the list of them) in place
    of P, for variants that never form P. `y` may be any array `numpy.asarray` accepts (e.g. a
    CPU torch tensor) of shape `[*batch, n, k]`. Before the random problems, named probes
    (`reference.probes`) check that rows sum to one, a constant seed stays constant, `mu = 0`
    returns `s`, and for a closed form that `y` is the walk's fixed point, for a cascade that
    `beta = 0` keeps `y` and that walks contract toward the closed form at `1 - beta (1 - mu)`.

    Unless given, `rtol = 2 eps sqrt(n) kappa` for the dtype's eps, with kappa =
    `(1 + mu) / (1 - mu)` for a closed form (its conditioning) and the number of walks for a
    cascade (each adds its rounding); `atol` defaults to eps (the seeds have unit scale). Returns
    the report; raises `VariantMismatch` carrying it when a probe or trial fails, or without one
    when `fn` returns the wrong shape.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64' (got {dtype!r})")
    dtype = str(dtype)
    for name, value in (("trials", trials), ("n", n), ("k", k), ("d", d), ("walks", walks)):
        if check_count(value, name) == 0:
            raise ValueError(f"{name} must be at least 1 (got {value!r})")
    batch = tuple(check_count(size, "batch") for size in batch)
    if grid is not None:
        grid = (check_count(grid[0], "grid"), check_count(grid[1], "grid"))
        n = grid[0] * grid[1]
    reference_kernel = Kernel(kernel, radius, grid)
    reference_kernel.matrix(numpy.zeros((n, 1)))  # refuses an unknown kernel or a radius without a grid
    rtol = None if rtol is None else _check_tolerance(rtol, "rtol")
    atol = float(numpy.finfo(dtype).eps) if atol is None else _check_tolerance(atol, "atol")
    tolerance = Tolerance(dtype, n, rtol, atol)
    name = getattr(fn, "__qualname__", repr(fn))
    call = VariantCall(fn, kind, dtype, pass_features, xp)
    count = walks if kind == "cascade" else 1

    def draw(*key: int) -> Problem:
        rng = numpy.random.default_rng([seed, *key])
        return draw_problem(
            rng, count=count, batch=batch, n=n, k=k, d=d, dtype=dtype, kernel=reference_kernel
        )

    try:
        probes = run_probes(call, draw(0, 1), tolerance)
        results = tuple(_trial(call, trial, draw(trial), tolerance) for trial in range(trials))
    except WrongShape as error:
        raise VariantMismatch(f"check_variant {name} (kind={kind!r}): {error}") from None
    report = VariantReport(
        name,
        kind,
        dtype,
        n,
        k,
        d,
        batch,
        rtol,
        atol,
        results,
        probes,
        tolerance.describe(),
        reference_kernel.describe(),
    )
    if not report.passed:
        raise VariantMismatch(str(report), report)
    return report


def _trial(call: VariantCall, trial: int, problem: Problem, tolerance: Tolerance) -> TrialResult:
    """The variant's errors on one problem: of its output and, for a cascade, after every walk."""
    s = problem.s.astype(numpy.float64)
    if call.kind == "closed_form":
        mu = problem.mus[0]
        expected = closed_form(problem.Ps[0], s, mu)
        error, scale = errors(call(problem, s, [mu], []), expected)
        allowed = tolerance.allowed(closed_form_conditioning(mu), scale)
        return TrialResult(trial, (mu,), (), error, _ratio(error, scale), allowed)
    references = cascade(problem.Ps, s, problem.mus, problem.betas)[1:]
    walk_errors, walk_allowed = [], []
    for t, expected in enumerate(references, start=1):
        error, scale = errors(call(problem, s, problem.mus[:t], problem.betas[:t]), expected)
        walk_errors.append(_ratio(error, scale))
        walk_allowed.append(tolerance.allowed(float(t), scale) / scale if scale > 0 else tolerance.atol)
    return TrialResult(
        trial,
        tuple(problem.mus),
        tuple(problem.betas),
        error,
        walk_errors[-1],
        tolerance.allowed(float(len(references)), scale),
        tuple(walk_errors),
        tuple(walk_allowed),
    )


def _ratio(error: float, scale: float) -> float:
    return error / scale if scale > 0 else (0.0 if error == 0 else math.inf)


def _check_tolerance(value: Any, name: str) -> float:
    return 0.0 if value == 0 else check_positive(value, name)


def _worst(errors: Any) -> float:
    errors = list(errors)
    return math.nan if any(math.isnan(error) for error in errors) else max(errors)
