"""A worker's share of retention (issue 10): queue each target's scheduled retention runs, run
one queued retention job when idle, and prune finished jobs now and then.

A retention job (schema/017) asks "apply this target's rules now"; it is queued after each
successful backup of the target (completer.py), at each slot of the target's `schedule`, and by
`pggit-supervisor retention`. The worker that claims it applies its own config's rules for that
target (expiry.apply_retention: both steps, under the target's remover lock), so a host's rules
are never taken from another host's request. The database decides everything that several
hosts could race on: one job per slot, one queued job per target, one claim per job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import psycopg2
from croniter import croniter

from .config import Config
from .errors import JobError, one_line
from .expiry import TargetRun, apply_retention
from .log import fields
from .queue import MAX_JSON_BYTES, ClaimedMaintenance, Queue
from .retention import Retention
from .runner import RunResult, RunSpec, run_tool

log = logging.getLogger("pggit.retention")

UTC = timezone.utc
# a slot found later than this (every supervisor was down) is left: the next one comes, and
# every successful backup queues a run anyway
SLOT_DEADLINE = timedelta(days=1)
PRUNE_EVERY = 3600.0  # seconds between one worker's prunings of finished jobs
BUSY_DELAY = 30  # seconds a job waits when another host holds its target
SUMMARY_SAMPLE = 100  # entries of each list a shortened summary keeps


class Link(Protocol):
    """What a retention job needs of its worker (worker.Worker)."""

    name: str

    @property
    def aborting(self) -> bool: ...

    def beat(self) -> None: ...

    def tell(self, *words: Any) -> None: ...


def latest_slot(retention: Retention, now: datetime) -> datetime | None:
    """The newest slot of the target's schedule at or before `now` (UTC), within SLOT_DEADLINE.
    Wall times of the zone as scheduler.py reads them: a skipped time fires at the instant it
    would have shown with the offset before the change."""
    zone = ZoneInfo(retention.timezone)
    expression = retention.schedule.strip()
    expression = expression.lower() if expression.startswith("@") else expression
    wall = now.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
    walls = croniter(expression, wall)
    for _ in range(4):  # around a change of offset a wall time can map past `now`
        try:
            instant = walls.get_prev(datetime).replace(tzinfo=zone, fold=0).astimezone(UTC)
        except (ValueError, KeyError, ArithmeticError):
            # croniter accepts what never fires (30 February) and raises CroniterBadDateError (a
            # ValueError) looking for it: no slot, not a dead worker (as scheduler.next_fire)
            return None
        if instant <= now:
            return instant if now - instant <= SLOT_DEADLINE else None
    return None


@dataclass
class RetentionJobs:
    """One worker's retention: `tick(queue)` from its idle loop."""

    config: Config
    link: Link
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    run: Callable[..., RunResult] = run_tool
    next_slot_check: float = 0.0
    next_prune: float = field(default_factory=lambda: time.monotonic() + 60.0)
    queued_slots: dict[str, datetime] = field(default_factory=dict)

    @property
    def targets(self) -> str:
        """This worker's targets as the claim and the completer send them (a JSON array)."""
        return json.dumps([dict(each.target) for each in self.config.retention])

    def tick(self, queue: Queue) -> bool:
        """Queues due slots, prunes when due, runs one ready retention job; True if it ran one.
        A database error propagates (the worker reconnects); nothing else does."""
        if self.config.retention and time.monotonic() >= self.next_slot_check:
            self.next_slot_check = time.monotonic() + self.config.schedule_interval
            self.queue_slots(queue)
        if time.monotonic() >= self.next_prune:
            self.next_prune = time.monotonic() + PRUNE_EVERY
            self.prune(queue)
        if not self.config.retention:
            return False
        job = queue.claim_maintenance(self.link.name, self.targets, self.config.lease_seconds)
        if job is None:
            return False
        self.run_job(queue, job)
        return True

    def queue_slots(self, queue: Queue) -> None:
        now = self.clock()
        for retention in self.config.retention:
            slot = latest_slot(retention, now)
            key = retention.target_json()
            if slot is None or self.queued_slots.get(key) == slot:
                continue
            try:
                job_id = queue.enqueue_retention(key, "schedule", slot)
            except psycopg2.Error as exc:
                if queue.conn.closed:
                    raise
                # refused over a live connection (this host's clock ahead of the database's): the
                # next tick asks again; the connection and the rest of this tick are not at stake
                log.warning(
                    "retention slot refused"
                    + fields(worker=self.link.name, target=retention.name(), slot=slot.isoformat(), error=one_line(exc))
                )
                continue
            self.queued_slots[key] = slot
            log.debug("retention slot queued" + fields(job=job_id, worker=self.link.name, target=retention.name()))

    def prune(self, queue: Queue) -> None:
        pruned = queue.prune_jobs(self.config.prune_jobs_after)
        if pruned:
            log.info(
                "pruned jobs that ended long ago (their backups stay)"
                + fields(worker=self.link.name, jobs=pruned, older_than=f"{self.config.prune_jobs_after}s")
            )

    def run_job(self, queue: Queue, job: ClaimedMaintenance) -> None:
        retention = self.config.retention[job.target_index]
        where = fields(job=job.job_id, worker=self.link.name, target=retention.name(), reason=job.reason)
        log.info("retention job claimed" + where + fields(attempt=job.attempts))
        self.link.tell("busy", job.job_id, 0)
        ticker = _Ticker(self.link, queue, job, self.config)

        def run(spec: RunSpec) -> RunResult:
            return self.run(
                spec, on_tick=ticker.tick, on_start=lambda pid, pgid: self.link.tell("busy", job.job_id, pgid)
            )

        error: str | None = None
        done: TargetRun | None = None
        try:
            done = apply_retention(queue, self.config, retention, run, go_on=lambda: ticker.tick() is None)
        except JobError as exc:
            error = exc.message
        except psycopg2.Error as exc:
            if queue.conn.closed:
                self.link.tell("idle", "failed")
                raise  # the connection (and with it the target's lock) is gone; the lease brings the job back
            # the database refused a call over a live connection (also lock_timeout and
            # statement_timeout, which psycopg2 raises as OperationalError): the job records it
            error = f"refused by the database: {one_line(exc)}"
        except Exception as exc:  # a bug must not end the worker: the job records it
            log.exception("retention job failed unexpectedly" + where)
            error = f"unexpected error: {one_line(exc)}"
        if self.link.aborting or ticker.lost:
            queue.release_maintenance(job, f"handed back by {self.link.name}: the worker stops")
            log.info("retention job handed back" + where)
            self.link.tell("idle", "stopped")
        elif done is not None and done.busy:
            # any login may take an advisory lock: name the holder, which need not be a host of ours
            holder = queue.retention_target_holder(retention.target_json()) or "a session that has ended since"
            queue.release_maintenance(job, f"the target's remover lock is held by {holder}", BUSY_DELAY)
            log.info("retention job put back: the target's remover lock is taken" + where + fields(holder=holder))
            self.link.tell("idle", "stopped")
        else:
            self.finish(queue, job, done, error, where)

    def finish(
        self, queue: Queue, job: ClaimedMaintenance, done: TargetRun | None, error: str | None, where: str
    ) -> None:
        summary: dict[str, Any] = {}
        if done is not None:
            failed = [each for each in done.removals if each.error]
            summary = {
                "marked_expired": [backup_id for backup_id, _, _ in done.marked],
                "removed": [each.backup_id for each in done.removals if not each.error],
                "removal_failed": {each.backup_id: each.error for each in failed},
            }
            error = f"{len(failed)} removal(s) failed, retried by the next run" if failed else None
        if error is not None and not error.strip():
            error = "failed without a message"  # the database refuses an empty error (017)
        recorded = queue.finish_maintenance(job, fit_summary(summary), error)
        counts = fields(
            marked=len(summary.get("marked_expired", ())),
            removed=len(summary.get("removed", ())),
            failed=len(summary.get("removal_failed", {})),
            recorded=recorded,
        )
        if error is None:
            log.info("retention job completed" + where + counts)
        else:
            log.warning(f"retention job failed: {error}" + where + counts)
        self.link.tell("idle", "ok" if error is None else "failed")


