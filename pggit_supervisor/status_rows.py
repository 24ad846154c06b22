"""What the status views and functions of schema/019 answer, as records: `pggit-supervisor
status` reads them, status_check.py judges them. Ages are the server's (seconds); a time the
database does not have stays None, never 0, so nothing that did not happen reads as fresh."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class QueueStatistics:
    """pggit.backup_queue_statistics: jobs in play, ended ones of the last 24 hours."""

    ready: int
    in_progress: int
    will_retry: int
    completed_24h: int
    permanently_failed_24h: int
    cancelled_24h: int
    oldest_ready_seconds: float | None


@dataclass(frozen=True)
class RunningJob:
    """A job in progress, from pggit.backup_job_queue."""

    job_id: str
    worker_id: str | None
    tool: str
    target: str | None
    backup_name: str
    started_at: datetime | None
    runtime_seconds: float | None


@dataclass(frozen=True)
class WorkerSeen:
    """A row of pggit.backup_worker_status: a worker as it last recorded itself."""

    worker_id: str
    host_name: str
    machine: str
    pid: int
    version: str
    database_name: str
    tools: Sequence[str]
    started_at: datetime
    last_seen_at: datetime
    silent_seconds: float
    current_job_id: str | None
    stopped_at: datetime | None


@dataclass(frozen=True)
class PermanentFailure:
    """A row of pggit.backup_permanent_failures."""

    job_id: str
    backup_id: str
    backup_name: str
    tool: str
    target: str | None
    attempts: int
    max_attempts: int
    failed_at: datetime
    last_error: str | None
    acknowledged: bool
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledgement_note: str | None


@dataclass(frozen=True)
class TargetStatus:
    """pggit.backup_target_status: one target's newest verified backup, last failure, last drill."""

    target: Mapping[str, Any]
    backups: int
    verified_backups: int
    newest_verified_id: str | None
    newest_verified_name: str | None
    newest_verified_at: datetime | None
    newest_verified_seconds: float | None
    last_failure_job_id: str | None
    last_failure_at: datetime | None
    last_failure_state: str | None
    last_failure_error: str | None
    last_drill_backup_id: str | None
    last_drill_at: datetime | None
    last_drill_result: str | None
