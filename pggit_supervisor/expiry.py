"""Retention of one target, both steps (issue 10): the backups no rule keeps are marked expired
(pggit.expire_backups, step 1), then the data of every expired backup still there is removed
by its tool's removal plan (step 2, tools/removing.py) and the outcome recorded on its
expiration (removed, or failed with the error: the next run tries it again). One host works on
a target at a time: the target's remover lock (schema/016) is held throughout, and a host that
finds it taken leaves the target to the holder. A backup row is never deleted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg2

from .config import Config, default_tool
from .errors import JobError
from .log import fields
from .queue import Queue
from .retention import PendingRemoval, Retention, plan_arguments
from .runner import RunResult, RunSpec, run_tool
from .tools import remover_for, run_removal
from .tools.restoring import Backup

log = logging.getLogger("pggit.retention")

Run = Callable[[RunSpec], RunResult]


@dataclass(frozen=True)
class Removed:
    """One removal attempt: `error` None when the data is gone."""

    backup_id: str
    backup_name: str
    error: str | None


@dataclass(frozen=True)
class TargetRun:
    """What one retention run did to a target; `busy`: another host held it, nothing was done."""

    name: str
    busy: bool = False
    marked: Sequence[tuple[str, str, list[str]]] = ()
    removals: Sequence[Removed] = ()

    def render(self) -> str:
        if self.busy:
            return f"target {self.name}: another host is applying its retention now; left to it"
        failed = [each for each in self.removals if each.error]
        lines = [
            f"target {self.name}: {len(self.marked)} backup(s) marked expired, "
            f"{len(self.removals) - len(failed)} removed, {len(failed)} removal(s) failed (retried next run)"
        ]
        lines += [f"  expired {name} ({backup_id}): {', '.join(why)}" for backup_id, name, why in self.marked]
        lines += [f"  removed {each.backup_name} ({each.backup_id})" for each in self.removals if not each.error]
        lines += [f"  FAILED  {each.backup_name} ({each.backup_id}): {each.error}" for each in failed]
        return "\n".join(lines)


def apply_retention(
    queue: Queue, config: Config, retention: Retention, run: Run = run_tool, go_on: Callable[[], bool] = lambda: True
) -> TargetRun:
    """Both steps for one target, under its remover lock. `go_on` is asked before each removal
    (a retention job renews its lease there, and stops when its worker stops or loses the
    claim): the removals not tried are left pending for the next run, no attempt spent on them."""
    target, rules = plan_arguments(retention)
    if not queue.lock_retention_target(target):
        return TargetRun(retention.name(), busy=True)
    try:
        marked = queue.expire_backups(config.worker_id, target, rules)
        pending = queue.pending_removals(target, rules)
        expiring = frozenset(each.location for each in pending)
        removals = []
        for each in pending:
            if not go_on():
                break
            removals.append(remove_one(queue, config, each, run, expiring))
    finally:
        queue.unlock_retention_target(target)
    return TargetRun(retention.name(), marked=marked, removals=removals)


def remove_one(
    queue: Queue, config: Config, pending: PendingRemoval, run: Run = run_tool, expiring: frozenset[str] = frozenset()
) -> Removed:
    """Removes one expired backup's data and records how that went; a failure is an error value
    on the expiration, never raised (the other backups of the target still get their turn)."""
    backup = Backup(pending.backup_id, pending.backup_tool, pending.status, pending.location, pending.metadata)
    tool = config.tools.get(pending.backup_tool) or default_tool(pending.backup_tool, config.kill_grace)
    try:
        # only a completed backup's location names what it wrote: a job that failed or was
        # cancelled left its output directory there (and removed its own partial files)
        wrote = backup.status == "completed" and bool(backup.location)
        if pending.held:  # the database says removing it would remove another backup's data
            error: str | None = pending.held
        elif wrote:
            error = run_removal(remover_for(pending.backup_tool).removal_plan(backup, tool), run, expiring)
        else:
            error = None
    except JobError as exc:
        error = exc.message
    except OSError as exc:
        error = f"removing {pending.location}: {exc.strerror or exc}"
    where = fields(backup=pending.backup_id, tool=pending.backup_tool, attempts=pending.removal_attempts + 1)
    if error is None:
        log.info("expired backup removed" + where)
    else:
        log.warning(f"removing an expired backup failed: {error}" + where)
    try:
        queue.record_removal(config.worker_id, pending.backup_id, error)
    except psycopg2.Error:
        log.exception("recording the removal failed; the next run finds it again" + where)
        raise
    return Removed(pending.backup_id, pending.backup_name, error)


__all__ = ["Removed", "TargetRun", "apply_retention", "remove_one"]
