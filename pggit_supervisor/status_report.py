"""`pggit-supervisor status`: what each served database says about its queue, its workers, its
targets and schedules and its unacknowledged failures, read once into frozen records; then a
table for people, JSON for scripts (the shape README documents, `"format": 1`), or the
monitoring probe's one line (status_check.py judges the same records).

All SQL is in the queue package; the ages come from the database's clock, so a host whose clock is off
judges no backup wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg2

from .archive_check import archive_targets
from .config import Config
from .errors import one_line
from .queue import Queue, connect
from .scheduler import next_fire
from .slots import ScheduleStatus
from .status_check import BACKUP, DRILL, WAL, WORKERS, Age, DatabaseSnapshot, Verdict, evaluate, human, judge_age
from .status_rows import PermanentFailure, QueueStatistics, RunningJob, TargetStatus, WorkerSeen
from .status_targets import WatchedTarget, label_of, target_key, watched_targets

JSON_FORMAT = 1
FAILURES_SHOWN = 20  # the newest unacknowledged permanent failures listed (the count is exact)


@dataclass(frozen=True)
class PlannedSchedule:
    """A schedule of this database's config: when it fires next (None: never) and its max_age."""

    name: str
    next_slot: datetime | None
    max_age: int | None


@dataclass(frozen=True)
class TargetReport:
    watched: WatchedTarget
    status: TargetStatus


@dataclass(frozen=True)
class DatabaseReport:
    """One database as read; error set (and the rest empty) when it could not be read."""

    name: str
    error: str | None = None
    queue: QueueStatistics | None = None
    running: tuple[RunningJob, ...] = ()
    workers: tuple[WorkerSeen, ...] = ()
    targets: tuple[TargetReport, ...] = ()
    schedules: tuple[ScheduleStatus, ...] = ()
    failures: tuple[PermanentFailure, ...] = ()
    unacknowledged_failures: int = 0
    # the configured schedules of this database with their next slot
    next_slots: tuple[PlannedSchedule, ...] = ()
    # the notification outbox (schema/018): deliveries by state, and the dead-lettered ones
    notifications: Mapping[str, int] | None = None
    dead_lettered_notifications: int | None = None
    extra_ages: tuple[Age, ...] = ()  # hook: WAL archive age, last drill age (later)


def read_database(queue: Queue, part: Config, name: str, now: datetime) -> DatabaseReport:
    """Everything `status` shows of one database, through its queue connection."""
    watched = list(watched_targets(part.schedules, part.retention, name))
    statuses = queue.target_statuses([w.target for w in watched]) if watched else []
    targets = tuple(TargetReport(w, s) for w, s in zip(watched, statuses, strict=True))
    return DatabaseReport(
        name=name,
        queue=queue.queue_statistics(),
        running=tuple(queue.running_jobs()),
        workers=tuple(queue.workers_seen()),  # every worker recorded in this queue serves it
        targets=targets,
        schedules=tuple(queue.schedule_status()),
        failures=tuple(queue.permanent_failures(FAILURES_SHOWN)),
        unacknowledged_failures=queue.unacknowledged_failure_count(),
        next_slots=tuple(
            PlannedSchedule(s.name, next_fire(s, now) if s.enabled else None, s.max_age) for s in part.schedules
        ),
        extra_ages=(*wal_ages(queue, part), *drill_ages(queue, part)),
        notifications=queue.notification_counts(),
        dead_lettered_notifications=queue.notification_counts().get("dead", 0),
    )


def wal_ages(queue: Queue, part: Config) -> list[Age]:
    """Each stanza's and server's WAL archive lag against max_wal_age (None: never read)."""
    lags = {target_key(row["target"]): row["wal_age_seconds"] for row in queue.archive_freshness()}
    return [
        Age(
            WAL,
            label_of(t, part.served()[0].name),
            _seconds(lags.get(target_key(t))),
            float(part.max_wal_age),
        )
        for t in archive_targets(part)
    ]


def drill_ages(queue: Queue, part: Config) -> list[Age]:
    """Each drill schedule's target: the age of its last passed drill against max_drill_age."""
    return [
        Age(
            DRILL,
            drill.name,
            queue.last_passed_drill_seconds(drill.target_json()),
            None if drill.max_drill_age is None else float(drill.max_drill_age),
        )
        for drill in part.drills
        if drill.enabled
    ]


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def collect(config: Config, now: datetime) -> list[DatabaseReport]:
    """Each served database, read or with the error that kept it from being read."""
    found = []
    for database in config.served():
        part = config.for_database(database)
        try:
            conn = connect(database.dsn, "pggit-supervisor status")
        except psycopg2.Error as exc:
            found.append(DatabaseReport(database.name, error=one_line(exc)))
            continue
        try:
            # one snapshot, one now(): the counts, ages and rows agree with each other
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
            found.append(read_database(Queue(conn), part, database.name, now))
        except psycopg2.Error as exc:  # e.g. a schema older than 019, or a login that may not read it
            found.append(DatabaseReport(database.name, error=one_line(exc)))
        finally:
            conn.close()
    return found


