"""What every tool adapter shares: the interface, the records of a run (Invocation, Outcome,
Verification) and how an adapter runs a helper command under the job's limits. Adding a tool
is adding one module. The low-level helpers the adapters use live below them: files.py (paths,
checksums, tar), libpq.py (connection settings, long queries), tools/params.py (the spec)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from ..config import Config, ToolConfig
from ..errors import Stopped  # raised by Context.checkpoint; the worker imports it from here
from ..files import safe_component
from ..queue import ClaimedJob
from ..runner import RunResult, RunSpec, run_tool
from .params import job_timeout


@dataclass(frozen=True)
class Context:
    """What an adapter may use besides the job: the service config, its tool section, the time."""

    config: Config
    tool: ToolConfig
    now: datetime
    worker_id: str
    # the worker's lease renewal; every run of a job (the tool, its verification) and every long
    # piece of work of the adapter's own must call it (see `checkpoint`)
    tick: Callable[[], str | None] | None = None
    # tells the supervisor which process group a tool runs in (pgid 0: none now)
    on_start: Callable[[int, int], None] | None = None

    def checkpoint(self) -> None:
        """Renews the lease between chunks of long work; raises Stopped when told to stop."""
        if self.tick is not None and (reason := self.tick()) is not None:
            raise Stopped(reason)


@dataclass(frozen=True)
class Invocation:
    """A prepared run: the argv and its limits, plus the adapter's own notes for `collect`."""

    run: RunSpec
    notes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))


@dataclass(frozen=True)
class Outcome:
    """How a job ended. `facts` go to the backup row (sizes, checksum, location, metadata)."""

    ok: bool
    message: str
    retryable: bool = True
    facts: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def success(cls, message: str, **facts: Any) -> Outcome:
        return cls(True, message, False, facts)

    @classmethod
    def failure(cls, message: str, retryable: bool = True) -> Outcome:
        return cls(False, message, retryable)


@dataclass(frozen=True)
class Verification:
    """How a backup was checked before it counts, the same for every tool.

    `verified`: it passed `method` (pg_verifybackup, pg_restore, pgbackrest verify, ...).
    Not verified, `problem` says why; `fails_job` says whether that is damage (the job fails,
    a retry makes a new backup) or only that this backup cannot be checked here (it completes,
    recorded unverified). `details` is the tool's report, recorded with the backup."""

    verified: bool
    method: str
    problem: str | None = None
    fails_job: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def passed(cls, method: str, **details: Any) -> Verification:
        return cls(True, method, None, False, details)

    @classmethod
    def unverifiable(cls, why: str) -> Verification:
        return cls(False, "", why if why.startswith("not verified") else f"not verified: {why}", False)

    @classmethod
    def failed(cls, problem: str) -> Verification:
        return cls(False, "", problem, True)

    def failure(self) -> Outcome:
        return Outcome.failure(f"verification failed: {self.problem}")

    @property
    def summary(self) -> str:
        """'verified' or why not, for the job's message."""
        return "verified" if self.verified else str(self.problem)

    def facts(self) -> dict[str, Any]:
        """What every tool records in the backup's metadata: verified, verified_by (how) or
        verification (why not), and the tool's report as verification when there is one."""
        recorded: dict[str, Any] = {"verified": self.verified}
        if self.verified:
            recorded["verified_by"] = self.method
            if self.details:
                recorded["verification"] = dict(self.details)
        else:
            recorded["verification"] = self.problem
        return recorded


class Adapter(Protocol):
    name: str

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        """Build the argv from the job's spec and the tool config; a JobError if it can't run."""

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        """Interpret the run, verify what it produced, and say what to record."""

    def discard(self, invocation: Invocation) -> None:
        """Remove what a stopped or failed run left behind (partial files)."""


def tool_run(ctx: Context, job: ClaimedJob, argv: list[str], env: Mapping[str, str], cwd: str | None = None) -> RunSpec:
    return RunSpec(
        argv=tuple(argv),
        env=env,
        timeout=job_timeout(job, ctx.tool),
        run_as=ctx.tool.run_as,
        cwd=cwd,
        kill_grace=float(ctx.tool.kill_grace),
    )


def backup_stem(job: ClaimedJob, now: datetime) -> str:
    """File name stem of a backup: tool, branch, short commit, UTC time and job id, so that
    two backups started in the same second never collide. Every piece but the time comes
    from the database and is sanitised."""
    parts = (
        safe_component(job.tool, 40),
        safe_component(job.branch_name or "nobranch", 40),
        safe_component(job.commit_hash or "nocommit", 8),
        f"{now:%Y%m%dT%H%M%SZ}",
        safe_component(job.job_id, 8),
    )
    return "-".join(parts)


def failure_from(result: RunResult, what: str) -> str:
    """'pg_dump exit 1 after 0.3 s: <last stderr lines>'."""
    detail = result.stderr.text().strip() or result.stdout.text().strip()
    lines = detail.splitlines()[-5:]
    return f"{what} {result.summary()}" + (": " + " | ".join(lines) if lines else "")


def run_check(ctx: Context, job: ClaimedJob, argv: list[str], env: Mapping[str, str], **changes: Any) -> RunResult:
    """Runs a helper command of a job (pg_restore, pg_verifybackup, `pgbackrest info`, ...) as
    the tool's user, under the job's limits, renewing the lease and telling the supervisor its
    process group. `changes` adjust the RunSpec (e.g. a larger output_limit for JSON listings,
    a shorter timeout, a cwd)."""
    return run_spec(ctx, replace(tool_run(ctx, job, argv, env), **changes))


def run_spec(ctx: Context, spec: RunSpec) -> RunResult:
    """Runs one command of a job's as `run_check` does, from a RunSpec made elsewhere (a step of
    a restore plan)."""
    try:
        return run_tool(spec, on_tick=ctx.tick, on_start=ctx.on_start)
    finally:
        if ctx.on_start is not None:
            ctx.on_start(0, 0)  # that process group is gone: never kill it by a stale id
