"""`single_thread()`: run torch on one thread inside a `with` block, for tests that train in-process.

One thread makes runs comparable bit for bit with subprocesses started with OMP_NUM_THREADS=1,
and keeps OpenMP from spinning when other processes share this project's 2-core CPU. Import it
from a test module as `from torch_threads import single_thread` (pytest puts `tests/` on `sys.path`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Set torch's intra-op threads to 1 for the block, then restore the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