def snapshot(report: DatabaseReport, config: Config) -> DatabaseSnapshot:
    """What --check judges of one database."""
    if report.error is not None or report.queue is None:
        return DatabaseSnapshot(report.name, error=report.error or "not read")
    ages = [Age(BACKUP, t.watched.label, t.status.newest_verified_seconds, t.watched.max_age) for t in report.targets]
    newest = min((w.silent_seconds for w in report.workers), default=None)
    ages.append(Age(WORKERS, report.name, newest, float(config.worker_silence)))
    return DatabaseSnapshot(
        name=report.name,
        ages=(*ages, *report.extra_ages),
        unacknowledged_failures=report.unacknowledged_failures,
        ready=report.queue.ready,
        in_progress=report.queue.in_progress,
        oldest_ready_seconds=report.queue.oldest_ready_seconds,
    )


def verdict(reports: Sequence[DatabaseReport], config: Config) -> Verdict:
    return evaluate([snapshot(report, config) for report in reports], config.warning_fraction)


def worker_state(worker: WorkerSeen, silence: float) -> str:
    """stopped (in order), dead (silent for worker_silence) or alive."""
    if worker.stopped_at is not None:
        return "stopped"
    return "dead" if worker.silent_seconds > silence else "alive"


# -- JSON ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _target_json(report: TargetReport, config: Config) -> dict[str, Any]:
    status, watched = report.status, report.watched
    code, problem = judge_age(
        Age(BACKUP, watched.label, status.newest_verified_seconds, watched.max_age), config.warning_fraction
    )
    newest = None
    if status.newest_verified_id is not None:
        newest = {
            "backup_id": status.newest_verified_id,
            "backup_name": status.newest_verified_name,
            "completed_at": status.newest_verified_at,
            "age_seconds": status.newest_verified_seconds,
        }
    failure = None
    if status.last_failure_job_id is not None:
        failure = {
            "job_id": status.last_failure_job_id,
            "failed_at": status.last_failure_at,
            "job_state": status.last_failure_state,
            "error": status.last_failure_error,
        }
    drill = None
    if status.last_drill_at is not None:
        drill = {
            "backup_id": status.last_drill_backup_id,
            "at": status.last_drill_at,
            "result": status.last_drill_result,
        }
    return {
        "label": watched.label,
        "target": status.target,
        "schedules": list(watched.schedules),
        "max_age_seconds": watched.max_age,
        "state": ("ok", "warning", "critical")[code],
        "problem": problem,
        "backups": status.backups,
        "verified_backups": status.verified_backups,
        "newest_verified": newest,
        "last_failure": failure,
        "last_drill": drill,
    }


def database_json(report: DatabaseReport, config: Config) -> dict[str, Any]:
    if report.error is not None or report.queue is None:
        return {"name": report.name, "readable": False, "error": report.error}
    by_name = {s.schedule_name: s for s in report.schedules}
    silence = float(config.worker_silence)
    target_of = {name: t.watched.label for t in report.targets for name in t.watched.schedules}
    schedules = []
    for planned in report.next_slots:
        seen = by_name.get(planned.name)
        schedules.append(
            {
                "name": planned.name,
                "target": target_of.get(planned.name),
                "max_age_seconds": planned.max_age,
                "next_slot": planned.next_slot,
                "last_slot": seen.last_slot if seen else None,
                "last_outcome": seen.last_outcome if seen else None,
                "last_reason": seen.last_reason if seen else None,
                "last_job_state": seen.last_job_state if seen else None,
            }
        )
    return {
        "name": report.name,
        "readable": True,
        "error": None,
        "queue": asdict(report.queue),
        "running": [asdict(job) for job in report.running],
        "workers": [{**asdict(w), "state": worker_state(w, silence)} for w in report.workers],
        "targets": [_target_json(target, config) for target in report.targets],
        "schedules": schedules,
        "unacknowledged_failures": {
            "count": report.unacknowledged_failures,
            "newest": [asdict(f) for f in report.failures],
        },
        "dead_lettered_notifications": report.dead_lettered_notifications,
    }


