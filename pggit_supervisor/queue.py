"""Every SQL statement a worker runs. The queue's rules live in the SQL functions (schema/005,
009); this module only calls them, so a psql user and a worker always see the same behaviour."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2.extensions import connection

from . import __version__ as _VERSION
from .metrics_snapshot import Snapshot
from .retention import PendingRemoval, PlannedBackup, RetentionJobRow
from .rows import one_row
from .slots import ScheduleState, ScheduleStatus, SlotRecord
from .status_rows import PermanentFailure, QueueStatistics, RunningJob, TargetStatus, WorkerSeen

READY_CHANNEL = "pggit_backup_job_ready"

# No call a worker makes should take long; one that does is a hang, and the supervisor's
# watchdog would kill the whole worker. Fail the call instead and let the worker reconnect.
SESSION_OPTIONS = "-c statement_timeout=20s -c lock_timeout=10s -c idle_in_transaction_session_timeout=60s"

# What the queue functions accept (schema/009): a report over these limits is refused with 22023.
MAX_TEXT_BYTES = 64 * 1024
MAX_JSON_BYTES = 256 * 1024
# what pggit.record_job_command accepts (schema/013)
MAX_COMMAND_BYTES = 16 * 1024


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds: valid only while (job_id, claim_token, our login) still match in
    the database. claim_token is the claim's secret: it is never logged or shown."""

    job_id: str
    backup_id: str
    tool: str
    spec: Mapping[str, Any]
    command: str
    claim_token: str = field(repr=False)
    attempts: int
    max_attempts: int
    metadata: Mapping[str, Any]
    backup_name: str
    branch_name: str | None
    commit_hash: str | None
    database_name: str

    @property
    def params(self) -> Mapping[str, Any]:
        return self.spec.get("params", {})


@dataclass(frozen=True)
class ClaimedMaintenance:
    """A retention job this worker holds (schema/017); claim_token is its secret, never shown."""

    job_id: str
    kind: str
    target: Mapping[str, str]
    reason: str
    attempts: int
    claim_token: str = field(repr=False)
    target_index: int = 0  # the claimed target's place in the targets the claim was given


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ServerWal:
    """The queue database's server as WAL freshness reads it (Queue.server_wal)."""

    system_id: str
    segment: str | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_at: str | None


@dataclass(frozen=True)
class ClaimedDelivery:
    """One notification this worker may post now (schema/018): valid while its lease runs and
    nobody claimed it again. claim_token is the claim's secret: never logged or shown."""

    delivery_id: str
    event_id: str
    endpoint: str  # webhook_url (the backup's own) or a notifications.endpoints name
    url: str = field(repr=False)  # may carry a token
    event: str
    payload: Mapping[str, Any]
    attempt: int
    claim_token: str = field(repr=False)


def connect(dsn: str, application_name: str) -> connection:
    """An autocommit connection with keepalives, so a vanished server is noticed in seconds."""
    conn = psycopg2.connect(
        dsn,
        application_name=application_name[:63],
        connect_timeout=10,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        options=SESSION_OPTIONS,
    )
    conn.autocommit = True
    return conn


