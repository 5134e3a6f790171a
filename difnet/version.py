"""The package version, in a module that imports nothing, so any module can read it without
importing the package (and pyproject.toml reads it for the distribution's version)."""

__version__ = "0.1.0"
