"""Boundary checks shared by the public functions: each failure names the argument and the value."""

from __future__ import annotations

import math
import operator
from types import ModuleType
from typing import Any, NamedTuple

import numpy

from reference._arrays import array_module


def as_real_array(xp: ModuleType, value: Any, name: str) -> Any:
    """`value` as an array of module `xp`; refuses non-real dtypes and non-finite entries."""
    array = xp.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real-valued array (got dtype {array.dtype})")
    bad = ~xp.isfinite(array)
    if bool(bad.any()):
        index = _first_index(xp, bad)
        raise ValueError(f"{name} contains a non-finite value ({float(array[index])}) at index {index}")
    return array


def common_float_dtype(xp: ModuleType, *arrays: Any) -> Any:
    """NumPy's promotion of the inputs with float32: float32 stays float32, float64 float64."""
    return xp.result_type(*{array.dtype for array in arrays}, xp.float32)


def check_matrix_stack(array: Any, name: str, layout: str) -> None:
    """Require at least two dimensions and at least one row, as in `layout` (e.g. "[..., N, K]")."""
    if array.ndim < 2 or array.shape[-2] == 0:
        raise ValueError(f"{name} must have shape {layout} with N >= 1 (got shape {array.shape})")


def check_square(array: Any, name: str) -> int:
    """Require a stack of square matrices `[..., N, N]`; return N."""
    check_matrix_stack(array, name, "[..., N, N]")
    if array.shape[-1] != array.shape[-2]:
        raise ValueError(f"{name} must be square, [..., N, N] (got shape {array.shape})")
    return array.shape[-1]


def check_rows_match(matrix_name: str, matrix: Any, name: str, array: Any, layout: str) -> None:
    """Require `array`, laid out as `layout` ("[..., N, K]" or "[..., N]"), to have N rows."""
    n = matrix.shape[-1]
    node_axis = -1 if layout == "[..., N]" else -2
    if array.ndim < -node_axis or array.shape[node_axis] != n:
        raise ValueError(
            f"{name} has shape {array.shape} but {matrix_name} has shape {matrix.shape}: "
            f"{name} must be {layout} with N = {n}"
        )


def broadcast_batch(**arrays_and_core_ndims: tuple[Any, int]) -> tuple[int, ...]:
    """Broadcast the leading (batch) dimensions of named arrays, each given with its core ndim."""
    batches = [array.shape[: array.ndim - core] for array, core in arrays_and_core_ndims.values()]
    try:
        return tuple(numpy.broadcast_shapes(*batches))
    except ValueError:
        listed = ", ".join(f"{name} {array.shape}" for name, (array, _) in arrays_and_core_ndims.items())
        raise ValueError(f"batch dimensions do not broadcast: {listed}") from None


def check_transition(xp: ModuleType, P: Any, name: str) -> None:
    """Require a row-stochastic `P`: non-negative entries, every row summing to one.

    Rows may miss one by at most sqrt(eps) of the precision the values carry (3.5e-4 for
    float32 values, even when stored as float64; 1.5e-8 for float64 values), far above rounding
    in a softmax and far below any real normalisation mistake.
    """
    check_square(P, name)
    negative = P < 0
    if bool(negative.any()):
        index = _first_index(xp, negative)
        raise ValueError(
            f"{name} must be row-stochastic but has a negative entry {float(P[index]):.6g} at index {index}"
        )
    carried = carried_precision(xp, P)
    tolerance = _row_sum_tolerance(carried)
    sums = P.sum(axis=-1, dtype=xp.float64)
    off = xp.abs(sums - 1.0) > tolerance
    if bool(off.any()):
        index = _first_index(xp, off)
        total = float(sums[index])
        raise ValueError(
            f"row {index[-1]} of {name}{_batch_label(index)} sums to {total!r} ({total - 1:+.2e} off one), "
            f"but every row of a transition matrix must sum to one (within {tolerance:.1e} for "
            f"{carried} values); normalise it, e.g. with transition_matrix(features)"
        )


def carried_precision(xp: ModuleType, array: Any) -> str:
    """float32 for wider floats whose every value is a float32 number, else the array's own dtype.

    A float32 softmax cast to float64 still carries float32 precision, and is judged by it.
    """
    if array.dtype.kind != "f":
        return "float64"
    if array.dtype.itemsize > 4 and bool((array.astype(xp.float32).astype(array.dtype) == array).all()):
        return "float32"
    return array.dtype.name


