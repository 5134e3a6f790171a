"""Reading recipe files: JSON (a run's config.json is one), or TOML through the standard
library's `tomllib` (Python 3.11+)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECIPE_FORMATS = (".json", ".toml")


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The top-level table of settings in JSON or TOML file `path` (chosen by its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} not found")
    suffix = path.suffix.lower()
    if suffix not in RECIPE_FORMATS:
        raise ValueError(f"recipe file {path}: unknown format {suffix!r}; use {' or '.join(RECIPE_FORMATS)}")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if suffix == ".json" else _toml_loads(text, path)
    except ValueError as error:  # json's and tomllib's decode errors are ValueErrors
        raise ValueError(f"cannot read recipe file {path}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"recipe file {path} must hold a table of settings (got {type(values).__name__})")
    return values


def _toml_loads(text: str, path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ImportError(
            f"reading the TOML recipe {path} needs Python 3.11+ (tomllib); write it as JSON"
        ) from None
    return tomllib.loads(text)
