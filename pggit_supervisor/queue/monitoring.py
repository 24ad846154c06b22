"""What status, the metrics file and the archive readings read and record (schema/019-022)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extras

from .. import __version__ as _VERSION
from ..metrics_snapshot import Snapshot
from ..status_rows import PermanentFailure, QueueStatistics, RunningJob, TargetStatus, WorkerSeen
from .base import Calls
from .records import ServerWal, as_float


class MonitoringCalls(Calls):
    # -- metrics (schema/022; issue 11) -------------------------------------------------------------

    def metrics_snapshot(self, silence: float = 120.0) -> Snapshot:
        """Everything the metrics file shows, read in one snapshot (a repeatable-read transaction)."""
        self.conn.autocommit = False
        self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        try:
            with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("SELECT * FROM pggit.backup_target_summary")
                targets = cur.fetchall()
                # one pass over the jobs' state index (schema/025), not two over jobs joined to backups
                cur.execute(
                    """SELECT job_state, n, extract(epoch FROM now() - oldest_created_at) AS created_age,
                              extract(epoch FROM now() - oldest_started_at) AS started_age
                         FROM pggit.backup_job_state_counts"""
                )
                counted: dict[str, dict[str, Any]] = {row["job_state"]: row for row in cur.fetchall()}
                jobs = {state: row["n"] for state, row in counted.items()}
                ages: dict[str, Any] = {
                    "oldest": (counted.get("ready") or {}).get("created_age"),
                    "longest": (counted.get("in_progress") or {}).get("started_age"),
                }
                cur.execute("SELECT target, wal_age_seconds, checked_at FROM pggit.archive_freshness")
                archives = cur.fetchall()
                cur.execute(
                    """SELECT DISTINCT ON (target) target, restore_tested_at, restore_seconds
                         FROM pggit.restore_drill_status WHERE restore_test_result = 'passed'
                        ORDER BY target, restore_tested_at DESC"""
                )
                drills = cur.fetchall()
                cur.execute(
                    """SELECT schedule_name, coalesce(reason, outcome) AS outcome, count(*) AS n
                         FROM pggit.backup_schedule_slots GROUP BY 1, 2"""
                )
                slots: dict[str, dict[str, int]] = {}
                for row in cur.fetchall():
                    slots.setdefault(row["schedule_name"], {})[row["outcome"]] = row["n"]
                cur.execute("SELECT status, count(*) AS n FROM pggit.maintenance_job_queue GROUP BY status")
                retention = {row["status"]: row["n"] for row in cur.fetchall()}
                cur.execute(
                    """SELECT CASE WHEN stopped_at IS NOT NULL THEN 'stopped'
                                   WHEN silent_seconds > %s THEN 'dead' ELSE 'alive' END AS state, count(*) AS n
                         FROM pggit.backup_worker_status GROUP BY 1""",
                    (silence,),
                )
                workers = {row["state"]: row["n"] for row in cur.fetchall()}
                cur.execute("SELECT n FROM pggit.backup_unacknowledged_failure_count")
                unacknowledged = (cur.fetchone() or {"n": 0})["n"]
                cur.execute(
                    """SELECT state, count(*) AS n,
                              extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')) AS oldest
                         FROM pggit.notification_status GROUP BY state"""
                )
                found = cur.fetchall()
                notifications = {row["state"]: row["n"] for row in found}
                oldest_pending = next((float(r["oldest"]) for r in found if r["oldest"] is not None), None)
        finally:
            self.conn.rollback()
            self.conn.set_session(isolation_level="DEFAULT", readonly=False)
            self.conn.autocommit = True
        return Snapshot(
            targets,
            jobs,
            as_float(ages.get("oldest")),
            as_float(ages.get("longest")),
            archives,
            drills,
            slots,
            retention,
            workers,
            int(unacknowledged),
            notifications,
            oldest_pending,
        )

    # -- WAL archiving freshness (schema/020; issue 11) -----------------------------------------

    def claim_archive_check(self, worker_id: str, target: str, interval_seconds: int) -> bool:
        """True: this worker reads the target's archive now (no other does for the interval)."""
        return bool(
            self._one("SELECT pggit.claim_archive_check(%s, %s, %s)", (worker_id, target, int(interval_seconds)))
        )

    def record_archive_status(self, worker_id: str, target: str, reading: Mapping[str, Any]) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM pggit.record_archive_status(%s, %s, %s)", (worker_id, target, json.dumps(reading))
            )

    def server_wal(self) -> ServerWal:
        """The queue database's server: its system id, the segment it writes (None on a standby)
        and its archiver's failures (pg_stat_archiver)."""
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT c.system_identifier::text AS system_id,
                          CASE WHEN pg_is_in_recovery() THEN NULL
                               ELSE pg_walfile_name(pg_current_wal_lsn()) END AS segment,
                          a.failed_count, a.last_failed_wal, a.last_failed_time::text AS last_failed_at
                     FROM pg_control_system() c, pg_stat_archiver a"""
            )
            row = cur.fetchone()
        if row is None:
            raise LookupError("pg_stat_archiver returned no row")
        return ServerWal(**row)

    # -- status: workers seen, failures acknowledged, what monitoring reads (schema/019; issue 11)

    def record_worker(
        self, worker_id: str, machine: str, database: str, tools: Sequence[str], started_at: datetime, job: str | None
    ) -> None:
        """This process's row (the package's version, so `status` shows which release each runs)."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pggit.record_worker(%s, %s, %s, %s, %s, %s, %s, %s)",
                (worker_id, machine, os.getpid(), _VERSION, database, list(tools), started_at, job),
            )

    def record_worker_stopped(self, worker_id: str) -> bool:
        return bool(self._one("SELECT pggit.record_worker_stopped(%s)", (worker_id,)))

    def queue_statistics(self) -> QueueStatistics:
        return QueueStatistics(**self._records("SELECT * FROM pggit.backup_queue_statistics")[0])

    def running_jobs(self) -> list[RunningJob]:
        rows = self._records(
            """SELECT job_id::text, worker_id, tool, target, backup_name, started_at,
                      extract(epoch FROM now() - started_at)::float8 AS runtime_seconds
                 FROM pggit.backup_job_queue WHERE job_state = 'in_progress' ORDER BY started_at, job_id"""
        )
        return [RunningJob(**row) for row in rows]

    def workers_seen(self) -> list[WorkerSeen]:
        rows = self._records(
            """SELECT worker_id, host_name, machine, pid, version, database_name, tools, started_at, last_seen_at,
                      silent_seconds, current_job_id::text, stopped_at
                 FROM pggit.backup_worker_status ORDER BY worker_id"""
        )
        return [WorkerSeen(**row) for row in rows]

    def permanent_failures(self, limit: int) -> list[PermanentFailure]:
        """The unacknowledged ones, newest first (at most `limit`)."""
        rows = self._records(
            """SELECT job_id::text, backup_id::text, backup_name, tool, target, attempts, max_attempts, failed_at,
                      last_error, acknowledged, acknowledged_at, acknowledged_by, acknowledgement_note
                 FROM pggit.backup_permanent_failures WHERE NOT acknowledged
                ORDER BY failed_at DESC, job_id LIMIT %s""",
            (int(limit),),
        )
        return [PermanentFailure(**row) for row in rows]

    def notification_counts(self) -> dict[str, int]:
        """Deliveries by state (pending, sending, delivered, dead) of pggit.notification_status."""
        rows = self._records("SELECT state, count(*) AS n FROM pggit.notification_status GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}

    def archive_freshness(self) -> list[dict[str, Any]]:
        return self._records("SELECT target, wal_age_seconds, checked_at FROM pggit.archive_freshness")

    def last_passed_drill_seconds(self, target: str) -> float | None:
        """Seconds since the target's newest passed drill (its database key is this database)."""
        seconds = self._one(
            """SELECT extract(epoch FROM now() - max(restore_tested_at)) FROM pggit.restore_drill_status
                WHERE restore_test_result = 'passed' AND target - 'database' = %s::jsonb - 'database'""",
            (target,),
        )
        return None if seconds is None else float(seconds)

    def unacknowledged_failure_count(self) -> int:
        return int(self._one("SELECT n FROM pggit.backup_unacknowledged_failure_count", ()))

    def target_statuses(self, targets: Sequence[Mapping[str, Any]]) -> list[TargetStatus]:
        """Every target's status in one call (schema/023), in the order given: status --check
        with thousands of targets makes one round trip, not one per target."""
        rows = self._records(
            """SELECT target, backups, verified_backups, newest_verified_id::text, newest_verified_name,
                      newest_verified_at, newest_verified_seconds, last_failure_job_id::text, last_failure_at,
                      last_failure_state, last_failure_error, last_drill_backup_id::text, last_drill_at,
                      last_drill_result
                 FROM pggit.backup_target_statuses(%s)""",
            (json.dumps([dict(t) for t in targets]),),
        )
        return [TargetStatus(**row) for row in rows]
