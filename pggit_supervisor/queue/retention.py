"""Retention: the plan, expiry and removal, retention jobs, pruning (schema/015-017)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extras

from ..retention import PendingRemoval, PlannedBackup, RetentionJobRow
from .base import Calls
from .fitting import fit_result, fit_text
from .records import ClaimedJob, ClaimedMaintenance


class RetentionCalls(Calls):
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
