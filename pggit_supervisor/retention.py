"""Retention of one target as the config declares it, and what `retention --dry-run` prints.

The rules are evaluated in SQL (pggit.retention_plan, schema/015), so the dry run, the expiry
and a psql user see one answer; this module carries the config's side and the wording.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# tool -> (the keys a target may have, the one it must have)
TARGET_KEYS: Mapping[str, tuple[tuple[str, ...], str | None]] = {
    "pgbackrest": (("tool", "stanza"), "stanza"),
    "barman": (("tool", "server"), "server"),
    "pg_dump": (("tool", "database", "schema"), None),
    "pg_basebackup": (("tool", "database"), None),
}


@dataclass(frozen=True)
class Retention:
    """One retention entry of the config (0: that keep rule is off)."""

    target: Mapping[str, str]
    keep_last: int = 0
    keep_days: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    min_verified: int = 1
    grace: int = 86400  # seconds an unverified or failed backup is left before it goes
    # the database that decides over a stanza's or server's backups (None: the only one there is)
    database: str | None = None
    # when a retention job is queued besides after each successful backup (cron, in `timezone`)
    schedule: str = "@hourly"
    timezone: str = "UTC"

    def __hash__(self) -> int:  # target is a dict: a Config must hash
        return hash((self.target_json(), *self.rule_values(), self.database, self.schedule, self.timezone))

    def target_json(self) -> str:
        return json.dumps(dict(self.target), sort_keys=True)

    def rule_values(self) -> tuple[int, ...]:
        return (self.keep_last, self.keep_days, self.keep_daily, self.keep_weekly, self.keep_monthly, self.min_verified)

    def rules(self) -> dict[str, int]:
        """What pggit.retention_plan is given."""
        return {
            "keep_last": self.keep_last,
            "keep_days": self.keep_days,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
            "min_verified": self.min_verified,
            "grace_seconds": self.grace,
        }

    def name(self) -> str:
        return " ".join([self.target["tool"], *(f"{k}={v}" for k, v in sorted(self.target.items()) if k != "tool")])


@dataclass(frozen=True)
class PlannedBackup:
    """A row of pggit.retention_plan."""

    backup_id: str
    backup_name: str
    status: str
    completed_at: datetime | None
    verified: bool
    pinned: bool
    expired: bool
    keep: bool
    reasons: Sequence[str]


@dataclass(frozen=True)
class PendingRemoval:
    """A row of pggit.pending_backup_removals: an expired backup whose data is still there."""

    backup_id: str
    backup_name: str
    backup_tool: str
    status: str
    location: str
    metadata: Mapping[str, Any]
    removal_attempts: int
    removal_error: str | None
    # why it must not be removed now (its location is also a backup's that is not expired, or
    # pgBackRest would take a set that is not expired with it); recorded as the attempt's error
    held: str | None = None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if moment else "-"


def render_plan(retention: Retention, rows: Sequence[PlannedBackup]) -> str:
    """Per backup: keep (and which rule), go, or already expired."""
    rules = ", ".join(f"{k}={v}" for k, v in retention.rules().items() if v)
    going = [row for row in rows if not row.keep and not row.expired]
    lines = [f"target {retention.name()} ({rules}): keep {sum(row.keep for row in rows)}, would expire {len(going)}"]
    for row in rows:
        verdict = "expired" if row.expired else ("keep" if row.keep else "go")
        why = ", ".join(row.reasons) or "no rule keeps it"
        lines.append(f"  {verdict:<7} {_when(row.completed_at)}  {row.backup_id}  {row.backup_name}  {why}")
    return "\n".join(lines)


def render_pending(rows: Sequence[PendingRemoval]) -> str:
    """The expired backups whose data is still there: never tried yet, or failed (and why)."""
    lines = [f"  expired, data not removed yet: {len(rows)}"]
    for row in rows:
        failed = f"removal failed {row.removal_attempts}x: {row.removal_error}"
        state = failed if row.removal_error else "removal pending"
        if row.held:
            state += f" ({row.held})"
        lines.append(f"  pending {row.backup_id}  {row.backup_name}  {state}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RetentionJobRow:
    """The newest retention job of a target (pggit.maintenance_job_queue)."""

    job_id: str
    status: str
    reason: str
    enqueued_at: datetime
    finished_at: datetime | None
    worker_id: str | None
    summary: Mapping[str, Any] | None
    error: str | None


def render_last_job(row: RetentionJobRow | None) -> str:
    """What the workers last did (or are doing) with the target: a run that never happens shows."""
    if row is None:
        return "  last retention job: none yet (one is queued after each successful backup and at each slot)"
    summary = row.summary or {}
    done = (
        f", marked {len(summary.get('marked_expired', ()))}, removed {len(summary.get('removed', ()))}"
        if row.status in ("completed", "failed") and "removed" in summary
        else ""
    )
    when = _when(row.finished_at or row.enqueued_at)
    by = f" by {row.worker_id}" if row.worker_id else ""
    error = f": {row.error}" if row.error and row.status == "failed" else ""
    return f"  last retention job: {row.status} {when}{by} ({row.reason}{done}){error}  {row.job_id}"


def plan_arguments(retention: Retention) -> tuple[str, str]:
    return json.dumps(dict(retention.target)), json.dumps(retention.rules())


__all__ = [
    "TARGET_KEYS",
    "PendingRemoval",
    "PlannedBackup",
    "Retention",
    "RetentionJobRow",
    "plan_arguments",
    "render_last_job",
    "render_pending",
    "render_plan",
]
