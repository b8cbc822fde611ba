"""Lint: ruff and mypy over the project, as CI runs them."""
