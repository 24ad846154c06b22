"""One worker process: claims one job at a time, runs its tool, reports the result.

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
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psutil
import psycopg2

from . import linux, webhooks
from .config import Config, ToolConfig, default_tool
from .log import fields
from .proctree import kill_tree
from .queue import ClaimedJob, Queue, connect
from .runner import RunAsError, RunnerError, RunResult, run_tool
from .scheduler import Scheduler
from .tools import ADAPTERS, Context, InvalidJob, Outcome, adapter_for
from .tools.base import Stopped

SHUTDOWN = "service stopping"
LOST_CLAIM = "job cancelled or no longer held by this worker"
MAX_CONNECT_DELAY = 30.0
# while shutting down, a result that cannot be delivered in this time is left to the lease
ABORT_DELIVERY_SECONDS = 5.0
# at most one claim per this many seconds however many ready NOTIFYs arrive (see wait_for_work)
NOTIFY_MIN_GAP = 0.5

log = logging.getLogger("pggit.worker")


class Worker:
    def __init__(self, config: Config, name: str, report_fd: int, release_predecessor: bool, parent_pid: int) -> None:
        self.config = config
        self.name = name
        self.report_fd = report_fd
        self.release_predecessor = release_predecessor
        self.parent_pid = parent_pid
        self.tools = sorted(tool for tool in config.tools if tool in ADAPTERS)
        if {"pg_dump", "pg_basebackup"} & set(config.tools):
            self.tools.append("restore_test")  # drills use those tools' sections
        self.queue: Queue | None = None  # over this worker's connection; None while it has none
        self.stopping = False
        self.aborting = False
        self.claim_lost = False  # set by the running job's heartbeat
        self.connect_failures = 0
        self.ever_connected = False
        self.next_connect = 0.0
        self.next_rescue = 0.0
        # issue 10: this worker's share of the schedules (scheduler.py); the database decides each slot
        self.scheduler = Scheduler(config.schedules, name, config.schedule_interval)

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

    def beat(self) -> None:
        if os.getppid() != self.parent_pid:
            self.aborting = True
        self.tell("alive")

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
                + fields(worker=self.name, retry_in=f"{delay:g}s", error=_one_line(exc))
            )
            return None
        if self.ever_connected:
            log.info(
                "reconnected to the queue database" + fields(worker=self.name, failed_attempts=self.connect_failures)
            )
        self.ever_connected = True
        self.connect_failures = 0
        return self.queue

    def lost_connection(self, exc: Exception) -> None:
        log.warning("database call failed" + fields(worker=self.name, error=_one_line(exc)))
        if self.queue is not None:
            try:
                self.queue.conn.close()
            except psycopg2.Error:
                pass
        self.queue = None

    def deliver(
        self, job: ClaimedJob, what: str, call: Callable[[Queue], Any], confirm: Callable[[Queue], bool]
    ) -> Any:
        """Runs `call` until the database answers: a result must not be dropped because the
        server restarted. If an earlier attempt may have committed unseen, `confirm` tells."""
        uncertain = False
        give_up = None
        while True:
            if self.aborting and give_up is None:
                give_up = time.monotonic() + ABORT_DELIVERY_SECONDS
            if give_up is not None and time.monotonic() > give_up:
                log.error(
                    f"could not record {what}: the database is unreachable and the service is "
                    "stopping; the job's lease will return it to the queue" + fields(job=job.job_id, worker=self.name)
                )
                return None
            queue = self.ensure_connected()
            if queue is not None:
                try:
                    if uncertain and confirm(queue):
                        return True
                    return call(queue)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    self.lost_connection(exc)
                    uncertain = True
                except psycopg2.Error as exc:  # the database refused the call itself: retrying cannot help
                    log.error(
                        f"could not record {what}: {_one_line(exc)}; the job's lease will return it "
                        "to the queue" + fields(job=job.job_id, worker=self.name)
                    )
                    return None
            self.beat()
            time.sleep(0.5)

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.install_signals()
        if os.getppid() != self.parent_pid:
            return 1
        log.info("worker started" + fields(worker=self.name, tools=",".join(self.tools) or "-"))
        while not self.done:
            self.beat()
            queue = self.ensure_connected()
            if queue is None:
                self.pause(1.0)
                continue
            try:
                if self.release_predecessor:
                    for job_id, state in queue.release_worker(
                        self.name, f"worker {self.name} died while running this job"
                    ):
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
                self.scheduler.tick_if_due(queue)  # issue 10: record due schedule slots while idle
                self.wait_for_work(queue)
            elif self.done:
                self.hand_back(job)  # told to stop while the claim was on its way
            else:
                self.run_job(job)
                self.end_leftovers(job)
        if self.queue is not None:
            self.queue.conn.close()
        log.info("worker stopped" + fields(worker=self.name))
        return 0

    def rescue_if_due(self, queue: Queue) -> None:
        if time.monotonic() < self.next_rescue:
            return
        self.next_rescue = time.monotonic() + min(self.config.lease_seconds / 2, 30.0)
        for job_id, worker, state in queue.rescue_expired():
            log.warning(
                "lease expired: job returned to the queue"
                + fields(job=job_id, worker=self.name, lost_by=worker, state=state)
            )

    def wait_for_work(self, queue: Queue) -> None:
        """Sleeps until a NOTIFY naming one of our tools or the poll interval, beating every second.

        Any login that can connect may NOTIFY the ready channel, so a notification is only a hint:
        all that arrive within NOTIFY_MIN_GAP of the claim that just found nothing make one
        wake-up, and a flood costs at most one cheap claim per NOTIFY_MIN_GAP."""
        now = time.monotonic()
        deadline, earliest = now + self.config.poll_interval, now + NOTIFY_MIN_GAP
        woken = False
        while not self.done:
            now = time.monotonic()
            wake_at = min(deadline, earliest) if woken else deadline
            if now >= wake_at:
                return
            self.beat()
            readable, _, _ = select.select([queue.conn], [], [], min(1.0, wake_at - now))
            if readable:
                try:
                    woken = queue.drain_notifications(self.tools) > 0 or woken
                except psycopg2.Error as exc:
                    self.lost_connection(exc)
                    return

    # -- one job ----------------------------------------------------------------------------

    def run_job(self, job: ClaimedJob) -> None:
        where = dict(job=job.job_id, worker=self.name)
        log.info(
            "job claimed"
            + fields(**where, tool=job.tool, attempt=f"{job.attempts}/{job.max_attempts}", backup=job.backup_name)
        )
        self.tell("busy", job.job_id, 0)
        ctx = Context(
            self.config,
            self.tool_section(job),
            datetime.now(timezone.utc),
            self.name,
            tick=self._ticker(job),
            on_start=lambda pid, pgid: self.tell("busy", job.job_id, pgid),
        )
        try:
            adapter = adapter_for(job.tool)
            invocation = adapter.prepare(job, ctx)
        except InvalidJob as exc:
            self.report(job, Outcome.failure(f"invalid job: {exc}", retryable=False), {})
            return
        except Exception as exc:  # a disk, database or adapter error: this attempt failed, the worker lives
            if self.aborting or self.claim_lost:
                self.stopped_early(job)
                return
            log.exception("preparing the job failed" + fields(**where))
            self.report(job, Outcome.failure(f"cannot prepare {job.tool}: {_one_line(exc)}"), {})
            return
        try:
            result = run_tool(
                invocation.run,
                on_tick=ctx.tick,
                tick_interval=min(1.0, self.config.heartbeat_interval),
                on_start=ctx.on_start,
            )
            self.tell("busy", job.job_id, 0)
        except RunnerError as exc:
            adapter.discard(invocation)
            self.report(job, Outcome.failure(str(exc), retryable=not isinstance(exc, RunAsError)), {})
            return
        if result.stopped_reason is not None:
            adapter.discard(invocation)
            self.stopped(job, result)
            return
        if result.timed_out:
            adapter.discard(invocation)
            outcome = Outcome.failure(f"timed out after {result.timeout:g} s (tool tree killed)")
        else:
            try:
                outcome = adapter.collect(job, invocation, result, ctx)
            except Stopped:
                adapter.discard(invocation)
                self.stopped_early(job)
                return
            except Exception as exc:  # a bug or a disk error while collecting: the job failed, the worker lives
                log.exception("collecting the result failed" + fields(**where))
                adapter.discard(invocation)
                outcome = Outcome.failure(f"collecting the result failed: {exc}")
        if (self.aborting or self.claim_lost) and not outcome.ok:
            # a verification cut short by a shutdown or a cancel says nothing about the backup
            self.stopped_early(job)
            return
        self.report(job, outcome, _result_record(result, self.name))

    def tool_section(self, job: ClaimedJob) -> ToolConfig:
        """The config section a job runs under; a restore drill uses its backup's tool's."""
        name = str(job.params.get("backup_tool")) if job.tool == "restore_test" else job.tool
        return self.config.tools.get(name) or default_tool(name, self.config.kill_grace)

    def _ticker(self, job: ClaimedJob) -> Callable[[], str | None]:
        next_heartbeat = time.monotonic() + self.config.heartbeat_interval
        self.claim_lost = False

        def tick() -> str | None:
            nonlocal next_heartbeat
            self.beat()
            if self.aborting:
                return SHUTDOWN
            if self.claim_lost:
                return LOST_CLAIM
            if time.monotonic() < next_heartbeat:
                return None
            next_heartbeat = time.monotonic() + self.config.heartbeat_interval
            queue = self.ensure_connected()
            if queue is None:
                return None  # keep the tool running; the result is delivered once the database is back
            try:
                if not queue.heartbeat(job, self.config.lease_seconds):
                    self.claim_lost = True
                    return LOST_CLAIM
            except psycopg2.Error as exc:
                self.lost_connection(exc)
            return None

        return tick

    def stopped(self, job: ClaimedJob, result: RunResult) -> None:
        log.warning(
            f"tool stopped: {result.stopped_reason}" + fields(job=job.job_id, worker=self.name, run=result.summary())
        )
        self.stopped_early(job)

    def stopped_early(self, job: ClaimedJob) -> None:
        """The job ended before a result: handed back when the service stops, else (cancelled,
        claim lost) nothing is reported and the job's target is freed."""
        if self.aborting:
            self.hand_back(job)
            return
        log.warning(
            "job stopped: cancelled or no longer held by this worker; nothing reported"
            + fields(job=job.job_id, worker=self.name)
        )
        self.deliver(job, "the cancelled job's release", lambda q: q.abandon(job), lambda q: True)
        self.tell("idle", "stopped")

    def end_leftovers(self, job: ClaimedJob) -> None:
        """Processes a tool left behind (re-parented to us, the subreaper) end with its job."""
        _reap_children()  # those that already exited
        for child in psutil.Process().children():
            report = kill_tree(child.pid, None, 0.0)
            log.warning(
                "ended a process the tool left behind"
                + fields(job=job.job_id, worker=self.name, pid=child.pid, result=report.summary())
            )
        _reap_children()

    def hand_back(self, job: ClaimedJob) -> None:
        released = self.deliver(
            job,
            "the job's release",
            lambda q: q.release(job, f"{SHUTDOWN}: handed back by {self.name}"),
            lambda q: q.outcome_of(job) == "queued",
        )
        log.info("job handed back to the queue" + fields(job=job.job_id, worker=self.name, released=bool(released)))
        self.tell("idle", "stopped")

    def report(self, job: ClaimedJob, outcome: Outcome, record: dict[str, Any]) -> None:
        where = dict(job=job.job_id, worker=self.name)
        retry = self.config.retry
        if outcome.ok:
            recorded = self.deliver(
                job,
                "the job's result",
                lambda q: q.finish(job, outcome.message, outcome.facts, record),
                lambda q: q.outcome_of(job) == "completed",
            )
            state = "completed" if recorded else None
        else:
            state = self.deliver(
                job,
                "the job's failure",
                lambda q: q.fail(job, outcome.message, outcome.retryable, retry.base_delay, retry.max_delay, record),
                lambda q: q.outcome_of(job) == "failed",
            )
            state = "failed" if state is True else state
        if state is None:
            log.warning(
                "result discarded: the claim was lost (cancelled, rescued or deleted)"
                + fields(**where, outcome=outcome.message)
            )
        elif outcome.ok:
            log.info("job completed" + fields(**where, result=outcome.message))
        else:
            log.warning("job failed" + fields(**where, state=state, error=outcome.message))
        self.tell("idle", "ok" if outcome.ok else "failed")
        notify = job.spec.get("notify", {})
        if state is not None and webhooks.should_notify(notify, outcome.ok, state == "permanently_failed"):
            webhooks.post(
                notify["webhook_url"],
                {
                    "job_id": job.job_id,
                    "backup_id": job.backup_id,
                    "backup_name": job.backup_name,
                    "tool": job.tool,
                    "state": state,
                    "message": outcome.message,
                    "commit_hash": job.commit_hash,
                    "branch": job.branch_name,
                    "worker": self.name,
                    "facts": dict(outcome.facts),
                },
                job.job_id,
                self.name,
            )


def _reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _result_record(result: RunResult, worker: str) -> dict[str, Any]:
    return {
        "worker": worker,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "duration_seconds": round(result.duration, 3),
        "peak_rss_bytes": result.peak_rss_bytes,
        "stdout_tail": result.stdout.text()[-2000:],
        "stderr_tail": result.stderr.text()[-4000:],
        "output_dropped_bytes": result.stdout.dropped + result.stderr.dropped,
    }


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
