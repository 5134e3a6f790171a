"""The transition matrix of a diffusion: P = softmax(logits), row-stochastic by construction.

The logits are the paper's `f_i . f_j` or, with `kernel="distance"`, `-||f_i - f_j||^2`; with a
`radius`, only nodes within that many cells (Chebyshev distance) of the row's node on an `(h, w)`
grid are connected; `kernel="identity"` is `P = I`. One NumPy/CuPy definition per kernel, for
checking difnet's kernels (`difnet.diffusion.TransitionKernel`) and one's own.
"""

from __future__ import annotations

from typing import Any

import numpy

from reference._arrays import array_module
from reference._validation import as_real_array, check_matrix_stack, common_float_dtype

KERNELS = ("dot", "distance", "identity")


def transition_matrix(
    features: Any,
    kernel: str = "dot",
    *,
    radius: int | None = None,
    grid: tuple[int, int] | None = None,
    temperature: float = 1.0,
) -> Any:
    """Row-stochastic `P = softmax(temperature * logits)` (along each row) of features `[..., N, d]`.

    Returns `[..., N, N]` in the features' float dtype (integers become float64). Each row's
    maximum is subtracted before the exponential, so feature norms of 1e4 stay finite. A
    `radius` needs the nodes' `grid` `(h, w)` with `h w = N`, nodes numbered row by row.
    """
    xp = array_module(features)
    f = as_real_array(xp, features, "features")
    check_matrix_stack(f, "features", "[..., N, d]")
    f = f.astype(common_float_dtype(xp, f), copy=False)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} (got {kernel!r})")
    if kernel == "identity":
        return xp.broadcast_to(xp.eye(f.shape[-2], dtype=f.dtype), f.shape[:-1] + (f.shape[-2],)).copy()
    with numpy.errstate(over="ignore"):  # an overflow is reported below, naming the features
        if kernel == "distance":
            differences = f[..., :, None, :] - f[..., None, :, :]
            logits = -(differences * differences).sum(axis=-1)
        else:
            logits = f @ xp.swapaxes(f, -1, -2)
        logits = logits * temperature
    if not bool(xp.isfinite(logits).all()):
        largest = float(xp.linalg.norm(f.astype(xp.float64), axis=-1).max())
        raise ValueError(
            f"features are too large for {f.dtype}: the {kernel} kernel's logits overflow (largest feature norm "
            f"{largest:.3g}); rescale the features or use float64"
        )
    if radius is not None:
        logits = xp.where(_within(xp, radius, grid, f.shape[-2]), logits, -xp.inf)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = xp.exp(logits, out=logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights


def _within(xp: Any, radius: int, grid: tuple[int, int] | None, count: int) -> Any:
    """`[N, N]` mask: node j lies within `radius` cells of node i on the grid (Chebyshev)."""
    if grid is None or grid[0] * grid[1] != count:
        raise ValueError(f"a radius needs the (h, w) grid of the {count} nodes (got grid={grid!r})")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive number of grid cells (got {radius!r})")
    rows, cols = xp.divmod(xp.arange(count), grid[1])
    return (xp.abs(rows[:, None] - rows[None]) <= radius) & (xp.abs(cols[:, None] - cols[None]) <= radius)
