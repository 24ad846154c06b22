"""How problems are collected and worded: `WHERE: key.path: what is wrong (allowed: ...)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import ConfigError


class Report:
    """Where each key came from, and the problems found so far."""

    def __init__(self, source: str, origins: Mapping[str, str]) -> None:
        self.source = source
        self.origins = origins
        self.problems: list[str] = []

    def where(self, key_path: str) -> str:
        return self.origins.get(key_path, f"{self.source}: {key_path}")

    def add(self, key_path: str, what: str, allowed: str) -> None:
        self.problems.append(f"{self.where(key_path)}: {what} (allowed: {allowed})")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def show(value: Any) -> str:
    """A value as the operator wrote it, short enough for one log line."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # `yes`, `on` and `true` all land here
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value)
