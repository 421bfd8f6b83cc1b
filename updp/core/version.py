"""The package version, in one place (read by `pyproject.toml` and recorded in every artifact)."""

__version__ = "0.1.0"
