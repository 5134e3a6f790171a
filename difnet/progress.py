"""Progress bars that suit where they are written: redrawn freely on a terminal, thinned to one
line a minute when stderr is a file or pipe, so a log does not fill with carriage returns."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

TERMINAL_INTERVAL_S = 0.1  # tqdm's own default
LOG_INTERVAL_S = 60.0


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar over `iterable` (or updated by hand), off unless `enabled`; redrawn at most
    once a minute when stderr is not a terminal."""
    interval = TERMINAL_INTERVAL_S if sys.stderr.isatty() else LOG_INTERVAL_S
    return tqdm(iterable, disable=not enabled, mininterval=interval, **options)