def fit_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary, or past finish_maintenance_job's limit (a first run over a long history
    marks thousands of backups) a shortened one: each list keeps its first SUMMARY_SAMPLE
    entries (errors cut to 500 characters) and `counts` says how many there were, so the run is
    still recorded rather than refused."""
    if len(json.dumps(summary).encode()) <= MAX_JSON_BYTES:
        return summary
    counts: dict[str, int] = {}
    trimmed: dict[str, Any] = {"counts": counts, "shortened": f"the summary exceeded {MAX_JSON_BYTES} bytes"}
    for key, value in summary.items():
        if isinstance(value, list):
            counts[key], trimmed[key] = len(value), value[:SUMMARY_SAMPLE]
        elif isinstance(value, dict):
            counts[key] = len(value)
            trimmed[key] = {k: str(v)[-500:] for k, v in list(value.items())[:SUMMARY_SAMPLE]}
        else:
            trimmed[key] = value
    return trimmed


class _Ticker:
    """While a removal tool runs, and before each removal: beat the supervisor, renew the job's
    lease, stop on a fast stop or a lost claim (a reason returned)."""

    def __init__(self, link: Link, queue: Queue, job: ClaimedMaintenance, config: Config) -> None:
        self.link, self.queue, self.job, self.config = link, queue, job, config
        self.lost = False
        self.next_heartbeat = time.monotonic() + config.heartbeat_interval

    def tick(self) -> str | None:
        self.link.beat()
        if self.link.aborting:
            return "the service is stopping"
        if self.lost:
            return "the retention job is no longer this worker's"
        if time.monotonic() >= self.next_heartbeat:
            self.next_heartbeat = time.monotonic() + self.config.heartbeat_interval
            try:
                self.lost = not self.queue.heartbeat_maintenance(self.job, self.config.lease_seconds)
            except psycopg2.Error as exc:  # the removal goes on; what it did is recorded once the database is back
                log.warning("retention job heartbeat failed" + fields(job=self.job.job_id, error=one_line(exc)))
        return None


__all__ = ["RetentionJobs", "fit_summary", "latest_slot"]
