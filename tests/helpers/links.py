"""A worker's side as the worker-side helpers (retention_jobs, archive_check) see it, for tests
that drive them in-process against a real database and real tools."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class IdleLink:
    name: str = "host-t/1"
    aborting: bool = False
    beats: int = 0
    told: list[tuple[Any, ...]] = field(default_factory=list)

    def beat(self) -> None:
        self.beats += 1

    def tell(self, *words: Any) -> None:
        self.told.append(words)
