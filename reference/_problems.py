"""The seeded problems `check_variant` poses, how a variant is called on them, and the tolerances."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy

from reference.transition import transition_matrix

PARAMETER_RANGE = (0.05, 0.95)  # mu and beta are drawn uniformly from here
ROUNDING_FACTOR = 2.0  # rtol = ROUNDING_FACTOR * eps * sqrt(n) * conditioning


@dataclass(frozen=True)
class Problem:
    """One random problem: features and seed in the variant's dtype, float64 `Ps` for the reference."""

    features: list[numpy.ndarray]
    s: numpy.ndarray
    mus: list[float]
    betas: list[float]
    Ps: list[numpy.ndarray]


@dataclass(frozen=True)
class Kernel:
    """The reference kernel the problems' transition matrices are built with (`transition_matrix`)."""

    name: str = "dot"
    radius: int | None = None
    grid: tuple[int, int] | None = None

    def matrix(self, features: numpy.ndarray) -> numpy.ndarray:
        return transition_matrix(features, self.name, radius=self.radius, grid=self.grid)

    def describe(self) -> str:
        local = "" if self.radius is None else f", radius {self.radius} on {self.grid[0]}x{self.grid[1]}"
        return self.name + local


def draw_problem(
    rng: numpy.random.Generator,
    *,
    count: int,
    batch: tuple[int, ...],
    n: int,
    k: int,
    d: int,
    dtype: str,
    kernel: Kernel = Kernel(),
) -> Problem:
    """Features `[*batch, n, d]` (normal, scaled by d^-1/4) per walk, seed `[*batch, n, k]`, mus, betas;
    the float64 `Ps` from `kernel`."""
    features = [(rng.standard_normal(batch + (n, d)) * d**-0.25).astype(dtype) for _ in range(count)]
    s = rng.standard_normal(batch + (n, k)).astype(dtype)
    mus = [float(mu) for mu in rng.uniform(*PARAMETER_RANGE, size=count)]
    betas = [float(beta) for beta in rng.uniform(*PARAMETER_RANGE, size=count)]
    Ps = [kernel.matrix(f.astype(numpy.float64)) for f in features]
    return Problem(features, s, mus, betas, Ps)


class WrongShape(Exception):
    """A variant returned an array whose shape is not the seed's."""


@dataclass(frozen=True)
class VariantCall:
    """Calls a caller's variant the way its `kind` and `pass_features` say; returns float64 NumPy."""

    fn: Callable[..., Any]
    kind: str
    dtype: str
    pass_features: bool
    xp: ModuleType

    def __call__(
        self, problem: Problem, s: numpy.ndarray, mus: Sequence[float], betas: Sequence[float]
    ) -> numpy.ndarray:
        """The variant's output on `problem` with seed `s` and the first `len(mus)` walks."""
        walks = len(mus)
        operands = problem.features if self.pass_features else [P.astype(self.dtype) for P in problem.Ps]
        operands = [self.xp.asarray(operand) for operand in operands[:walks]]
        seed = self.xp.asarray(s.astype(self.dtype))
        if self.kind == "closed_form":
            output = self.fn(operands[0], seed, mus[0])
        else:
            output = self.fn(operands, seed, list(mus), list(betas))
        output = numpy.asarray(output) if self.xp is numpy else self.xp.asnumpy(self.xp.asarray(output))
        if output.shape != s.shape:
            raise WrongShape(f"returned shape {output.shape}, expected {s.shape} for s of shape {s.shape}")
        return output.astype(numpy.float64)


@dataclass(frozen=True)
class Tolerance:
    """Error allowed to a correct variant: derived from dtype, size and conditioning unless given."""

    dtype: str
    n: int
    given_rtol: float | None
    atol: float

    def rtol(self, conditioning: float) -> float:
        """The relative tolerance on a problem whose errors rounding may grow by `conditioning`."""
        if self.given_rtol is not None:
            return self.given_rtol
        return ROUNDING_FACTOR * float(numpy.finfo(self.dtype).eps) * math.sqrt(self.n) * conditioning

    def allowed(self, conditioning: float, scale: float) -> float:
        """Absolute error allowed on outputs whose largest magnitude is `scale`."""
        return self.atol + self.rtol(conditioning) * scale

    def describe(self) -> str:
        """One line saying how the tolerance is set."""
        if self.given_rtol is not None:
            return f"rtol={self.given_rtol:.1e} (given), atol={self.atol:.1e}"
        return (
            f"rtol = {ROUNDING_FACTOR:g} eps sqrt(n) kappa = {self.rtol(1.0):.1e} kappa, atol={self.atol:.1e}; "
            f"kappa = (1 + mu) / (1 - mu) for a closed form, the number of walks for a cascade"
        )


def closed_form_conditioning(mu: float) -> float:
    """`(1 + mu) / (1 - mu)`, the bound on `cond(I - mu P)` for a row-stochastic `P`."""
    return (1 + mu) / (1 - mu)


def errors(output: numpy.ndarray, expected: numpy.ndarray) -> tuple[float, float]:
    """`max |output - expected|` and the largest magnitude of `expected` (NaN errors stay NaN)."""
    difference = numpy.abs(output - expected)
    error = math.nan if numpy.isnan(difference).any() else float(difference.max())
    return error, float(numpy.abs(expected).max())