def check_affinity(xp: ModuleType, W: Any, name: str) -> None:
    """Require a non-negative affinity `W` whose row sums (the degrees) are positive."""
    check_square(W, name)
    negative = W < 0
    if bool(negative.any()):
        index = _first_index(xp, negative)
        raise ValueError(
            f"{name} must be a non-negative affinity but has entry {float(W[index]):.6g} at index {index}"
        )
    isolated = W.sum(axis=-1) <= 0
    if bool(isolated.any()):
        index = _first_index(xp, isolated)
        raise ValueError(
            f"row {index[-1]} of {name}{_batch_label(index)} sums to 0: every node needs a "
            f"positive degree so that D = diag(W 1) is invertible"
        )


def check_fraction(value: Any, name: str, *, include_one: bool) -> float:
    """Require a real number in [0, 1] ([0, 1) unless `include_one`); return it as float."""
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a real number (got {value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number (got {value!r})") from None
    inside = 0.0 <= number <= 1.0 if include_one else 0.0 <= number < 1.0
    if not inside:
        if include_one:
            raise ValueError(f"{name} must lie in [0, 1] (got {value!r})")
        raise ValueError(
            f"{name} must lie in [0, 1) (got {value!r}); at mu = 1 the system I - mu P is singular"
        )
    return number


def check_count(value: Any, name: str) -> int:
    """Require a non-negative integer (a number of steps); return it as int."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a non-negative integer (got {value!r})")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a non-negative integer (got {value!r})") from None
    if count < 0:
        raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
    return count


def check_positive(value: Any, name: str) -> float:
    """Require a finite real number > 0 (a tolerance); return it as float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive real number (got {value!r})") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive real number (got {value!r})")
    return number


def _row_sum_tolerance(dtype: str) -> float:
    return math.sqrt(float(numpy.finfo(dtype).eps))


def _first_index(xp: ModuleType, mask: Any) -> tuple[int, ...]:
    return tuple(int(i) for i in xp.argwhere(mask)[0])


def _batch_label(index: tuple[int, ...]) -> str:
    batch = index[:-1]
    return f"[{', '.join(map(str, batch))}]" if batch else ""


class WalkProblem(NamedTuple):
    """Validated inputs of one diffusion `y = mu P y + (1 - mu) s`, cast to one float dtype."""

    xp: ModuleType
    P: Any
    s: Any
    mu: float
    y0: Any
    shape: tuple[int, ...]


def walk_problem(P: Any, s: Any, mu: Any, y0: Any = None) -> WalkProblem:
    """Check a transition matrix `P [..., N, N]`, seed `s [..., N, K]`, `mu` and optional `y0`."""
    xp = array_module(*(a for a in (P, s, y0) if a is not None))
    P = checked_transition(xp, P, "P")
    s = checked_seed(xp, s, "s", P, "P")
    mu = check_fraction(mu, "mu", include_one=False)
    arrays = {"P": (P, 2), "s": (s, 2)}
    if y0 is not None:
        y0 = checked_seed(xp, y0, "y0", P, "P")
        if y0.shape[-1] != s.shape[-1]:
            raise ValueError(f"y0 has shape {y0.shape} but s has shape {s.shape}: they need the same K")
        arrays["y0"] = (y0, 2)
    shape = broadcast_batch(**arrays) + s.shape[-2:]
    dtype = common_float_dtype(xp, *(array for array, _ in arrays.values()))
    if y0 is not None:
        y0 = y0.astype(dtype, copy=False)
    return WalkProblem(xp, P.astype(dtype, copy=False), s.astype(dtype, copy=False), mu, y0, shape)


def checked_transition(xp: ModuleType, P: Any, name: str) -> Any:
    """`P` as a finite real row-stochastic array `[..., N, N]` of module `xp`."""
    P = as_real_array(xp, P, name)
    check_transition(xp, P, name)
    return P


def checked_seed(xp: ModuleType, s: Any, name: str, P: Any, P_name: str) -> Any:
    """`s` as a finite real array `[..., N, K]` with as many rows as `P` has nodes."""
    s = as_real_array(xp, s, name)
    check_rows_match(P_name, P, name, s, "[..., N, K]")
    return s
