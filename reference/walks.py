"""Random walks of the diffusion, alone (Eq. 3) and in DifNet's cascade (Eqs. 4-5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reference._arrays import array_module
from reference._validation import (
    as_real_array,
    broadcast_batch,
    check_count,
    check_fraction,
    check_matrix_stack,
    check_rows_match,
    checked_transition,
    common_float_dtype,
    walk_problem,
)
from reference.solvers import solve_dense


def random_walk(P: Any, s: Any, mu: float, steps: int, y0: Any = None) -> Any:
    """`steps` iterations of Eq. 3, `y <- mu P y + (1 - mu) s`, from `y0` (default `s`).

    `P` is row-stochastic `[..., N, N]`, `s` and `y0` are `[..., N, K]` (batch dimensions
    broadcast). Returns `y_T` `[..., N, K]`, which approaches `closed_form(P, s, mu)` as mu^T.
    """
    steps = check_count(steps, "steps")
    problem = walk_problem(P, s, mu, y0)
    y = _start(problem.xp, problem.s if problem.y0 is None else problem.y0, problem.shape)
    for _ in range(steps):
        y = _walk_step(problem.P, y, problem.s, problem.mu)
    return y


def walk_error_bound(P: Any, s: Any, mu: float, steps: int, y0: Any = None) -> Any:
    """`mu^T ||y_0 - y*||_inf`, the bound on `||y_T - y*||_inf` after `T = steps` walk steps.

    The infinity norm is taken over the nodes of each column (class) separately, so the
    result is `[..., K]` and bounds `max_n |random_walk(P, s, mu, steps, y0) - y*|` per column.
    It holds because a row-stochastic `P` never increases the largest magnitude in a column.
    """
    steps = check_count(steps, "steps")
    problem = walk_problem(P, s, mu, y0)
    start = problem.s if problem.y0 is None else problem.y0
    fixed_point = solve_dense(problem.xp, problem.P, problem.s, problem.mu)
    return problem.mu**steps * problem.xp.abs(start - fixed_point).max(axis=-2)


def cascade(Ps: Sequence[Any], s: Any, mus: Sequence[float], betas: Sequence[float]) -> list[Any]:
    """DifNet's cascade of walks from `y_0 = s`; returns every iterate `[y_0, y_1, ..., y_T]`.

    Walk t uses its own transition matrix `Ps[t]` `[..., N, N]` and scalars `mus[t]` in [0, 1)
    and `betas[t]` in [0, 1]: `R_t = mu_t P_t y_t + (1 - mu_t) s` (Eq. 4) and
    `y_{t+1} = beta_t R_t + (1 - beta_t) y_t` (Eq. 5). `s` is `[..., N, K]`.
    """
    Ps, mus, betas = list(Ps), list(mus), list(betas)
    if not len(Ps) == len(mus) == len(betas):
        raise ValueError(
            f"Ps, mus and betas need one entry per walk (got {len(Ps)}, {len(mus)} and {len(betas)})"
        )
    xp = array_module(*Ps, s)
    s = as_real_array(xp, s, "s")
    check_matrix_stack(s, "s", "[..., N, K]")
    Ps = [checked_transition(xp, P, f"Ps[{t}]") for t, P in enumerate(Ps)]
    for t, P in enumerate(Ps):
        check_rows_match(f"Ps[{t}]", P, "s", s, "[..., N, K]")
    mus = [check_fraction(mu, f"mus[{t}]", include_one=False) for t, mu in enumerate(mus)]
    betas = [check_fraction(beta, f"betas[{t}]", include_one=True) for t, beta in enumerate(betas)]
    shape = broadcast_batch(s=(s, 2), **{f"Ps[{t}]": (P, 2) for t, P in enumerate(Ps)})
    shape += s.shape[-2:]
    dtype = common_float_dtype(xp, s, *Ps)
    s = s.astype(dtype, copy=False)
    ys = [_start(xp, s, shape)]
    for P, mu, beta in zip(Ps, mus, betas):
        walked = _walk_step(P.astype(dtype, copy=False), ys[-1], s, mu)  # Eq. 4
        ys.append(beta * walked + (1 - beta) * ys[-1])  # Eq. 5
    return ys


def _walk_step(P: Any, y: Any, s: Any, mu: float) -> Any:
    """One step `mu P y + (1 - mu) s` (Eq. 3, and R_t of Eq. 4)."""
    return mu * (P @ y) + (1 - mu) * s


def _start(xp: Any, y: Any, shape: tuple[int, ...]) -> Any:
    """A fresh copy of `y` broadcast to the walk's output shape."""
    return xp.broadcast_to(y, shape).copy()
