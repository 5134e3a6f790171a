"""The transition matrix of a diffusion: P = softmax(f f^T), row-stochastic by construction."""

from __future__ import annotations

from typing import Any

import numpy

from reference._arrays import array_module
from reference._validation import as_real_array, check_matrix_stack, common_float_dtype


def transition_matrix(features: Any) -> Any:
    """Row-stochastic `P = softmax(f f^T)` (softmax along each row) of features `[..., N, d]`.

    Returns `[..., N, N]` in the features' float dtype (integers become float64). Each row's
    maximum is subtracted before the exponential, so feature norms of 1e4 stay finite.
    """
    xp = array_module(features)
    f = as_real_array(xp, features, "features")
    check_matrix_stack(f, "features", "[..., N, d]")
    f = f.astype(common_float_dtype(xp, f), copy=False)
    with numpy.errstate(over="ignore"):  # an overflow is reported below, naming the features
        logits = f @ xp.swapaxes(f, -1, -2)
    if not bool(xp.isfinite(logits).all()):
        largest = float(xp.linalg.norm(f.astype(xp.float64), axis=-1).max())
        raise ValueError(
            f"features are too large for {f.dtype}: f f^T overflows (largest feature norm "
            f"{largest:.3g}); rescale the features or use float64"
        )
    logits -= logits.max(axis=-1, keepdims=True)
    weights = xp.exp(logits, out=logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights
