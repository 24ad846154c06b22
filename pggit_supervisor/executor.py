"""Runs one claimed job to exactly one ending: prepare, run the tool, collect, and say how it ended.

Shaped after River's job executor (one exit) and Procrastinate's `_process_job` (the ending is
decided once): `execute` never reports anything itself; the completer delivers the ending it
returns. The invocation's clean-up (`adapter.discard`) runs exactly once, in one context
manager, unless the job completed. Errors are read, not guessed from their type: a `JobError`
says whether a retry can help, a `psycopg2.Error` is the database's, and anything else is a
bug, logged with its traceback, that fails the attempt (retryable) and leaves the worker alive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import psycopg2

from .config import Config, ToolConfig, default_tool
from .errors import Failure, JobError, Stopped, one_line
from .log import fields
from .queue import ClaimedJob
from .runner import RunResult, run_tool
from .tools import Adapter, Context, Invocation, adapter_for

SHUTDOWN = "service stopping"
LOST_CLAIM = "job cancelled or no longer held by this worker"

log = logging.getLogger("pggit.worker")
# the log line of a bug, by the step it happened in
_UNEXPECTED = {
    "preparing": "preparing the job failed",
    "running": "running the tool failed",
    "collecting": "collecting the result failed",
}


# -- the endings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    """The tool ran and its output was verified: `facts` go to the backup row."""

    message: str
    facts: Mapping[str, Any]
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """This attempt failed; `failure.retryable` says whether the queue may try again."""

    failure: Failure
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Abandoned:
    """Stopped before a result because the job was cancelled or its claim lost: nothing is
    reported about it, only its target is freed."""

    reason: str


@dataclass(frozen=True)
class HandedBack:
    """Stopped because the service is stopping: the job goes back to the queue, no attempt spent."""

    reason: str


Ending = Completed | Failed | Abandoned | HandedBack


class JobControl(Protocol):
    """What the executor needs from its worker while a job runs."""

    def tick(self) -> str | None:
        """Beats, renews the lease when due; the reason to stop now, or None."""

    def interrupted(self) -> str | None:
        """SHUTDOWN or LOST_CLAIM if the job must stop, without asking the database."""

    def tool_started(self, pgid: int) -> None:
        """Tells the supervisor the process group of the running tool (0: none now)."""

    def command_ran(self, argv: Sequence[str]) -> None:
        """Records on the job the argv that has just started; never raises."""


# -- one job ----------------------------------------------------------------------------------


def execute(
    job: ClaimedJob,
    config: Config,
    worker_id: str,
    control: JobControl,
    find_adapter: Callable[[str], Adapter] = adapter_for,
) -> Ending:
    """Runs `job` and returns how it ended; every error of the job becomes that ending.
    `find_adapter` is the registry's lookup (a test may give its own adapter)."""
    where = dict(job=job.job_id, worker=worker_id)
    step = _Step()
    try:
        ending = _run_job(job, config, worker_id, control, step, find_adapter)
    except Stopped as stop:  # the tick said stop during the adapter's own long work
        ending = Abandoned(str(stop))
    except JobError as exc:
        ending = Failed(step.failure(job, exc.message, exc.retryable), step.record)
    except psycopg2.Error as exc:  # the adapter's own queries (snapshot, counts, drills)
        ending = Failed(step.failure(job, f"database error: {one_line(exc)}", True), step.record)
    except Exception as exc:  # a bug or a disk error: this attempt failed, the worker lives
        log.exception(_UNEXPECTED[step.name] + fields(**where))
        ending = Failed(step.failure(job, one_line(exc), True, unexpected=True), step.record)
    return _settle(ending, control.interrupted(), step)


@dataclass
class _Step:
    """Where the job is (for the failure's wording) and the run record once the tool ran."""

    name: str = "preparing"
    record: Mapping[str, Any] = field(default_factory=dict)

    def failure(self, job: ClaimedJob, message: str, retryable: bool, unexpected: bool = False) -> Failure:
        if self.name == "preparing":
            # a job that can never run here says so first; one that may run later says what failed
            prefix = "invalid job: " if not retryable else f"cannot prepare {job.tool}: "
            return Failure(prefix + message, retryable)
        if unexpected and self.name == "collecting":
            return Failure(f"collecting the result failed: {message}", retryable)
        return Failure(message, retryable)


def _run_job(
    job: ClaimedJob,
    config: Config,
    worker_id: str,
    control: JobControl,
    step: _Step,
    find_adapter: Callable[[str], Adapter],
) -> Ending:
    adapter = find_adapter(job.tool)  # first: an unknown tool has no config section either
    ctx = Context(
        config,
        tool_section(config, job),
        datetime.now(timezone.utc),
        worker_id,
        tick=control.tick,
        on_start=lambda _pid, pgid: control.tool_started(pgid),
    )
    invocation = adapter.prepare(job, ctx)
    with _cleanup(adapter, invocation, job, ctx.worker_id) as keep:
        step.name = "running"
        result = _run_tool(invocation, ctx, control)
        step.record = run_record(result, ctx.worker_id)
        step.name = "collecting"
        ending = _judge(job, adapter, invocation, result, ctx, step.record)
        keep(isinstance(ending, Completed))
    return ending


@contextmanager
def _cleanup(
    adapter: Adapter, invocation: Invocation, job: ClaimedJob, worker_id: str
) -> Iterator[Callable[[bool], None]]:
    """Discards what the run left behind, once, unless the caller said the job completed. A
    clean-up that fails is logged and changes nothing about the ending."""
    kept = False

    def keep(completed: bool) -> None:
        nonlocal kept
        kept = completed

    try:
        yield keep
    finally:
        if not kept:
            try:
                adapter.discard(invocation)
            except Exception:  # the ending is decided; a leftover is logged, not raised
                log.exception("cleaning up after the job failed" + fields(job=job.job_id, worker=worker_id))


def _run_tool(invocation: Invocation, ctx: Context, control: JobControl) -> RunResult:
    started = False

    def on_start(pid: int, pgid: int) -> None:
        nonlocal started
        control.tool_started(pgid)
        if not started:
            started = True
            control.command_ran(invocation.run.argv)

    try:
        return run_tool(
            invocation.run,
            on_tick=ctx.tick,
            tick_interval=min(1.0, ctx.config.heartbeat_interval),
            on_start=on_start,
        )
    finally:
        control.tool_started(0)  # that process group is gone: never kill it by a stale id


def _judge(
    job: ClaimedJob,
    adapter: Adapter,
    invocation: Invocation,
    result: RunResult,
    ctx: Context,
    record: Mapping[str, Any],
) -> Ending:
    """The ending of a run that finished one way or another."""
    if result.stopped_reason is not None:
        log.warning(
            f"tool stopped: {result.stopped_reason}"
            + fields(job=job.job_id, worker=ctx.worker_id, run=result.summary())
        )
        return Abandoned(result.stopped_reason)
    if result.timed_out:
        return Failed(Failure(f"timed out after {result.timeout:g} s (tool tree killed)", True), record)
    outcome = adapter.collect(job, invocation, result, ctx)
    if outcome.ok:
        return Completed(outcome.message, outcome.facts, record)
    return Failed(Failure(outcome.message, outcome.retryable), record)


def _settle(ending: Ending, interrupted: str | None, step: _Step) -> Ending:
    """A job that did not complete while the service stops is handed back; while it is
    cancelled or its claim lost, abandoned: a verification cut short says nothing about the
    backup. A job found invalid before it ran stays failed: no later attempt can change that."""
    if isinstance(ending, Completed):
        return ending
    if isinstance(ending, Failed) and step.name == "preparing" and not ending.failure.retryable:
        return ending
    if interrupted == SHUTDOWN or isinstance(ending, HandedBack):
        return HandedBack(SHUTDOWN)
    if interrupted is not None:
        return Abandoned(interrupted)
    return ending


def tool_section(config: Config, job: ClaimedJob) -> ToolConfig:
    """The config section a job runs under; a restore drill uses its backup's tool's."""
    name = str(job.params.get("backup_tool")) if job.tool == "restore_test" else job.tool
    return config.tools.get(name) or default_tool(name, config.kill_grace)


def run_record(result: RunResult, worker: str) -> dict[str, Any]:
    """What the job's result column keeps about the run: the exact argv, how it ended, its output's tails."""
    return {
        "worker": worker,
        "argv": list(result.argv),
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "duration_seconds": round(result.duration, 3),
        "peak_rss_bytes": result.peak_rss_bytes,
        "stdout_tail": result.stdout.text()[-2000:],
        "stderr_tail": result.stderr.text()[-4000:],
        "output_dropped_bytes": result.stdout.dropped + result.stderr.dropped,
    }
