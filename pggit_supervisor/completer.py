"""Delivers a job's ending to the database, and does what follows a finished job.

One place writes how a job ended (River's completer): the executor decides the ending, this
module records it through the guarded queue functions, retrying until the database answers (a
result must not be dropped because the server restarted), asking `outcome_of` when an earlier
attempt may have committed unseen, and giving up after ABORT_DELIVERY_SECONDS once the service
is stopping (the job's lease then returns it to the queue). Then it logs and tells the supervisor
the worker is idle. It posts nothing: a notification owed for the job was written in the same
transaction as its end (schema/018) and is delivered from the outbox by idle workers (outbox.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import psycopg2

from .config import RetryConfig
from .errors import one_line
from .executor import SHUTDOWN, Abandoned, Completed, Ending, Failed, HandedBack
from .log import fields
from .queue import ClaimedJob, Queue

# while shutting down, a result that cannot be delivered in this time is left to the lease
ABORT_DELIVERY_SECONDS = 5.0
_RETRY_PAUSE = 0.5

log = logging.getLogger("pggit.worker")
T = TypeVar("T")


class Link(Protocol):
    """The worker's side of the database connection, as the completer needs it."""

    name: str

    @property
    def aborting(self) -> bool:
        """The service is stopping fast (or the supervisor died)."""

    def ensure_connected(self) -> Queue | None:
        """The queue over a live connection, or None while the database cannot be reached."""

    def lost_connection(self, exc: Exception) -> None:
        """Closes the broken connection; the next ensure_connected reconnects."""

    def beat(self) -> None:
        """Tells the supervisor the worker is alive."""

    def tell(self, *words: Any) -> None:
        """One line to the supervisor."""


class Completer:
    def __init__(self, link: Link, retry: RetryConfig, retention_targets: str | None = None) -> None:
        self.link = link
        self.retry = retry
        # the targets this worker's config retains (a JSON array): a completed backup of one of
        # them queues its retention job (schema/017)
        self.retention_targets = retention_targets

    def complete(self, job: ClaimedJob, ending: Ending) -> None:
        """Records `ending` for `job`, then what follows it; never raises for the database."""
        match ending:
            case HandedBack():
                self._hand_back(job, ending)
            case Abandoned() if self.link.aborting:  # the service began stopping meanwhile
                self._hand_back(job, HandedBack(SHUTDOWN))
            case Abandoned():
                self._abandon(job)
            case Completed() | Failed():
                self._report(job, ending)

    def deliver(
        self, job: ClaimedJob, what: str, call: Callable[[Queue], T], confirm: Callable[[Queue], bool]
    ) -> T | bool | None:
        """Runs `call` until the database answers; if an earlier attempt may have committed
        unseen, `confirm` tells (True). None: not recorded (refused, or given up while stopping)."""
        uncertain = False
        give_up = None
        while True:
            if self.link.aborting and give_up is None:
                give_up = time.monotonic() + ABORT_DELIVERY_SECONDS
            if give_up is not None and time.monotonic() > give_up:
                log.error(
                    f"could not record {what}: the database is unreachable and the service is "
                    "stopping; the job's lease will return it to the queue" + self._where(job)
                )
                return None
            queue = self.link.ensure_connected()
            if queue is not None:
                try:
                    if uncertain and confirm(queue):
                        return True
                    return call(queue)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    self.link.lost_connection(exc)
                    uncertain = True
                except psycopg2.Error as exc:  # the database refused the call itself: retrying cannot help
                    log.error(
                        f"could not record {what}: {one_line(exc)}; the job's lease will return it "
                        "to the queue" + self._where(job)
                    )
                    return None
            self.link.beat()
            time.sleep(_RETRY_PAUSE)

    # -- the endings --------------------------------------------------------------------------

    def _hand_back(self, job: ClaimedJob, ending: HandedBack) -> None:
        released = self.deliver(
            job,
            "the job's release",
            lambda q: q.release(job, f"{ending.reason}: handed back by {self.link.name}"),
            lambda q: q.outcome_of(job) == "queued",
        )
        log.info("job handed back to the queue" + self._where(job) + fields(released=bool(released)))
        self.link.tell("idle", "stopped")

    def _abandon(self, job: ClaimedJob) -> None:
        log.warning("job stopped: cancelled or no longer held by this worker; nothing reported" + self._where(job))
        self.deliver(job, "the cancelled job's release", lambda q: q.abandon(job), lambda q: True)
        self.link.tell("idle", "stopped")

    def _report(self, job: ClaimedJob, ending: Completed | Failed) -> None:
        state: str | None
        if isinstance(ending, Completed):
            recorded = self.deliver(
                job,
                "the job's result",
                lambda q: q.finish(job, ending.message, ending.facts, ending.record),
                lambda q: q.outcome_of(job) == "completed",
            )
            state, message, ok = ("completed" if recorded else None), ending.message, True
        else:
            failure = ending.failure
            answer = self.deliver(
                job,
                "the job's failure",
                lambda q: q.fail(
                    job, failure.message, failure.retryable, self.retry.base_delay, self.retry.max_delay, ending.record
                ),
                lambda q: q.outcome_of(job) == "failed",
            )
            # confirmed after an unseen commit: failed, whether for good is not known here
            state, message, ok = ("failed" if answer is True else answer or None), failure.message, False
        if state is None:
            log.warning(
                "result discarded: the claim was lost (cancelled, rescued or deleted)"
                + self._where(job)
                + fields(outcome=message)
            )
        elif ok:
            log.info("job completed" + self._where(job) + fields(result=message))
        else:
            log.warning("job failed" + self._where(job) + fields(state=state, error=message))
        self.link.tell("idle", "ok" if ok else "failed")
        if state == "completed" and self.retention_targets:
            self._queue_retention(job)

    def _queue_retention(self, job: ClaimedJob) -> None:
        """One attempt: if it fails, the target's retention schedule queues the run instead."""
        assert self.retention_targets is not None
        queue = self.link.ensure_connected()
        if queue is None:
            return
        try:
            queued = queue.enqueue_retention_after_backup(job, self.retention_targets)
        except psycopg2.Error as exc:
            log.warning("could not queue the target's retention job: " + one_line(exc) + self._where(job))
            return
        if queued is not None:
            log.info("retention job queued after the backup" + self._where(job) + fields(retention_job=queued))

    def _where(self, job: ClaimedJob) -> str:
        return fields(job=job.job_id, worker=self.link.name)
