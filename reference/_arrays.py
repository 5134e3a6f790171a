"""Pick NumPy or CuPy from the inputs, so one code path serves both without importing CuPy."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy
import scipy.sparse.linalg


def array_module(*arrays: Any) -> ModuleType:
    """Return `cupy` if any input is a CuPy array, else `numpy`.

    CuPy is only consulted when the caller has already imported it: a CuPy array cannot
    exist otherwise, and importing it here would cost seconds on machines without a GPU.
    """
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return numpy
    return cupy.get_array_module(*arrays)


def sparse_linalg(xp: ModuleType) -> ModuleType:
    """The module holding `LinearOperator` and `gmres` for arrays of module `xp`."""
    if xp is numpy:
        return scipy.sparse.linalg
    import cupyx.scipy.sparse.linalg

    return cupyx.scipy.sparse.linalg
