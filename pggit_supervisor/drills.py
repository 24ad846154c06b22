"""Restore drills on a schedule (issue 11): `schedules:` entries with `drill: {every, target}`.

Each drill schedule fires every `every` seconds at slots aligned to multiples of `every` since
the epoch (UTC), so every host computes the same slots with no clock of its own to agree on; an
idle worker asks pggit.record_drill_slot (schema/021) for the latest one, which the database
decides once: the target's newest verified backup never drilled gets a drill, or the slot says
why not. A slot found more than one period late (every supervisor was down) is left: the next
one drills the then newest backup anyway.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .log import fields
from .queue import Queue

log = logging.getLogger("pggit.scheduler")

UTC = timezone.utc
DRILL_TOOLS = ("pg_dump", "pg_basebackup")


@dataclass(frozen=True)
class DrillSchedule:
    name: str
    every: int  # seconds, a whole number of minutes
    target: Mapping[str, str]
    database: str | None = None
    max_drill_age: int | None = None  # seconds; read by monitoring
    enabled: bool = True

    def __hash__(self) -> int:  # target is a dict: a Config must hash
        return hash((self.name, self.every, json.dumps(dict(self.target), sort_keys=True), self.database))

    def target_json(self) -> str:
        return json.dumps(dict(self.target), sort_keys=True)


def latest_slot(every: int, now: datetime) -> datetime:
    """The newest multiple of `every` seconds since the epoch at or before `now`."""
    seconds = int(now.timestamp())
    return datetime.fromtimestamp(seconds - seconds % every, UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class DrillTicker:
    """One worker's drill schedules: `tick_if_due(queue)` from its idle loop."""

    drills: tuple[DrillSchedule, ...]
    worker_id: str
    interval: float
    clock: Callable[[], datetime] = _utc_now
    next_try: float = 0.0
    asked: dict[str, datetime] = field(default_factory=dict)

    def tick_if_due(self, queue: Queue) -> None:
        """A database error propagates (the worker reconnects)."""
        if not self.drills or time.monotonic() < self.next_try:
            return
        self.next_try = time.monotonic() + self.interval
        now = self.clock()
        for drill in self.drills:
            slot = latest_slot(drill.every, now)
            if not drill.enabled or self.asked.get(drill.name) == slot:
                continue
            if (now - slot).total_seconds() > drill.every:
                continue
            outcome, backup_id, job_id, detail, fresh = queue.record_drill_slot(
                self.worker_id, drill.name, slot, drill.target_json()
            )
            self.asked[drill.name] = slot
            if fresh:
                where = fields(schedule=drill.name, slot=slot.isoformat(), backup=backup_id, job=job_id)
                if outcome == "enqueued":
                    log.info("scheduled restore drill enqueued" + where)
                else:
                    log.info(f"scheduled restore drill skipped: {detail}" + where)


__all__ = ["DRILL_TOOLS", "DrillSchedule", "DrillTicker", "latest_slot"]
