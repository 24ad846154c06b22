"""A worker's share of WAL archiving freshness (issue 11): now and then, for each pgBackRest
stanza and Barman server its database's schedules and retention name, read the archive from the
tool and record it (schema/020), so `status` and the metrics can say how far behind it is.

The database says which worker reads a target in each interval (pggit.claim_archive_check):
one reading per target and interval whichever hosts carry it, and none while no worker is idle
enough to ask (a busy fleet reads later, never twice). The queue database is usually the server
being archived (pgGit lives in the database it versions): when its system id is the stanza's,
its current segment and pg_stat_archiver's failures join pgBackRest's reading; Barman reads the
server's position itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import psycopg2

from .config import Config
from .errors import one_line
from .log import fields
from .queue import Queue
from .runner import RunResult, RunSpec, run_tool
from .status_targets import retention_target, schedule_target, target_key
from .tools import ArchiveReading, archiver_for

log = logging.getLogger("pggit.archive")

# at most this often an idle worker asks whether a target is due (the interval is the database's)
ASK_EVERY = 30.0
_KEY = {"pgbackrest": "stanza", "barman": "server"}  # what names a target's repository


class Link(Protocol):
    name: str

    @property
    def aborting(self) -> bool: ...

    def beat(self) -> None: ...


def archive_targets(config: Config) -> list[dict[str, str]]:
    """The stanzas and servers this database's schedules back up and its retention keeps, once
    each, named as `status` names its targets (status_targets)."""
    named = [schedule_target(s) for s in config.schedules] + [retention_target(r) for r in config.retention]
    found = {target_key(t): t for t in named if t is not None and t["tool"] in _KEY}
    return [found[key] for key in sorted(found)]


@dataclass
class ArchiveChecks:
    """One worker's archive readings: `tick(queue)` from its idle loop."""

    config: Config
    link: Link
    run: Callable[..., RunResult] = run_tool
    next_ask: float = 0.0
    targets: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = archive_targets(self.config)

    def tick(self, queue: Queue) -> None:
        """A database error propagates (the worker reconnects); a tool's never does."""
        if not self.targets or time.monotonic() < self.next_ask:
            return
        self.next_ask = time.monotonic() + min(ASK_EVERY, self.config.archive_check_interval)
        for target in self.targets:
            if self.link.aborting:
                return
            key = json.dumps(target, sort_keys=True)
            if queue.claim_archive_check(self.link.name, key, self.config.archive_check_interval):
                self.check(queue, target, key)

    def check(self, queue: Queue, target: dict[str, str], key: str) -> ArchiveReading:
        tool_name = target["tool"]
        name = target[_KEY[tool_name]]
        tool, archiver = self.config.tools.get(tool_name), archiver_for(tool_name)
        if tool is None or archiver is None:
            reading = ArchiveReading(error=f"tools.{tool_name} is not configured on {self.link.name}")
        else:
            try:
                reading = archiver.archive_reading(name, tool, self._run)
            except Exception as exc:  # the runner's JobError (a missing binary), or a bug: recorded, not raised
                reading = ArchiveReading(error=f"reading the archive failed: {one_line(exc)}")
        if tool_name == "pgbackrest" and reading.system_id is not None:
            server = queue.server_wal()
            if server.system_id == reading.system_id:
                reading = replace(
                    reading,
                    server_segment=server.segment,
                    failed_count=server.failed_count,
                    last_failed_wal=server.last_failed_wal,
                    last_failed_at=server.last_failed_at,
                )
        try:
            queue.record_archive_status(self.link.name, key, reading.recorded())
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise
        except psycopg2.Error as exc:  # refused (a value the SQL does not take): say so, go on
            log.warning("the archive reading was refused: " + one_line(exc) + self._where(target))
            return reading
        line = fields(archive_max=reading.archive_max, server=reading.server_segment, error=reading.error)
        (log.warning if reading.error else log.info)("WAL archive read" + self._where(target) + line)
        return reading

    def _run(self, spec: RunSpec) -> RunResult:
        return self.run(spec, on_tick=self._tick)

    def _tick(self) -> str | None:
        self.link.beat()
        return "the service is stopping" if self.link.aborting else None

    def _where(self, target: dict[str, Any]) -> str:
        name = target.get("stanza") or target.get("server")
        return fields(worker=self.link.name, tool=target["tool"], target=name)


__all__ = ["ArchiveChecks", "archive_targets"]