def render_json(reports: Sequence[DatabaseReport], config: Config, now: datetime) -> str:
    checked = verdict(reports, config)
    document = {
        "format": JSON_FORMAT,
        "generated_at": now,
        "check": {"state": checked.state, "code": checked.code, "summary": checked.summary},
        "databases": [database_json(report, config) for report in reports],
    }
    return json.dumps(_plain(document), indent=2)


# -- the table for people --------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[tuple[str, ...]]) -> list[str]:
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else human(seconds)


def _first_line(text: str | None, width: int = 60) -> str:
    return (text or "").strip().split("\n", 1)[0][:width]


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def render_database(report: DatabaseReport, config: Config) -> list[str]:
    if report.error is not None or report.queue is None:
        return [f"database {report.name}: cannot be read: {report.error}"]
    q = report.queue
    rows: list[tuple[str, ...]]
    header: tuple[str, ...]
    lines = [
        f"database {report.name}",
        f"  queue: {q.ready} ready, {q.in_progress} in progress, {q.will_retry} will retry; last 24h: "
        f"{q.completed_24h} completed, {q.permanently_failed_24h} permanently failed, {q.cancelled_24h} cancelled; "
        f"oldest ready job waiting {_age(q.oldest_ready_seconds)}",
    ]
    if report.running:
        lines.append("  running:")
        rows = [
            (j.job_id, j.worker_id or "-", j.tool, j.target or "-", _age(j.runtime_seconds)) for j in report.running
        ]
        lines += ["    " + line for line in _table(("JOB", "WORKER", "TOOL", "TARGET", "RUNTIME"), rows)]
    silence = float(config.worker_silence)
    lines.append("  workers:" if report.workers else "  workers: none has recorded itself")
    rows = [
        (
            w.worker_id,
            w.machine,
            str(w.pid),
            w.version,
            worker_state(w, silence),
            _age(w.silent_seconds),
            w.current_job_id or "-",
        )
        for w in report.workers
    ]
    if rows:
        lines += [
            "    " + line for line in _table(("WORKER", "MACHINE", "PID", "VERSION", "STATE", "LAST SEEN", "JOB"), rows)
        ]
    lines.append("  targets:" if report.targets else "  targets: none in the config (schedules, retention)")
    rows = []
    for target in report.targets:
        data = _target_json(target, config)
        s = target.status
        rows.append(
            (
                target.watched.label,
                data["state"].upper(),
                _age(s.newest_verified_seconds) if s.newest_verified_id else "never",
                _age(target.watched.max_age),
                f"{_when(s.last_failure_at)} {_first_line(s.last_failure_error)}".strip(),
                f"{_when(s.last_drill_at)} {s.last_drill_result or ''}".strip(),
            )
        )
    if rows:
        header = ("TARGET", "STATE", "NEWEST VERIFIED", "MAX AGE", "LAST FAILURE", "LAST DRILL")
        lines += ["    " + line for line in _table(header, rows)]
    if report.next_slots:
        by_name = {s.schedule_name: s for s in report.schedules}
        target_of = {name: t.watched.label for t in report.targets for name in t.watched.schedules}
        rows = [
            (
                p.name,
                target_of.get(p.name, "-"),
                _age(p.max_age),
                _when(by_name[p.name].last_slot) if p.name in by_name else "-",
                _when(p.next_slot) if p.next_slot else "never",
            )
            for p in report.next_slots
        ]
        lines.append("  schedules:")
        header = ("SCHEDULE", "TARGET", "MAX AGE", "LAST SLOT (UTC)", "NEXT SLOT (UTC)")
        lines += ["    " + line for line in _table(header, rows)]
    if report.notifications:
        counts = ", ".join(f"{report.notifications.get(state, 0)} {state}" for state in ("pending", "sending", "dead"))
        lines.append(
            f"  notifications: {counts} (dead: gave up after notifications.max_attempts; pggit.notification_status)"
        )
    if report.unacknowledged_failures:
        lines.append(f"  unacknowledged permanent failures: {report.unacknowledged_failures} (newest first)")
        rows = [
            (
                f.job_id,
                f.tool,
                f.target or "-",
                _when(f.failed_at),
                _first_line(f.last_error),
            )
            for f in report.failures
        ]
        lines += ["    " + line for line in _table(("JOB", "TOOL", "TARGET", "FAILED (UTC)", "ERROR"), rows)]
        lines.append("    acknowledge one with: SELECT pggit.acknowledge_failure('<job id>', 'what was done');")
    return lines


def render_table(reports: Sequence[DatabaseReport], config: Config) -> str:
    checked = verdict(reports, config)
    lines = [f"overall: {checked.state}: {checked.summary}"]
    for report in reports:
        lines += ["", *render_database(report, config)]
    return "\n".join(lines)
