"""What the schedule functions of schema/014 answer, as records: the scheduler reads them, the
`schedules` command prints them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ScheduleState:
    """pggit.touch_backup_schedule: where slot counting resumes, who disagrees, and whether that
    keeps this host from recording slots (blocked: another live host holds the established
    definition, the one that recorded the latest slot)."""

    registered_at: datetime
    last_slot: datetime | None
    fingerprint: str
    conflict_host: str | None
    conflict_fingerprint: str | None
    blocked: bool = False


@dataclass(frozen=True)
class SlotRecord:
    """pggit.record_backup_schedule_slot: the slot's one decision (fresh: ours, made just now).
    outcome None: not recorded, because conflict_host holds the established definition."""

    outcome: str | None
    reason: str | None
    backup_id: str | None
    recorded_by: str | None
    detail: str | None
    fresh: bool
    conflict_host: str | None


@dataclass(frozen=True)
class ScheduleStatus:
    """A row of the pggit.backup_schedule_status view."""

    schedule_name: str
    cron: str | None
    timezone: str
    tool: str | None
    fingerprint: str
    defined_by: str
    registered_at: datetime
    last_slot: datetime | None
    last_outcome: str | None
    last_reason: str | None
    last_detail: str | None
    last_backup_id: str | None
    last_job_state: str | None
    last_recorded_by: str | None
    conflicting_hosts: str | None
