"""Claims, results, leases, schedule and drill slots, notifications: the job path."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extras

from ..rows import one_row
from ..slots import ScheduleState, ScheduleStatus, SlotRecord
from .base import Calls
from .fitting import READY_CHANNEL, fit_facts, fit_result, fit_text, shell_command
from .records import ClaimedDelivery, ClaimedJob


class JobCalls(Calls):
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
