"""What a reading of a WAL archive is (issue 11: WAL freshness), for the tools that keep one
(pgBackRest, Barman). Each adapter that can read its archive (`Archiver`) runs its own
commands; archive_check.py decides when, and the database how stale the archive is."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ..config import ToolConfig
from ..runner import RunResult, RunSpec

# a reading is a few quick commands; one that hangs this long is an error, not a wait
ARCHIVE_TIMEOUT = 120.0
SEGMENT = re.compile(r"[0-9A-F]{24}")

Run = Callable[[RunSpec], RunResult]


@dataclass(frozen=True)
class ArchiveReading:
    """What one check found. `archive_max`: the newest WAL segment in the archive (for several
    repositories, the oldest of their newest); `server_segment`: the segment the server writes
    now, when known; `system_id`: the archived server's, to tell whether the queue database is
    that server. None: not known. `error`: why the reading failed (what it did read stays)."""

    archive_max: str | None = None
    server_segment: str | None = None
    system_id: str | None = None
    failed_count: int | None = None
    last_failed_wal: str | None = None
    last_failed_at: str | None = None
    detail: str | None = None
    error: str | None = None

    def recorded(self) -> dict[str, Any]:
        """What pggit.record_archive_status is given."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "system_id"}


def segment(value: Any) -> str | None:
    """A WAL segment name, or None for anything else a tool printed."""
    return value if isinstance(value, str) and SEGMENT.fullmatch(value) else None


def check_spec(tool: ToolConfig, argv: list[str], output_limit: int) -> RunSpec:
    return RunSpec(
        tuple(argv),
        {},
        min(ARCHIVE_TIMEOUT, float(tool.timeout)),
        run_as=tool.run_as,
        kill_grace=float(tool.kill_grace),
        output_limit=output_limit,
    )


@runtime_checkable
class Archiver(Protocol):
    """An adapter whose repositories keep the WAL archive of the servers it backs up."""

    name: str

    def archive_reading(self, name: str, tool: ToolConfig, run: Run) -> ArchiveReading:
        """The archive of stanza / server `name`; never raises for what the tool says."""


__all__ = ["ARCHIVE_TIMEOUT", "ArchiveReading", "Archiver", "Run", "check_spec", "segment"]
