"""What `pggit-supervisor schedules` prints: each schedule of the config and of the database,
its latest slot and what became of it, and when it fires next (cron is read here, not in SQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from .scheduler import Schedule, next_fire
from .slots import ScheduleStatus

HEADER = ("SCHEDULE", "CRON", "TIMEZONE", "TOOL", "LAST SLOT (UTC)", "OUTCOME", "NEXT FIRE (UTC)")


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _outcome(status: ScheduleStatus | None) -> str:
    if status is None or status.last_outcome is None:
        return "no slot yet"
    if status.last_outcome == "enqueued":
        return f"enqueued ({status.last_job_state or 'job gone'})"
    return f"skipped: {status.last_reason}"


def rows(schedules: Sequence[Schedule], statuses: Sequence[ScheduleStatus], now: datetime) -> list[tuple[str, ...]]:
    """One row per schedule, the config's first (in its order), then those only the database knows."""
    by_name = {status.schedule_name: status for status in statuses}
    found: list[tuple[str, ...]] = []
    for schedule in schedules:
        status = by_name.pop(schedule.name, None)
        upcoming = next_fire(schedule, now) if schedule.enabled else None
        found.append(
            (
                schedule.name,
                schedule.cron,
                schedule.timezone,
                schedule.tool,
                _utc(status.last_slot) if status and status.last_slot else "-",
                _outcome(status),
                _utc(upcoming) if upcoming else ("disabled" if not schedule.enabled else "never"),
            )
        )
    for status in by_name.values():
        found.append(
            (
                status.schedule_name,
                status.cron or "?",
                status.timezone,
                status.tool or "?",
                _utc(status.last_slot) if status.last_slot else "-",
                _outcome(status),
                "not in this config",
            )
        )
    return found


def render(schedules: Sequence[Schedule], statuses: Sequence[ScheduleStatus], now: datetime) -> str:
    table = [HEADER, *rows(schedules, statuses, now)]
    widths = [max(len(row[column]) for row in table) for column in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
    for status in statuses:
        if status.conflicting_hosts:
            lines.append(
                f"error: schedule {status.schedule_name}: defined differently by {status.conflicting_hosts} "
                f"than by {status.defined_by} ({status.fingerprint}); no slot is recorded until they agree"
            )
        if status.last_reason == "refused" and status.last_detail:
            lines.append(f"error: schedule {status.schedule_name}: last slot refused: {status.last_detail}")
    return "\n".join(lines)
