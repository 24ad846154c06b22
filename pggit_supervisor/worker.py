"""One worker process: its loop and plumbing. It claims one job at a time, has the executor run
it and the completer record how it ended.

Forked by the supervisor. It has its own database connection, LISTENs for ready jobs and also
polls, renews its job's lease while the tool runs, and tells the supervisor through a pipe that
it is alive and which tool process group it is running (so a dead worker's tools can be killed).
Signal handlers only set flags: SIGTERM = finish the running job, then exit; SIGUSR1 = stop the
tool now and hand the job back (shutdown timeout, fast stop, or the supervisor died).
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import time
from collections.abc import Sequence
from typing import Any

import psutil
import psycopg2

from . import linux
from .archive_check import ArchiveChecks
from .completer import ABORT_DELIVERY_SECONDS, Completer
from .config import Config
from .drills import DrillTicker
from .errors import one_line
from .executor import LOST_CLAIM, SHUTDOWN, HandedBack, execute
from .log import fields
from .metrics import MetricsWriter
from .outbox import Deliveries
from .presence import Presence
from .proctree import kill_tree
from .queue import ClaimedJob, Queue, connect
from .retention_jobs import RetentionJobs
from .scheduler import Scheduler
from .tools import ADAPTERS

__all__ = ["ABORT_DELIVERY_SECONDS", "Worker"]

MAX_CONNECT_DELAY = 30.0
# after a NOTIFY that led to no job, at most one claim per this many seconds however many ready
# NOTIFYs arrive (see wait_for_work); a NOTIFY after a claim that was not prompted by one wakes at once
NOTIFY_MIN_GAP = 0.5

log = logging.getLogger("pggit.worker")


class Worker:
    def __init__(self, config: Config, name: str, report_fd: int, release_predecessor: bool, parent_pid: int) -> None:
        self.config = config
        self.name = name
        # the one database this worker serves (Config.for_database): it connects to no other
        self.database = config.served()[0].name
        self.report_fd = report_fd
        self.release_predecessor = release_predecessor
        self.parent_pid = parent_pid
        self.tools = sorted(tool for tool in config.tools if tool in ADAPTERS)
        if {"pg_dump", "pg_basebackup"} & set(config.tools):
            self.tools.append("restore_test")  # drills use those tools' sections
        self.queue: Queue | None = None  # over this worker's connection; None while it has none
        self.stopping = False
        self.aborting = False
        self.retention = RetentionJobs(config, self)
        self.archives = ArchiveChecks(config, self)  # issue 11: WAL archiving freshness
        self.drills = DrillTicker(config.drills, name, config.schedule_interval)  # issue 11: drill schedules
        self.metrics = MetricsWriter(config, name)  # issue 11: the metrics textfile
        self.completer = Completer(self, config.retry, self.retention.targets if config.retention else None)
        self.connect_failures = 0
        self.ever_connected = False
        self.next_connect = 0.0
        self.next_rescue = 0.0
        # issue 10: this worker's share of the schedules (scheduler.py); the database decides each slot
        self.scheduler = Scheduler(config.schedules, name, config.schedule_interval)
        # issue 11: this worker's row in pggit.backup_workers, refreshed from beat()
        self.presence = Presence(name, self.database, self.tools)
        # issue 11: this worker delivers the notification outbox in its idle time (outbox.py)
        self.deliveries = Deliveries(config.notifications, name, config.worker_id, self.beat)

    # -- process plumbing -------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "aborting", True))
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)  # the supervisor decides; a terminal's ^C hits us too
        # if the supervisor dies (even by SIGKILL) we are told, and stop like a fast shutdown
        linux.set_parent_death_signal(signal.SIGUSR1)
        # what a tool leaves running when it exits (a daemon it started) becomes ours, not the
        # supervisor's: we end it after the job, and no other worker's job is touched
        linux.set_child_subreaper()
        flags = fcntl.fcntl(self.report_fd, fcntl.F_GETFL)
        fcntl.fcntl(self.report_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def tell(self, *words: Any) -> None:
        """One line to the supervisor; dropped if the pipe is full (the next one will do)."""
        try:
            os.write(self.report_fd, (" ".join(str(w) for w in words) + "\n").encode())
        except BlockingIOError:
            pass
        except OSError:
            self.aborting = True  # the supervisor is gone

    def beat(self, record: bool = True) -> None:
        """Alive to the supervisor; and, when due and `record`, this worker's row (presence.py)."""
        if os.getppid() != self.parent_pid:
            self.aborting = True
        self.tell("alive")
        if record:
            self.presence.record_if_due(self.queue)

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (self.stopping or self.aborting) and (left := deadline - time.monotonic()) > 0:
            self.beat()
            time.sleep(min(1.0, left))

    @property
    def done(self) -> bool:
        return self.stopping or self.aborting

    # -- the database -----------------------------------------------------------------------

    def ensure_connected(self) -> Queue | None:
        """The queue over a live connection, or None while the database cannot be reached
        (the next attempt waits longer after each failure, up to MAX_CONNECT_DELAY)."""
        if self.queue is not None and not self.queue.conn.closed:
            return self.queue
        if time.monotonic() < self.next_connect:
            return None
        try:
            self.queue = Queue(connect(self.config.dsn, f"pggit-supervisor {self.name}"))
            self.queue.listen()
        except psycopg2.Error as exc:
            self.queue = None
            self.connect_failures += 1
            delay = min(2.0 ** (self.connect_failures - 1), MAX_CONNECT_DELAY)
            self.next_connect = time.monotonic() + delay
            log.warning(
                "cannot connect to the queue database"
                + fields(worker=self.name, retry_in=f"{delay:g}s", error=one_line(exc), database=self.database)
            )
            return None
        if self.ever_connected:
            log.info(
                "reconnected to the queue database"
                + fields(worker=self.name, failed_attempts=self.connect_failures, database=self.database)
            )
        self.ever_connected = True
        self.connect_failures = 0
        self.tell("connected")
        return self.queue

    def lost_connection(self, exc: Exception) -> None:
        log.warning("database call failed" + fields(worker=self.name, error=one_line(exc), database=self.database))
        if self.queue is not None:
            try:
                self.queue.conn.close()
            except psycopg2.Error:
                pass
        self.queue = None

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.install_signals()
        if os.getppid() != self.parent_pid:
            return 1
        log.info("worker started" + fields(worker=self.name, tools=",".join(self.tools) or "-", database=self.database))
        hinted = False  # the last wait was ended by a ready NOTIFY (wait_for_work's rate limit)
        while not self.done:
            # this claim was prompted by that hint, none after it is
            prompted, hinted = hinted, False
            # woken by a hint: the claim goes first, the row is refreshed at the next beat (a
            # round trip in front of the claim was most of a slow pickup, issue 12 figure 2)
            self.beat(record=not prompted)
            queue = self.ensure_connected()
            if queue is None:
                self.pause(1.0)
                continue
            try:
                if self.release_predecessor:
                    released = queue.release_worker(self.name, f"worker {self.name} died while running this job")
                    if released:
                        self.tell("rescued", len(released))
                    for job_id, state in released:
                        log.warning(
                            "returned a dead worker's job to the queue"
                            + fields(job=job_id, worker=self.name, state=state)
                        )
                    self.release_predecessor = False
                self.rescue_if_due(queue)
                job = queue.claim(self.name, self.tools, self.config.lease_seconds)
            except psycopg2.Error as exc:
                self.lost_connection(exc)
                # a claim may have committed with its reply lost: return what this id holds
                self.release_predecessor = True
                continue
            if job is None:
                try:
                    if self.retention.tick(queue):  # issue 10: a retention job ran; backups first again
                        continue
                    self.archives.tick(queue)
                    self.drills.tick_if_due(queue)
                    self.metrics.tick(queue)
                except psycopg2.Error as exc:
                    self.lost_connection(exc)
                    continue
                self.scheduler.tick_if_due(queue)  # issue 10: record due schedule slots while idle
                self.deliveries.tick_if_due(queue)  # issue 11: post due notifications while idle
                hinted = self.wait_for_work(queue, prompted)
            elif self.done:
                self.hand_back(job)  # told to stop while the claim was on its way
            else:
                self.run_job(job)
                self.end_leftovers(job)
        self.presence.stopped(self.queue)
        if self.queue is not None:
            self.queue.conn.close()
        log.info("worker stopped" + fields(worker=self.name, database=self.database))
        return 0

    def rescue_if_due(self, queue: Queue) -> None:
        if time.monotonic() < self.next_rescue:
            return
        self.next_rescue = time.monotonic() + min(self.config.lease_seconds / 2, 30.0)
        rescued = queue.rescue_expired()
        for job_id, worker, state in rescued:
            log.warning(
                "lease expired: job returned to the queue"
                + fields(job=job_id, worker=self.name, lost_by=worker, state=state)
            )
        if rescued:
            self.tell("rescued", len(rescued))  # counted in the supervisor's metrics

    def wait_for_work(self, queue: Queue, prompted: bool) -> bool:
        """Sleeps until a NOTIFY naming one of our tools or the poll interval, beating every second.

        Any login that can connect may NOTIFY the ready channel, so a notification is only a hint.
        The first one after a claim that was not itself prompted by a hint wakes the worker at once
        (pickup latency, issue 12 figure 2). Once a hint led to a claim that found nothing, all that
        arrive within NOTIFY_MIN_GAP of it make one wake-up: a flood costs one claim at once and
        then at most one cheap claim per NOTIFY_MIN_GAP. `prompted`: the claim that found
        nothing was itself prompted by a hint. Returns True when a hint ended the wait."""
        now = time.monotonic()
        deadline = now + self.config.poll_interval
        earliest = now + NOTIFY_MIN_GAP if prompted else now
        # one that arrived while the idle pass ran its own queries was read with their answers:
        # it is queued on the connection already, and select() would not see it
        woken = queue.queued_notifications(self.tools) > 0
        while not self.done:
            now = time.monotonic()
            wake_at = min(deadline, earliest) if woken else deadline
            if now >= wake_at:
                return woken and now < deadline
            self.beat()
            if queue.conn.closed:
                # a call of the idle pass (presence, schedules, notifications) met a broken
                # connection and psycopg2 closed it: select() on it would raise and crash the
                # worker (a crash loop, after a few PostgreSQL restarts); the loop reconnects
                return False
            # beat() may have recorded this worker (presence.py): a hint that came with that
            # answer is already read, and select() would not see it until the poll deadline
            if queue.queued_notifications(self.tools):
                woken = True
                continue
            readable, _, _ = select.select([queue.conn], [], [], min(1.0, wake_at - now))
            if readable:
                try:
                    woken = queue.drain_notifications(self.tools) > 0 or woken
                except psycopg2.Error as exc:
                    self.lost_connection(exc)
                    return False
        return False

    # -- one job ----------------------------------------------------------------------------

    def run_job(self, job: ClaimedJob) -> None:
        log.info(
            "job claimed"
            + fields(
                job=job.job_id,
                worker=self.name,
                tool=job.tool,
                attempt=f"{job.attempts}/{job.max_attempts}",
                backup=job.backup_name,
                database=self.database,
            )
        )
        self.tell("busy", job.job_id, 0)
        self.presence.running(job.job_id)
        ending = execute(job, self.config, self.name, _Control(self, job))
        self.completer.complete(job, ending)
        self.presence.running(None)

    def hand_back(self, job: ClaimedJob) -> None:
        self.completer.complete(job, HandedBack(SHUTDOWN))

    def end_leftovers(self, job: ClaimedJob) -> None:
        """Processes a tool left behind (re-parented to us, the subreaper) end with its job.

        Usually there are none, and waitpid says so: psutil's children() reads every process's
        /proc entry on the host, a few ms of CPU per job that issue 12's throughput figure showed."""
        if not _reap_children():  # those that already exited; False: no child of ours is left
            return
        for child in psutil.Process().children():
            report = kill_tree(child.pid, None, 0.0)
            log.warning(
                "ended a process the tool left behind"
                + fields(job=job.job_id, worker=self.name, pid=child.pid, result=report.summary())
            )
        _reap_children()


