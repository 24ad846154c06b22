"""When a schedule's slots fall, and handing each due slot to the database, which decides it once.

The supervisors agree on nothing between themselves: each worker, when idle and at most every
schedule_interval seconds, works out from its config which slots of each schedule are due since
the last one recorded, and asks pggit.record_backup_schedule_slot to record them; the slot's
primary key makes the first caller's decision the only one. The clock is injected (tests move
it; nothing here sleeps), cron is croniter's (python3-croniter in Debian 12), zones zoneinfo's.

Slots are wall-clock times of the schedule's zone: a time the clock skips (spring forward) fires
at the instant it would have shown with the offset in force before the change (02:30 -> 03:30),
a time it shows twice (fall back) fires once, at its first occurrence; two wall times that land
on one instant are one slot. So no slot fires twice and none is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
from croniter import croniter

from .log import fields
from .queue import Queue
from .slots import ScheduleState, SlotRecord

log = logging.getLogger("pggit.scheduler")

UTC = timezone.utc
# one tick looks at this many slots of a schedule at most (a minutely cron after a week down);
# the next tick goes on from the last one recorded
MAX_SLOTS_PER_TICK = 500
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CATCH_UP = ("skip", "latest", "all")
OVERLAP = ("skip", "queue")


@dataclass(frozen=True)
class Schedule:
    """One schedule of the config, checked (config/validate.py): what the database is sent."""

    name: str
    cron: str
    tool: str
    args: Mapping[str, Any]
    timezone: str = "UTC"
    catch_up: str = "latest"
    starting_deadline: int = 6 * 3600  # seconds
    overlap: str = "skip"
    max_age: int | None = None  # seconds; read by monitoring
    enabled: bool = True
    database: str | None = None

    def __hash__(self) -> int:  # args is a dict: a Config must hash (a spawned worker's)
        return hash(json.dumps(self.definition(), sort_keys=True))

    def definition(self) -> dict[str, Any]:
        """What the fingerprint is taken of: every key that changes what or when it fires."""
        found: dict[str, Any] = {
            "cron": self.cron,
            "timezone": self.timezone,
            "tool": self.tool,
            "args": dict(self.args),
            "catch_up": self.catch_up,
            "starting_deadline": self.starting_deadline,
            "overlap": self.overlap,
            "enabled": self.enabled,
        }
        if self.max_age is not None:
            found["max_age"] = self.max_age
        if self.database is not None:
            found["database"] = self.database
        return found


def cron_problem(expression: Any) -> str | None:
    """Why `expression` is not a 5-field cron expression or macro, or None."""
    if not isinstance(expression, str) or not expression.strip():
        return "must be a cron expression"
    text = expression.strip()
    if text.startswith("@"):
        return None if text.lower() in CRON_MACROS else f"{text!r} is not a cron macro"
    if len(text.split()) != 5:
        return f"{text!r} must have 5 fields (minute hour day month weekday)"
    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression"
    return None


def fire_times(schedule: Schedule, after: datetime, until: datetime, limit: int = MAX_SLOTS_PER_TICK) -> list[datetime]:
    """The slots in (after, until], as UTC instants, oldest first, at most `limit`."""
    zone = ZoneInfo(schedule.timezone)
    # Wall clock of the zone, naive: croniter steps plain wall time, never an offset. A wall time
    # near a change can map up to an hour away from its neighbours, hence the margins; where the
    # zone's offset does not change around the window, wall and instant move together and no
    # margin is needed (issue 12 figure 6s: an every-minute schedule walked 360 walls of margin
    # on every tick, most of the scheduler's cost).
    margin = timedelta(0) if _steady(zone, after - _MARGIN, until + _MARGIN) else _MARGIN
    start = after.astimezone(zone).replace(tzinfo=None) - margin
    horizon = until
    slots: set[datetime] = set()
    for wall in _walls(schedule.cron, start):
        instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > horizon + margin:
            break
        if after < instant <= horizon and instant not in slots:
            slots.add(instant)
            if len(slots) >= limit:  # later walls may still map before the newest found
                horizon = sorted(slots)[limit - 1]
    return sorted(slots)[:limit]


_MARGIN = timedelta(hours=3)
# a steadiness check samples the window hourly: longer windows (catch-up over days, next_fire's
# years) keep the margin, which costs them little against their own length
_STEADY_CHECK_LIMIT = timedelta(days=2)


def _steady(zone: ZoneInfo, start: datetime, end: datetime) -> bool:
    """True when `zone`'s UTC offset is the same over [start, end]: checked every hour, and no
    zone changes its offset twice within an hour, so any change shows between two samples."""
    if end - start > _STEADY_CHECK_LIMIT:
        return False
    offset = start.astimezone(zone).utcoffset()
    at = start
    while at < end:
        at = min(at + timedelta(hours=1), end)
        if at.astimezone(zone).utcoffset() != offset:
            return False
    return True


def next_fire(schedule: Schedule, now: datetime) -> datetime | None:
    """The first slot after `now` (None if the expression never fires, such as 30 February)."""
    try:
        found = fire_times(schedule, now, now + timedelta(days=5 * 366), limit=1)
    except (ValueError, KeyError, ArithmeticError):  # croniter's CroniterBadDateError is a ValueError
        return None
    return found[0] if found else None


def _walls(cron: str, start: datetime) -> Iterator[datetime]:
    it = croniter(cron.strip().lower() if cron.strip().startswith("@") else cron, start)
    while True:
        yield it.get_next(datetime)


@dataclass(frozen=True)
class Decision:
    slot: datetime
    decision: str  # enqueue | missed | disabled
    detail: str | None = None


def plan(schedule: Schedule, slots: list[datetime], now: datetime, on_time: float) -> list[Decision]:
    """What the scheduler asks for each due slot. A slot later than `on_time` seconds was missed
    while no supervisor was up: past starting_deadline it is missed; within it, catch_up decides
    (all: each runs; latest: the newest runs; skip: none does). A slot on time always runs."""
    if not schedule.enabled:
        return [Decision(slot, "disabled") for slot in slots]
    decisions = []
    late_in_deadline = [s for s in slots if on_time < (now - s).total_seconds() <= schedule.starting_deadline]
    newest_late = late_in_deadline[-1] if late_in_deadline else None
    for slot in slots:
        late = (now - slot).total_seconds()
        if late <= on_time:
            decisions.append(Decision(slot, "enqueue"))
        elif late > schedule.starting_deadline:
            decisions.append(Decision(slot, "missed", f"older than starting_deadline ({schedule.starting_deadline}s)"))
        elif schedule.catch_up == "all" or (schedule.catch_up == "latest" and slot == newest_late):
            decisions.append(Decision(slot, "enqueue", f"caught up ({schedule.catch_up}), {int(late)}s late"))
        elif schedule.catch_up == "latest":
            decisions.append(Decision(slot, "missed", "catch_up latest: a later missed slot runs instead"))
        else:
            decisions.append(Decision(slot, "missed", "catch_up skip: missed while no supervisor was up"))
    return decisions


@dataclass(frozen=True)
class SlotResult:
    schedule: str
    slot: datetime
    record: SlotRecord | None  # None: refused for a conflicting definition
    conflict_host: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Scheduler:
    """One worker's scheduler: `tick_if_due` from its idle loop. Mutable only in its own
    next-try time; everything that matters is in the database."""

    schedules: tuple[Schedule, ...]
    worker_id: str
    interval: float
    clock: Callable[[], datetime] = _utc_now
    monotonic: Callable[[], float] = time.monotonic
    next_try: float = field(default=0.0)

    @property
    def on_time(self) -> float:
        """How late a slot may be recorded and still count as on time, not as caught up."""
        return max(60.0, 3 * self.interval)

    def tick_if_due(self, queue: Queue) -> list[SlotResult]:
        if not self.schedules or self.monotonic() < self.next_try:
            return []
        self.next_try = self.monotonic() + self.interval
        try:
            return self.tick(queue)
        except psycopg2.Error as exc:  # the worker's next call notices a broken connection
            log.warning("schedules not checked: " + _first_line(exc) + fields(worker=self.worker_id))
        except Exception:  # a bug here must not take the worker's own job (running backups) down with it
            log.exception("schedules not checked: unexpected error" + fields(worker=self.worker_id))
        return []

    def tick(self, queue: Queue) -> list[SlotResult]:
        """Records every due slot of every schedule; returns what the database said."""
        now = self.clock()
        results: list[SlotResult] = []
        for schedule in self.schedules:
            results.extend(self.tick_one(queue, schedule, now))
        return results

    def tick_one(self, queue: Queue, schedule: Schedule, now: datetime) -> list[SlotResult]:
        definition = schedule.definition()
        state = queue.touch_schedule(self.worker_id, schedule.name, definition, now)
        if state.conflict_host:
            _log_conflict(
                schedule,
                self.worker_id,
                state.fingerprint,
                state.conflict_host,
                state.conflict_fingerprint,
                state.blocked,
            )
            if state.blocked:
                return [SlotResult(schedule.name, now, None, state.conflict_host)]
        start = state.last_slot or state.registered_at
        results = []
        for decision in plan(schedule, fire_times(schedule, start, now), now, self.on_time):
            record = queue.record_slot(
                self.worker_id, schedule.name, decision.slot, definition, decision.decision, decision.detail
            )
            if record.conflict_host:
                _log_conflict(schedule, self.worker_id, state.fingerprint, record.conflict_host, None, True)
                results.append(SlotResult(schedule.name, decision.slot, None, record.conflict_host))
                break  # no later slot may be recorded before this one
            if record.fresh:
                _log_slot(schedule, decision.slot, record)
            results.append(SlotResult(schedule.name, decision.slot, record))
        return results


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _log_conflict(schedule: Schedule, me: str, mine: str, other: str, theirs: str | None, blocked: bool) -> None:
    """Both hosts log it, each naming the other; the one whose definition is not the established
    one (that recorded the latest slot) records no slot until the hosts agree."""
    follows = (
        f"this host records no slot of it while {other} carries the established definition (the one that "
        "recorded the latest slot)"
        if blocked
        else "its slots follow this host's definition, the established one, until every host carries the same"
    )
    log.error(
        f"schedule {schedule.name}: this host and {other} define it differently; {follows}"
        + fields(
            schedule=schedule.name,
            host=me.split("/")[0],
            fingerprint=mine[:12],
            other_host=other,
            other_fingerprint=(theirs or "?")[:12],
        )
    )


def _log_slot(schedule: Schedule, slot: datetime, record: SlotRecord) -> None:
    where = fields(
        schedule=schedule.name, slot=slot.isoformat(), backup=record.backup_id or "-", reason=record.reason or "-"
    )
    if record.outcome == "enqueued":
        log.info("scheduled backup enqueued" + where)
    elif record.reason == "refused":
        log.error(f"scheduled backup refused: {record.detail}" + where)
    else:
        log.info(f"scheduled slot skipped: {record.detail or record.reason}" + where)


__all__ = [
    "CATCH_UP",
    "OVERLAP",
    "Decision",
    "Schedule",
    "ScheduleState",
    "Scheduler",
    "SlotResult",
    "cron_problem",
    "fire_times",
    "next_fire",
    "plan",
]
