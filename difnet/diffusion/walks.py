"""The walks with restart of DifNet's cascade (Eqs. 4-5) and of the walks on the image: one loop,
`cascade_walk`, that every walk here runs, step by step or (`chebyshev_walk`) as the Chebyshev
series of the walk's polynomial in `P`.

Long walks (the fits' 100 steps at mu 0.99) are computed by default as that series: the same
probabilities, to ~1e-5, from 42 products `P y` instead of 100. `n` steps give `p_n = q_n(P) p_0`
with `q_n(x) = (mu x)^n + (1 - mu) sum_(k<n) (mu x)^k`; `P = D^-1 W` with `W` symmetric has a real
spectrum in [-1, 1], where the series truncated at degree `d` errs by at most its dropped
coefficients' sum in the D-norm (`D^1/2 P D^-1/2` is symmetric, so each `T_j` of it has norm at
most 1). The basis `T_j(P) p_0` comes from `T_(j+1) = 2 P T_j - T_(j-1)` (one lerp), one product a
degree, for every count at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache, partial

import numpy as np
import torch
from torch import Tensor, nn

from difnet.diffusion.kernels import (
    PAPER_KERNEL,
    WALK_METHODS,
    LocalTransition,
    TransitionKernel,
    WalkMethod,
    propagate,
)

Transition = Callable[[Tensor], Tensor]  # y -> P y
# "chebyshev": the walk's Chebyshev series where it takes fewer products than the steps; "steps": step by step
SOLVERS, DEFAULT_SOLVER = ("chebyshev", "steps"), "chebyshev"
# the largest sum of the series' dropped coefficients: probabilities within ~1e-5 of the steps'
TAIL_TOLERANCE = 1e-5


def walk_step(walked: Tensor, y: Tensor, seed: Tensor, mu: Tensor | float, beta: Tensor | float) -> Tensor:
    """Eqs. 4-5 given `walked = P y`: `beta (mu P y + (1 - mu) s) + (1 - beta) y`, in `walked`'s
    dtype; a step apart so walks on other transition matrices (e.g. label-built) share it. A beta
    that is the number 1 (the image walks') skips Eq. 5, whose lerp would return `restarted` exactly."""
    restarted = torch.lerp(seed.to(walked.dtype), walked, mu)  # Eq. 4
    if isinstance(beta, int | float) and beta == 1:
        return restarted
    return torch.lerp(y.to(walked.dtype), restarted, beta)  # Eq. 5


def _logit(probability: float, name: str) -> float:
    if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 < probability < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1 (got {probability!r})")
    return math.log(probability / (1 - probability))


class RandomWalk(nn.Module):
    """One walk of the cascade: `y' = beta R + (1 - beta) y`, `R = mu P y + (1 - mu) s`.

    `mu` and `beta` live in (0, 1) as sigmoids of raw parameters; the paper starts both at 0.5,
    `beta_init` near 0 starts the walk nearly switched off (y' = y). `P` comes from `kernel`;
    `learn_temperature=True` scales its logits by a learned `exp(raw_temperature)`, starting at 1.
    """

    def __init__(
        self,
        walk: WalkMethod = "fused",
        kernel: TransitionKernel = PAPER_KERNEL,
        *,
        learn_temperature: bool = False,
        beta_init: float = 0.5,
    ) -> None:
        super().__init__()
        if walk not in WALK_METHODS:
            raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
        self.walk, self.kernel = walk, kernel
        self.raw_mu = nn.Parameter(torch.zeros(()))
        self.raw_beta = nn.Parameter(torch.full((), _logit(beta_init, "beta_init")))
        self.raw_temperature = nn.Parameter(torch.zeros(())) if learn_temperature else None

    @property
    def mu(self) -> Tensor:
        """The restart weight `mu_t` in (0, 1)."""
        return torch.sigmoid(self.raw_mu)

    @property
    def beta(self) -> Tensor:
        """The step weight `beta_t` in (0, 1)."""
        return torch.sigmoid(self.raw_beta)

    @property
    def temperature(self) -> Tensor | None:
        """The learned factor of the logits (None: the kernel's own, 1)."""
        return None if self.raw_temperature is None else self.raw_temperature.exp()

    def transition(self, features: Tensor, values: Tensor, grid: Sequence[int] | None = None) -> Tensor:
        """`P y` of this walk's kernel and temperature."""
        return propagate(features, values, walk=self.walk, kernel=self.kernel, grid=grid,
                         temperature=self.temperature)  # fmt: skip

    def forward(self, features: Tensor, y: Tensor, seed: Tensor, grid: Sequence[int] | None = None) -> Tensor:
        """Features `[B, N, d]`, current values `y` and seed `s` `[B, N, K]` -> next `y`."""
        return walk_step(self.transition(features, y, grid), y, seed, self.mu, self.beta)

    def extra_repr(self) -> str:
        return f"walk={self.walk!r}, kernel={self.kernel}"


class Cascade(nn.Module):
    """A cascade of random walks, one per transition matrix, all restarting from the seed.

    `forward(features, seed, grid)` takes one `[B, N, d]` feature tensor per walk, the seed
    `[B, N, K]` and (for a local kernel) the nodes' `(h, w)` grid, and returns `[y_1, ..., y_T]`.
    """

    def __init__(
        self,
        num_walks: int,
        walk: WalkMethod = "fused",
        kernel: TransitionKernel = PAPER_KERNEL,
        *,
        learn_temperature: bool = False,
        beta_init: float = 0.5,
    ) -> None:
        super().__init__()
        if num_walks < 1:
            raise ValueError(f"num_walks must be at least 1 (got {num_walks})")
        self.walks = nn.ModuleList(
            RandomWalk(walk, kernel, learn_temperature=learn_temperature, beta_init=beta_init)
            for _ in range(num_walks)
        )

    @property
    def mu(self) -> Tensor:
        """`[T]` tensor of the walks' `mu_t`."""
        return torch.stack([walk.mu for walk in self.walks])

    @property
    def beta(self) -> Tensor:
        """`[T]` tensor of the walks' `beta_t`."""
        return torch.stack([walk.beta for walk in self.walks])

    def forward(
        self, features: Sequence[Tensor], seed: Tensor, grid: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Run every walk in turn from `y_0 = s`; returns `[y_1, ..., y_T]`."""
        if len(features) != len(self.walks):
            raise ValueError(
                f"expected {len(self.walks)} feature tensors, one per walk (got {len(features)})"
            )
        transitions = [
            partial(walk.transition, f, grid=grid) for walk, f in zip(self.walks, features, strict=True)
        ]
        mus, betas = (walk.mu for walk in self.walks), (walk.beta for walk in self.walks)
        return list(cascade_walk(transitions, seed, mus, betas))


def cascade_walk(
    transitions: Iterable[Transition],
    seed: Tensor,
    mus: Iterable[Tensor | float],
    betas: Iterable[Tensor | float],
) -> Iterator[Tensor]:
    """`y_1, y_2, ...` of Eqs. 4-5 from `y_0 = seed` `[B, N, K]`: walk `t` moves `y` with
    `transitions[t]` (`y -> P_t y`), restarts from the seed with `mus[t]` and steps with `betas[t]`.
    The one loop of every walk here; a walk whose beta is the number 0 is the identity, skipped."""
    y = seed
    for transition, mu, beta in zip(transitions, mus, betas, strict=False):
        if not (isinstance(beta, int | float) and beta == 0):
            y = walk_step(transition(y), y, seed, mu, beta)
        yield y


def restart_walk(
    transition: Transition, start: Tensor, mu: Tensor | float, steps: Iterable[int]
) -> Iterator[tuple[int, Tensor]]:
    """`(n, p_n)` for each `n` in `steps` of the walk `p_n = mu P p_(n-1) + (1 - mu) p_0` from
    `p_0 = start` `[B, N, K]`, with `transition` computing `P p`: one walk serves every count."""
    states = cascade_walk(itertools.repeat(transition), start, itertools.repeat(mu), itertools.repeat(1.0))
    walked, taken = start, 0
    for wanted in sorted(set(steps)):
        if wanted > taken:
            walked = next(itertools.islice(states, wanted - taken - 1, None))
        taken = wanted
        yield wanted, walked


def scalar(value: Tensor | float) -> float:
    """`value` as a Python float, detached from any graph."""
    return float(value.detach()) if isinstance(value, Tensor) else float(value)


@lru_cache(maxsize=64)
def power_to_chebyshev(degree: int) -> np.ndarray:
    """`[degree + 1, degree + 1]`: column k holds the Chebyshev coefficients of `x^k` (by
    `x T_0 = T_1`, `x T_j = (T_(j+1) + T_(j-1)) / 2`; every entry in [0, 1])."""
    columns = np.zeros((degree + 1, degree + 1))
    columns[0, 0] = 1.0
    for k in range(1, degree + 1):
        previous = columns[:, k - 1]
        columns[1:, k] += previous[:-1] / 2
        columns[:-1, k] += previous[1:] / 2
        columns[1, k] += previous[0] / 2  # x T_0 is T_1 whole
    return columns


def walk_chebyshev(mu: Tensor | float, steps: int) -> Tensor:
    """The Chebyshev coefficients `[steps + 1]` of the walk's polynomial `q_n` (float64, on `mu`'s
    device, differentiable in `mu`)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    powers = mu ** torch.arange(steps + 1, dtype=torch.float64, device=mu.device)
    polynomial = torch.cat([(1 - mu) * powers[:-1], powers[-1:]])  # (1 - mu) mu^k for k < n, then mu^n
    return torch.from_numpy(power_to_chebyshev(steps)).to(mu.device) @ polynomial


def chebyshev_degree(mu: float, steps: int, tolerance: float = TAIL_TOLERANCE) -> int:
    """The lowest degree `d` whose dropped coefficients `|c_(d+1)| + ... + |c_n|` of `q_n` sum to
    at most `tolerance` (`steps`, the whole series, where no lower degree does)."""
    dropped = np.cumsum(np.abs(walk_chebyshev(float(mu), steps).numpy())[::-1])[::-1][1:]  # [d]: beyond d
    return int(np.argmax(dropped <= tolerance)) if dropped.size and dropped[-1] <= tolerance else steps


def chebyshev_walk(
    transition: Transition, start: Tensor, mu: Tensor | float, steps: Iterable[int]
) -> Iterator[tuple[int, Tensor]]:
    """`(n, p_n)` for each `n` in `steps`, as `restart_walk` yields them, from the Chebyshev series
    of `q_n` truncated at `chebyshev_degree`: the highest degree's products serve every count."""
    counts, degrees, highest = sorted(set(steps)), {}, 0
    for n in counts:  # a longer walk never stops at a lower degree than a shorter one
        highest = degrees[n] = max(highest, chebyshev_degree(scalar(mu), n))
    coefficients = {n: walk_chebyshev(mu, n)[: degrees[n] + 1].to(start.device, start.dtype) for n in counts}
    sums = {n: coefficients[n][0] * start for n in counts}
    previous, current = None, start
    for degree in range(1, highest + 1):
        walked = transition(current)
        previous, current = current, walked if previous is None else torch.lerp(previous, walked, 2.0)
        for n in counts:
            if degree <= degrees[n]:
                sums[n] = torch.addcmul(sums[n], coefficients[n][degree], current)
    for n in counts:
        yield n, sums[n]


def walk_states(
    transition: Transition,
    start: Tensor,
    mu: Tensor | float,
    steps: Iterable[int],
    solver: str,
) -> Iterator[tuple[int, Tensor]]:
    """`restart_walk`'s `(n, p_n)`, by `chebyshev_walk` when `solver` is "chebyshev" and its series
    takes fewer products than the longest walk's steps, else step by step (as one autograd node
    where a `LocalTransition` runs it so: `LocalTransition.restart_walk`)."""
    steps = sorted(set(steps))
    if steps and walk_products(scalar(mu), steps[-1], solver) < steps[-1]:
        return chebyshev_walk(transition, start, mu, steps)
    if isinstance(transition, LocalTransition) and (states := transition.restart_walk(start, mu, steps)):
        return zip(steps, states, strict=True)
    return restart_walk(transition, start, mu, steps)


def walk_products(mu: float, steps: int, solver: str) -> int:
    """The products `P y` a walk of `steps` steps with restart weight `mu` takes with `solver`: the
    Chebyshev series' degree where that is fewer than the steps, else the steps."""
    return min(steps, chebyshev_degree(mu, steps)) if solver == "chebyshev" else steps