class Queue:
    """The queue functions, over one worker's connection."""

    def __init__(self, conn: connection) -> None:
        self.conn = conn

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return one_row(cur)[0]

    def listen(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"LISTEN {READY_CHANNEL}")

    def claim(self, worker_id: str, tools: Sequence[str], lease_seconds: int) -> ClaimedJob | None:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT job_id::text, backup_id::text, tool, spec, command, claim_token, attempts,
                                  max_attempts, metadata, backup_name, branch_name, commit_hash, database_name
                             FROM pggit.claim_backup_job(%s, %s, %s)""",
                (worker_id, list(tools), int(lease_seconds)),
            )
            row = cur.fetchone()
        return ClaimedJob(**row) if row else None

    def heartbeat(self, job: ClaimedJob, lease_seconds: int) -> bool:
        return self._one(
            "SELECT pggit.heartbeat_backup_job(%s, %s, %s)", (job.job_id, job.claim_token, int(lease_seconds))
        )

    def record_command(self, job: ClaimedJob, argv: Sequence[str]) -> bool:
        """Records the argv the job's tool has just started, shell-quoted for reading (schema/013);
        False if the claim is no longer ours."""
        return self._one(
            "SELECT pggit.record_job_command(%s, %s, %s)", (job.job_id, job.claim_token, shell_command(argv))
        )

    def finish(self, job: ClaimedJob, output: str, facts: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
        return self._one(
            "SELECT pggit.finish_backup_job(%s, %s, %s, %s, %s)",
            (job.job_id, job.claim_token, fit_text(output), fit_facts(facts), fit_result(result)),
        )

    def fail(
        self, job: ClaimedJob, error: str, retryable: bool, base_delay: int, max_delay: int, result: Mapping[str, Any]
    ) -> str | None:
        """The job's new state ('will_retry' / 'permanently_failed'), or None if the claim was lost."""
        return self._one(
            "SELECT pggit.fail_claimed_backup_job(%s, %s, %s, %s, %s, %s, %s)",
            (
                job.job_id,
                job.claim_token,
                fit_text(error),
                retryable,
                int(base_delay),
                int(max_delay),
                fit_result(result),
            ),
        )

    def release(self, job: ClaimedJob, reason: str) -> bool:
        return self._one("SELECT pggit.release_backup_job(%s, %s, %s)", (job.job_id, job.claim_token, reason))

    def abandon(self, job: ClaimedJob) -> bool:
        """After a cancelled job's tool is stopped: free its target (the lease the cancel kept)."""
        return self._one("SELECT pggit.abandon_backup_job(%s, %s)", (job.job_id, job.claim_token))

    def outcome_of(self, job: ClaimedJob) -> str | None:
        """After a report whose commit we could not see (the connection broke): what the
        database holds for our claim, or None when the job is no longer ours."""
        return self._one("SELECT pggit.claimed_job_status(%s, %s)", (job.job_id, job.claim_token))

    def rescue_expired(self) -> list[tuple[str, str, str]]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT job_id::text, worker_id, job_state FROM pggit.rescue_expired_backup_jobs()")
            return cur.fetchall()

    def release_worker(self, worker_id: str, reason: str) -> list[tuple[str, str]]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT job_id::text, job_state FROM pggit.release_worker_backup_jobs(%s, %s)", (worker_id, reason)
            )
            return cur.fetchall()

    def drain_notifications(self, tools: Sequence[str]) -> int:
        """Reads every pending NOTIFY; returns how many name one of `tools` (others are noise)."""
        self.conn.poll()
        return self.queued_notifications(tools)

    def queued_notifications(self, tools: Sequence[str]) -> int:
        """Like drain_notifications, for those already read (with the answers of other queries),
        without reading the connection."""
        count = sum(1 for n in self.conn.notifies if n.payload in tools)
        self.conn.notifies.clear()
        return count

    # -- schedules (schema/014; issue 10) ------------------------------------------------------

    def touch_schedule(
        self, worker_id: str, schedule: str, definition: Mapping[str, Any], now: datetime
    ) -> ScheduleState:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "SELECT * FROM pggit.touch_backup_schedule(%s, %s, %s, %s)",
                (worker_id, schedule, json.dumps(definition), now),
            )
            row: Mapping[str, Any] = one_row(cur)  # type: ignore[assignment]  # a RealDictRow
            return ScheduleState(**row)

    def record_slot(
        self,
        worker_id: str,
        schedule: str,
        slot: datetime,
        definition: Mapping[str, Any],
        decision: str,
        detail: str | None,
    ) -> SlotRecord:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT outcome, reason, backup_id::text, recorded_by, detail, fresh, conflict_host
                     FROM pggit.record_backup_schedule_slot(%s, %s, %s, %s, %s, %s)""",
                (worker_id, schedule, slot, json.dumps(definition), decision, detail),
            )
            row: Mapping[str, Any] = one_row(cur)  # type: ignore[assignment]  # a RealDictRow
            return SlotRecord(**row)

    def schedule_status(self) -> list[ScheduleStatus]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT schedule_name, cron, timezone, tool, fingerprint, defined_by, registered_at, last_slot,
                          last_outcome, last_reason, last_detail, last_backup_id::text, last_job_state,
                          last_recorded_by, conflicting_hosts
                     FROM pggit.backup_schedule_status ORDER BY schedule_name"""
            )
            return [ScheduleStatus(**row) for row in cur.fetchall()]

    # -- retention (schema/015; issue 10) ------------------------------------------------------

    def retention_plan(self, target: str, rules: str) -> list[PlannedBackup]:
        """`target` and `rules` as JSON text (retention.plan_arguments)."""
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT backup_id::text, backup_name, status, completed_at, verified, pinned, expired, keep, reasons
                     FROM pggit.retention_plan(%s, %s)""",
                (target, rules),
            )
            return [PlannedBackup(**row) for row in cur.fetchall()]

    def expire_backups(self, worker_id: str, target: str, rules: str) -> list[tuple[str, str, list[str]]]:
        """Expiry step 1: (backup_id, backup_name, reasons) of each backup marked expired now."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT backup_id::text, backup_name, reasons FROM pggit.expire_backups(%s, %s, %s)",
                (worker_id, target, rules),
            )
            return cur.fetchall()

    # -- expiry step 2 and pruning (schema/016; issue 10) ---------------------------------------

    def lock_retention_target(self, target: str) -> bool:
        """Takes the target's remover lock for this session (False: another host holds it)."""
        return bool(self._one("SELECT pggit.lock_retention_target(%s)", (target,)))

    def unlock_retention_target(self, target: str) -> bool:
        return bool(self._one("SELECT pggit.unlock_retention_target(%s)", (target,)))

    def pending_removals(self, target: str, rules: str | None = None) -> list[PendingRemoval]:
        """The target's expired backups whose data is still there, oldest first; with this
        host's `rules`, one expired under rules that keep less is held (schema/016)."""
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT backup_id::text, backup_name, backup_tool, status, location, metadata,
                          removal_attempts, removal_error, held
                     FROM pggit.pending_backup_removals(%s, %s)""",
                (target, rules),
            )
            return [PendingRemoval(**row) for row in cur.fetchall()]

    def record_removal(self, worker_id: str, backup_id: str, error: str | None) -> str | None:
        """'removed' / 'failed' as recorded on the expiration, None if it was not pending."""
        return self._one(
            "SELECT pggit.record_backup_removal(%s, %s, %s)", (worker_id, backup_id, fit_text(error, 8192))
        )

    def prune_jobs(self, older_than_seconds: int) -> int | None:
        """Deletes jobs (backup and retention) that ended for good longer ago than that; their
        backups stay. None: another session is pruning right now."""
        pruned = self._one("SELECT pggit.prune_finished_jobs(%s)", (int(older_than_seconds),))
        return None if pruned is None else int(pruned)

    # -- retention jobs (schema/017; issue 10) ---------------------------------------------------

    def enqueue_retention(self, target: str, reason: str = "requested", slot: datetime | None = None) -> str | None:
        """The retention job that will run for `target` (JSON text): new, or the one already queued."""
        return self._one("SELECT pggit.enqueue_retention(%s, %s, %s)::text", (target, reason, slot))

    def enqueue_retention_after_backup(self, job: ClaimedJob, targets: str) -> str | None:
        """A retention run of the completed job's target, if it is one of `targets` (a JSON array)."""
        return self._one("SELECT pggit.enqueue_retention_after_backup(%s, %s)::text", (job.job_id, targets))

    def last_retention_job(self, target: str) -> RetentionJobRow | None:
        """The newest retention job of `target` (a target of this database: its database key,
        which the stored form always has for pg_dump and pg_basebackup, is not compared)."""
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT job_id::text, status, reason, enqueued_at, finished_at, worker_id, summary, error
                     FROM pggit.maintenance_job_queue
                    WHERE kind = 'retention' AND target - 'database' = %s::jsonb - 'database'
                    ORDER BY enqueued_at DESC, job_id LIMIT 1""",
                (target,),
            )
            row = cur.fetchone()
        return RetentionJobRow(**row) if row else None

    def record_drill_slot(
        self, worker_id: str, schedule: str, slot: datetime, target: str
    ) -> tuple[str, str | None, str | None, str | None, bool]:
        """(outcome, backup_id, job_id, detail, fresh) of a drill slot (schema/021); fresh: decided now."""
        with self.conn.cursor() as cur:
            cur.execute(
                """SELECT outcome, backup_id::text, job_id::text, detail, fresh
                     FROM pggit.record_drill_slot(%s, %s, %s, %s)""",
                (worker_id, schedule, slot, target),
            )
            outcome, backup_id, job_id, detail, fresh = one_row(cur)
        return outcome, backup_id, job_id, detail, bool(fresh)

    # -- metrics (schema/022; issue 11) -------------------------------------------------------------

    def metrics_snapshot(self, silence: float = 120.0) -> Snapshot:
        """Everything the metrics file shows, read in one snapshot (a repeatable-read transaction)."""
        self.conn.autocommit = False
        self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        try:
            with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("SELECT * FROM pggit.backup_target_summary")
                targets = cur.fetchall()
                cur.execute("SELECT job_state, count(*) AS n FROM pggit.backup_job_queue GROUP BY job_state")
                jobs = {row["job_state"]: row["n"] for row in cur.fetchall()}
                cur.execute(
                    """SELECT extract(epoch FROM now() - min(created_at) FILTER (WHERE job_state = 'ready')) AS oldest,
                              extract(epoch FROM now() - min(started_at) FILTER (WHERE job_state = 'in_progress'))
                                  AS longest
                         FROM pggit.backup_job_queue"""
                )
                ages: dict[str, Any] = cur.fetchone() or {}
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
                cur.execute("SELECT count(*) AS n FROM pggit.backup_permanent_failures WHERE NOT acknowledged")
                unacknowledged = (cur.fetchone() or {"n": 0})["n"]
                cur.execute(
                    """SELECT state, count(*) AS n,
                              extract(epoch FROM now() - min(created_at)) FILTER (WHERE state = 'pending') AS oldest
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
            _float(ages.get("oldest")),
            _float(ages.get("longest")),
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

    def claim_maintenance(self, worker_id: str, targets: str, lease_seconds: int) -> ClaimedMaintenance | None:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT job_id::text, kind, target, reason, attempts, claim_token, target_index
                     FROM pggit.claim_maintenance_job(%s, %s, %s)""",
                (worker_id, targets, int(lease_seconds)),
            )
            row = cur.fetchone()
        return ClaimedMaintenance(**row) if row else None

    def heartbeat_maintenance(self, job: ClaimedMaintenance, lease_seconds: int) -> bool:
        return bool(
            self._one(
                "SELECT pggit.heartbeat_maintenance_job(%s, %s, %s)", (job.job_id, job.claim_token, int(lease_seconds))
            )
        )

    def finish_maintenance(self, job: ClaimedMaintenance, summary: Mapping[str, Any], error: str | None) -> bool:
        return bool(
            self._one(
                "SELECT pggit.finish_maintenance_job(%s, %s, %s, %s)",
                (job.job_id, job.claim_token, fit_result(summary), fit_text(error)),
            )
        )

    def retention_target_holder(self, target: str) -> str | None:
        """Who holds the target's remover lock (login, pid, application_name), or None."""
        return self._one("SELECT pggit.retention_target_holder(%s)", (target,))

    def release_maintenance(self, job: ClaimedMaintenance, reason: str, delay_seconds: int = 0) -> bool:
        return bool(
            self._one(
                "SELECT pggit.release_maintenance_job(%s, %s, %s, %s)",
                (job.job_id, job.claim_token, reason, int(delay_seconds)),
            )
        )

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

    def _records(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()]

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
        return int(self._one("SELECT count(*) FROM pggit.backup_permanent_failures WHERE NOT acknowledged", ()))

    def target_status(self, target: Mapping[str, Any]) -> TargetStatus:
        row = self._records(
            """SELECT target, backups, verified_backups, newest_verified_id::text, newest_verified_name,
                      newest_verified_at, newest_verified_seconds, last_failure_job_id::text, last_failure_at,
                      last_failure_state, last_failure_error, last_drill_backup_id::text, last_drill_at,
                      last_drill_result
                 FROM pggit.backup_target_status(%s)""",
            (json.dumps(dict(target)),),
        )[0]
        return TargetStatus(**row)

    # -- notifications (schema/018; issue 11) -----------------------------------------------

    def register_endpoints(self, host: str, endpoints: Sequence[Mapping[str, Any]]) -> int:
        """This host's notifications.endpoints replace what it registered before."""
        return int(self._one("SELECT pggit.register_notification_endpoints(%s, %s)", (host, json.dumps(endpoints))))

    def claim_deliveries(
        self, worker_id: str, limit: int, lease_seconds: int, max_attempts: int
    ) -> list[ClaimedDelivery]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT delivery_id::text, event_id::text, endpoint, url, event, payload, attempt, claim_token
                     FROM pggit.claim_notification_deliveries(%s, %s, %s, %s)""",
                (worker_id, int(limit), int(lease_seconds), int(max_attempts)),
            )
            return [ClaimedDelivery(**row) for row in cur.fetchall()]

    def record_delivery(
        self, delivery: ClaimedDelivery, outcome: str, error: str | None, max_attempts: int, base: int, cap: int
    ) -> str | None:
        """delivered / retry / dead, or None when the claim was lost (it expired and was re-claimed)."""
        return self._one(
            "SELECT pggit.record_notification_delivery(%s, %s, %s, %s, %s, %s, %s)",
            (
                delivery.delivery_id,
                delivery.claim_token,
                outcome,
                fit_text(error, 8192),
                int(max_attempts),
                int(base),
                int(cap),
            ),
        )


def shell_command(argv: Sequence[str]) -> str:
    """The argv as one line a person can read and paste into a shell (NULs, which no argv can
    hold anyway, replaced as fit_text does). An argument holding a control character (a line
    break, a terminal escape: C0 or C1) is written with bash's ANSI-C quoting, $'a\\nb', so that
    what a DBA reads is one line and moves no cursor; pggit.record_job_command refuses them raw."""
    return " ".join(_ansi_c_quote(arg) if _CONTROL.search(arg) else shlex.quote(arg) for arg in argv).replace(
        "\x00", "\ufffd"
    )


_CONTROL = re.compile("[\x01-\x1f\x7f-\x9f]")


def _ansi_c_quote(arg: str) -> str:
    def one(char: str) -> str:
        if char in "\\'":
            return "\\" + char
        if _CONTROL.match(char):
            return f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}"
        return char

    return "$'" + "".join(one(char) for char in arg) + "'"


def fit_text(text: str | None, limit: int = MAX_TEXT_BYTES) -> str | None:
    """`text` cut to its last `limit` bytes of UTF-8 (the end of a tool's output says most), without
    NUL characters (PostgreSQL text cannot hold them; a tool may well print them)."""
    if text is None:
        return None
    text = text.replace("\x00", "\ufffd")
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    marker = "[...] "
    return marker + data[len(data) - limit + len(marker) :].decode("utf-8", errors="ignore")


def _without_nul(value: Any) -> Any:
    """The same JSON value with NUL characters replaced: jsonb refuses \\u0000."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(v) for v in value]
    return value


def fit_result(result: Mapping[str, Any]) -> str:
    """The result record as JSON; the output tails give way if it would exceed the limit."""
    encoded = json.dumps(_without_nul(result))
    if len(encoded.encode()) <= MAX_JSON_BYTES:
        return encoded
    trimmed = {k: v for k, v in _without_nul(result).items() if not k.endswith("_tail")}
    trimmed["tails_dropped"] = f"the result record exceeded {MAX_JSON_BYTES} bytes"
    return json.dumps(trimmed)


def fit_facts(facts: Mapping[str, Any]) -> str:
    """The backup's facts as JSON; its metadata gives way if it would exceed the limit (the sizes,
    checksum, location and verification still reach the backup row)."""
    encoded = json.dumps(_without_nul(facts))
    if len(encoded.encode()) <= MAX_JSON_BYTES:
        return encoded
    trimmed = _without_nul(facts)
    trimmed["metadata"] = {
        "metadata_dropped": f"{len(encoded.encode())} bytes of facts exceeded the {MAX_JSON_BYTES}-byte limit"
    }
    return json.dumps(trimmed)
