"""Prometheus metrics (issue 11), written as a textfile for node_exporter's textfile collector.

Why a textfile and not an HTTP endpoint: the service opens no listening socket (one less way in
to a process that holds backup credentials; the unit stays without network listeners), the
supervisor keeps no thread (it is a single-threaded pre-fork arbiter), and what the metrics
report lives in the database, which the workers already read. An idle worker of each served
database rewrites `<metrics_textfile_dir>/pggit_<database>.prom` every `metrics_interval`
(prometheus_client's write_to_textfile: a temporary file renamed over the old one, so a scrape
never sees half a file). A file that stops being rewritten is itself visible:
`pggit_metrics_written_timestamp_seconds` (and node_exporter's node_textfile_mtime_seconds).

Names follow Prometheus conventions (base units, `_timestamp_seconds`), with the labels existing
pgBackRest dashboards use (`stanza`, `backup_type`, `repo_key`). A target that never had a
success has no `last_success` sample (so `absent()` and `unless` alerts work), never a 0;
`pggit_target_info` lists every configured target, backed up or not.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from . import __version__
from .config import Config
from .config.model import database_name
from .log import fields
from .metrics_snapshot import Snapshot
from .queue import Queue
from .scheduler import next_fire
from .status_targets import watched_targets

log = logging.getLogger("pggit.metrics")

UTC = timezone.utc


def _target_labels(target: Mapping[str, Any]) -> dict[str, str]:
    """tool, target (the stanza, the server, or DATABASE[/SCHEMA] of a dump) and stanza."""
    tool = str(target.get("tool", ""))
    if tool in ("pg_dump", "pg_basebackup"):
        name = "/".join(str(target[k]) for k in ("database", "schema") if target.get(k))
    else:
        name = str(target.get("stanza") or target.get("server") or "")
    return {"tool": tool, "target": name, "stanza": str(target.get("stanza", ""))}


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def registry_of(config: Config, snapshot: Snapshot, now: datetime | None = None) -> CollectorRegistry:
    """The metrics of one database, from a snapshot (a pure function: tests parse its output)."""
    now = now or datetime.now(UTC)
    database = config.served()[0].name
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, ["database", *labels], registry=registry)

    info = gauge("pggit_build_info", "the running pggit-supervisor", ["version"])
    info.labels(database, __version__).set(1)
    gauge("pggit_metrics_written_timestamp_seconds", "when this file was written").labels(database).set(now.timestamp())

    target_info = gauge(
        "pggit_target_info", "a target the config schedules, retains or drills", ["tool", "target", "stanza"]
    )
    for target in _configured_targets(config):
        labels = _target_labels(target)
        target_info.labels(database, labels["tool"], labels["target"], labels["stanza"]).set(1)

    keys = ["tool", "target", "stanza", "backup_type", "repo_key"]
    last_success = gauge("pggit_backup_last_success_timestamp_seconds", "newest completed backup", keys)
    last_failure = gauge("pggit_backup_last_failure_timestamp_seconds", "newest failed backup", keys)
    newest_verified = gauge("pggit_backup_newest_verified_timestamp_seconds", "newest verified, unexpired backup", keys)
    duration = gauge("pggit_backup_last_duration_seconds", "run time of the newest completed backup", keys)
    size = gauge("pggit_backup_last_size_bytes", "size of the newest completed backup", keys)
    verified = gauge("pggit_backups_verified", "verified backups available (completed, not expired)", keys)
    runs = gauge(
        "pggit_backup_runs", "backups recorded, by result (jobs pruned later are not counted)", [*keys, "result"]
    )
    for row in snapshot.targets:
        labels = _target_labels(row["target"])
        values = [labels["tool"], labels["target"], labels["stanza"], row["backup_type"] or "", row["repo_key"] or ""]
        for metric, value in (
            (last_success, _ts(row["last_success_at"])),
            (last_failure, _ts(row["last_failure_at"])),
            (newest_verified, _ts(row["newest_verified_at"])),
            (duration, row["last_duration_seconds"]),
            (size, row["last_size_bytes"]),
        ):
            if value is not None:  # never a made-up 0
                metric.labels(database, *values).set(float(value))
        verified.labels(database, *values).set(row["verified_available"])
        for result in ("completed", "failed", "cancelled"):
            runs.labels(database, *values, result).set(row[result])

    jobs = gauge("pggit_jobs", "backup jobs by state", ["state"])
    for state, count in snapshot.jobs.items():
        jobs.labels(database, state).set(count)
    for name, doc, value in (
        (
            "pggit_oldest_ready_job_age_seconds",
            "how long the oldest ready job has waited",
            snapshot.oldest_ready_seconds,
        ),
        (
            "pggit_longest_running_job_seconds",
            "how long the longest running job has run",
            snapshot.longest_running_seconds,
        ),
    ):
        if value is not None:
            gauge(name, doc).labels(database).set(value)
    workers = gauge(
        "pggit_workers", "workers recorded in this queue, by state (dead: silent for worker_silence)", ["state"]
    )
    for state in ("alive", "dead", "stopped"):
        workers.labels(database, state).set(snapshot.workers.get(state, 0))
    gauge("pggit_unacknowledged_permanent_failures", "permanent failures not yet acknowledged").labels(database).set(
        snapshot.unacknowledged_failures
    )
    deliveries = gauge("pggit_notification_deliveries", "notification deliveries by state", ["state"])
    for state in ("pending", "sending", "delivered", "dead"):
        deliveries.labels(database, state).set(snapshot.notifications.get(state, 0))
    if snapshot.oldest_pending_notification_seconds is not None:
        gauge(
            "pggit_notification_oldest_pending_age_seconds", "how long the oldest pending notification has waited"
        ).labels(database).set(snapshot.oldest_pending_notification_seconds)
    retention = gauge("pggit_retention_jobs", "retention jobs by status", ["status"])
    for status, count in snapshot.retention_jobs.items():
        retention.labels(database, status).set(count)

    wal_age = gauge("pggit_wal_archive_age_seconds", "how far behind the WAL archive is", ["tool", "target", "stanza"])
    wal_checked = gauge(
        "pggit_wal_archive_checked_timestamp_seconds", "last archive reading", ["tool", "target", "stanza"]
    )
    for row in snapshot.archives:
        labels = _target_labels(row["target"])
        values = [labels["tool"], labels["target"], labels["stanza"]]
        if row["wal_age_seconds"] is not None:
            wal_age.labels(database, *values).set(float(row["wal_age_seconds"]))
        if row["checked_at"] is not None:
            wal_checked.labels(database, *values).set(row["checked_at"].timestamp())

    drill_ok = gauge("pggit_restore_drill_last_success_timestamp_seconds", "newest passed drill", ["tool", "target"])
    drill_time = gauge(
        "pggit_restore_drill_last_duration_seconds", "time to restore of the newest passed drill", ["tool", "target"]
    )
    for row in snapshot.drills:
        labels = _target_labels(row["target"])
        drill_ok.labels(database, labels["tool"], labels["target"]).set(row["restore_tested_at"].timestamp())
        if row["restore_seconds"] is not None:
            drill_time.labels(database, labels["tool"], labels["target"]).set(float(row["restore_seconds"]))

    fire = gauge("pggit_schedule_next_fire_timestamp_seconds", "next slot of a backup schedule", ["schedule"])
    for schedule in config.schedules:
        upcoming = next_fire(schedule, now)
        if upcoming is not None:
            fire.labels(database, schedule.name).set(upcoming.timestamp())
    slots = gauge("pggit_schedule_slots", "schedule slots recorded, by outcome", ["schedule", "outcome"])
    for name, outcomes in snapshot.slots.items():
        for outcome, count in outcomes.items():
            slots.labels(database, name, outcome).set(count)
    return registry


def _configured_targets(config: Config) -> list[dict[str, str]]:
    """Every target the config names (the ones `status` watches, and the drills'), a dump's with
    this database's name, as the SQL has it."""
    database = database_name(config.served()[0].dsn)
    watched = [w.target for w in watched_targets(config.schedules, config.retention, database)]
    found: dict[str, dict[str, str]] = {}
    for target in [*watched, *(dict(d.target) for d in config.drills)]:
        found.setdefault(json_key(target), dict(target))
    return [
        {**found[key], "database": database} if found[key]["tool"] in ("pg_dump", "pg_basebackup") else found[key]
        for key in sorted(found)
    ]


def json_key(target: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={target[k]}" for k in sorted(target) if k != "database")


@dataclass
class MetricsWriter:
    """One worker's share: rewrite the database's textfile when it is older than the interval
    (any idle worker of the database may: the newest write wins, each one whole)."""

    config: Config
    worker: str
    clock: Callable[[], float] = time.time
    next_look: float = 0.0

    @property
    def path(self) -> str | None:
        directory = self.config.metrics_textfile_dir
        return None if directory is None else os.path.join(directory, f"pggit_{self.config.served()[0].name}.prom")

    def tick(self, queue: Queue) -> bool:
        """True if it wrote; a database error propagates (the worker reconnects)."""
        path = self.path
        if path is None or time.monotonic() < self.next_look:
            return False
        self.next_look = time.monotonic() + min(10.0, self.config.metrics_interval)
        try:
            if self.clock() - os.stat(path).st_mtime < self.config.metrics_interval:
                return False
        except FileNotFoundError:
            pass
        registry = registry_of(self.config, queue.metrics_snapshot(float(self.config.worker_silence)))
        try:
            write_to_textfile(path, registry)
        except OSError as exc:
            log.warning(f"could not write the metrics file: {exc}" + fields(worker=self.worker, path=path))
            return False
        return True


__all__ = ["MetricsWriter", "Snapshot", "registry_of"]