class _Control:
    """One job's link to its worker: the lease heartbeat, the stop flags, the supervisor's pipe,
    and the record of the command that ran (executor.JobControl)."""

    def __init__(self, worker: Worker, job: ClaimedJob) -> None:
        self.worker = worker
        self.job = job
        self.claim_lost = False
        self.next_heartbeat = time.monotonic() + worker.config.heartbeat_interval

    def interrupted(self) -> str | None:
        if self.worker.aborting:
            return SHUTDOWN
        return LOST_CLAIM if self.claim_lost else None

    def tick(self) -> str | None:
        worker = self.worker
        worker.beat()
        if (reason := self.interrupted()) is not None:
            return reason
        if time.monotonic() < self.next_heartbeat:
            return None
        self.next_heartbeat = time.monotonic() + worker.config.heartbeat_interval
        queue = worker.ensure_connected()
        if queue is None:
            return None  # keep the tool running; the result is delivered once the database is back
        try:
            if not queue.heartbeat(self.job, worker.config.lease_seconds):
                self.claim_lost = True
                return LOST_CLAIM
        except psycopg2.Error as exc:
            worker.lost_connection(exc)
        return None

    def tool_started(self, pgid: int) -> None:
        self.worker.tell("busy", self.job.job_id, pgid)

    def command_ran(self, argv: Sequence[str]) -> None:
        """One attempt, not retried: if the database cannot be reached now, the view keeps the
        requested command (the run record in the job's result still has the argv)."""
        queue = self.worker.ensure_connected()
        if queue is None:
            return
        try:
            if not queue.record_command(self.job, argv):
                self.claim_lost = True  # the next tick stops the tool
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.worker.lost_connection(exc)  # the next tick reconnects
        except psycopg2.Error as exc:  # refused (e.g. over the size limit): the job runs on
            log.warning(
                "could not record the command that runs"
                + fields(job=self.job.job_id, worker=self.worker.name, error=one_line(exc))
            )


def _reap_children() -> bool:
    """Reaps the children that have exited; True if a live one is left."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return True
        except ChildProcessError:
            return False
