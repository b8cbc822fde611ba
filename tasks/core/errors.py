"""One error type for expected failures: a one-line message that names the problem and the fix."""

from __future__ import annotations


class HomelabError(Exception):
    """An expected failure; tasks turn it into a one-line message and a non-zero exit."""

    def __init__(self, problem: str, fix: str = "", exit_code: int = 1) -> None:
        self.problem = problem
        self.fix = fix
        self.exit_code = exit_code
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class ConfigError(HomelabError):
    """invoke.yaml or catalog.yaml is invalid."""
