"""Verify a caller's diffusion function against the reference on seeded random problems."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy

from reference._validation import check_count, check_positive
from reference.solvers import closed_form
from reference.transition import transition_matrix
from reference.walks import cascade

KINDS = ("closed_form", "cascade")
DEFAULT_TOLERANCES = {"float32": (1e-4, 1e-6), "float64": (1e-8, 1e-10)}  # (rtol, atol)
PARAMETER_RANGE = (0.05, 0.95)  # mu and beta are drawn uniformly from here


@dataclass(frozen=True)
class TrialResult:
    """One random problem: its walk parameters and the variant's largest error on it."""

    trial: int
    mus: tuple[float, ...]
    betas: tuple[float, ...]
    max_abs_error: float
    max_rel_error: float
    allowed_abs_error: float

    @property
    def passed(self) -> bool:
        """Whether the error is within tolerance (a NaN error never is)."""
        return self.max_abs_error <= self.allowed_abs_error


@dataclass(frozen=True)
class VariantReport:
    """Errors of a diffusion variant against the reference, trial by trial.

    A trial passes when `max |y - y_ref| <= atol + rtol * max |y_ref|`; the relative error is
    `max |y - y_ref| / max |y_ref|`. The reference is computed in float64.
    """

    name: str
    kind: str
    dtype: str
    n: int
    k: int
    d: int
    batch: tuple[int, ...]
    rtol: float
    atol: float
    trials: tuple[TrialResult, ...]

    @property
    def max_abs_error(self) -> float:
        """Largest absolute error over all trials (NaN if any trial produced NaN)."""
        return _worst(trial.max_abs_error for trial in self.trials)

    @property
    def max_rel_error(self) -> float:
        """Largest relative error over all trials (NaN if any trial produced NaN)."""
        return _worst(trial.max_rel_error for trial in self.trials)

    @property
    def passed(self) -> bool:
        """Whether every trial is within tolerance."""
        return all(trial.passed for trial in self.trials)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        passed = sum(trial.passed for trial in self.trials)
        lines = [
            f"check_variant {self.name} (kind={self.kind!r}, {self.dtype}, n={self.n}, "
            f"k={self.k}, d={self.d}, batch={self.batch}): {verdict} {passed}/"
            f"{len(self.trials)} trials",
            f"  a trial passes when max|y - y_ref| <= atol + rtol * max|y_ref|, "
            f"rtol={self.rtol:.1e}, atol={self.atol:.1e}",
            f"  {'trial':>5}  {'max abs err':>11}  {'max rel err':>11}  {'allowed':>9}  ok   mus / betas",
        ]
        for trial in self.trials:
            parameters = " ".join(f"{mu:.3f}" for mu in trial.mus)
            if trial.betas:
                parameters += " / " + " ".join(f"{beta:.3f}" for beta in trial.betas)
            lines.append(
                f"  {trial.trial:>5}  {trial.max_abs_error:>11.3e}  {trial.max_rel_error:>11.3e}"
                f"  {trial.allowed_abs_error:>9.2e}  {'yes' if trial.passed else 'NO ':3}  "
                f"{parameters}"
            )
        return "\n".join(lines)


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
    xp: ModuleType = numpy,
) -> VariantReport:
    """Run `fn` on `trials` seeded random problems and compare it with the reference.

    Each problem draws features `f` `[*batch, n, d]` (standard normal scaled by d^-1/4), a seed
    `s` `[*batch, n, k]` (standard normal), and mu, beta uniform in (0.05, 0.95); P is
    `transition_matrix(f)`. Arrays reach `fn` as `xp` arrays of `dtype`:

    - `kind="closed_form"`: `fn(P, s, mu) -> y` must equal `closed_form(P, s, mu)`;
    - `kind="cascade"`: `fn(Ps, s, mus, betas) -> y_T` (lists of `walks` entries) must equal
      `cascade(Ps, s, mus, betas)[-1]`;

    with `pass_features=True`, `fn` receives the features (`f`, or the list of them) in place
    of P, for variants that never form P. `y` may be any array `numpy.asarray` accepts (e.g. a
    CPU torch tensor) of shape `[*batch, n, k]`. Default tolerances (rtol, atol) are (1e-4,
    1e-6) in float32 and (1e-8, 1e-10) in float64. Returns the report; raises `VariantMismatch`
    carrying it when any trial is beyond tolerance or `fn` returns the wrong shape.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")
    if str(dtype) not in DEFAULT_TOLERANCES:
        raise ValueError(f"dtype must be 'float32' or 'float64' (got {dtype!r})")
    dtype = str(dtype)
    for name, value in (("trials", trials), ("n", n), ("k", k), ("d", d), ("walks", walks)):
        if check_count(value, name) == 0:
            raise ValueError(f"{name} must be at least 1 (got {value!r})")
    batch = tuple(check_count(size, "batch") for size in batch)
    default_rtol, default_atol = DEFAULT_TOLERANCES[dtype]
    rtol = default_rtol if rtol is None else _check_tolerance(rtol, "rtol")
    atol = default_atol if atol is None else _check_tolerance(atol, "atol")
    name = getattr(fn, "__qualname__", repr(fn))

    results = []
    for trial in range(trials):
        rng = numpy.random.default_rng([seed, trial])
        count = walks if kind == "cascade" else 1
        features = [(rng.standard_normal(batch + (n, d)) * d**-0.25).astype(dtype) for _ in range(count)]
        s = rng.standard_normal(batch + (n, k)).astype(dtype)
        mus = [float(mu) for mu in rng.uniform(*PARAMETER_RANGE, size=count)]
        betas = [float(beta) for beta in rng.uniform(*PARAMETER_RANGE, size=count)]
        Ps = [transition_matrix(f.astype(numpy.float64)) for f in features]
        operands = features if pass_features else [P.astype(dtype) for P in Ps]
        operands = [xp.asarray(operand) for operand in operands]
        if kind == "closed_form":
            expected = closed_form(Ps[0], s.astype(numpy.float64), mus[0])
            output = fn(operands[0], xp.asarray(s), mus[0])
            betas = []
        else:
            expected = cascade(Ps, s.astype(numpy.float64), mus, betas)[-1]
            output = fn(operands, xp.asarray(s), mus, betas)
        output = _to_numpy(xp, output)
        if output.shape != expected.shape:
            raise VariantMismatch(
                f"check_variant {name} (kind={kind!r}): trial {trial} returned shape "
                f"{output.shape}, expected {expected.shape} for s of shape {s.shape}"
            )
        results.append(_compare(trial, mus, betas, output, expected, rtol, atol))

    report = VariantReport(name, kind, dtype, n, k, d, batch, rtol, atol, tuple(results))
    if not report.passed:
        raise VariantMismatch(str(report), report)
    return report


def _compare(
    trial: int,
    mus: list[float],
    betas: list[float],
    output: numpy.ndarray,
    expected: numpy.ndarray,
    rtol: float,
    atol: float,
) -> TrialResult:
    error = float(numpy.abs(output.astype(numpy.float64) - expected).max())
    scale = float(numpy.abs(expected).max())
    relative = error / scale if scale > 0 else (0.0 if error == 0 else math.inf)
    return TrialResult(trial, tuple(mus), tuple(betas), error, relative, atol + rtol * scale)


def _to_numpy(xp: ModuleType, output: Any) -> numpy.ndarray:
    if xp is numpy:
        return numpy.asarray(output)
    return xp.asnumpy(xp.asarray(output))


def _check_tolerance(value: Any, name: str) -> float:
    return 0.0 if value == 0 else check_positive(value, name)


def _worst(errors: Any) -> float:
    errors = list(errors)
    return math.nan if any(math.isnan(error) for error in errors) else max(errors)
