"""Configuration problems, all of them at once, each with its key path."""

from __future__ import annotations

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """Everything wrong with one configuration, so the operator fixes it in one pass."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(str(self))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[str]]]:
        return type(self), (self.source, self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} problem{'' if count == 1 else 's'}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

