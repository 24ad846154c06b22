"""What every tool adapter shares: the interface, the outcome records, and small helpers for
connection settings, output paths and checksums. Adding a tool is adding one module."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

from psycopg2.extensions import parse_dsn

from ..config import Config, ToolConfig
from ..queue import ClaimedJob
from ..runner import RunResult, RunSpec, run_tool

# libpq connection keywords and the environment variables that carry them to a tool, so that
# no password ever appears on a command line (visible in ps to every local user).
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "service": "PGSERVICE",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL", "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING", "application_name": "PGAPPNAME",
}


class InvalidJob(Exception):
    """The job cannot run as specified (parameters, paths, allowlist): retrying cannot help."""


class Stopped(Exception):
    """The worker's tick asked to stop (job cancelled, service stopping) during long work of
    the adapter's own (hashing, reading an archive): the reason is the tick's."""


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
    def success(cls, message: str, **facts: Any) -> "Outcome":
        return cls(True, message, False, facts)

    @classmethod
    def failure(cls, message: str, retryable: bool = True) -> "Outcome":
        return cls(False, message, retryable)


class Adapter(Protocol):
    name: str

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        """Build the argv from the job's spec and the tool config; raise InvalidJob if it can't run."""

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        """Interpret the run, verify what it produced, and say what to record."""

    def discard(self, invocation: Invocation) -> None:
        """Remove what a stopped or failed run left behind (partial files)."""


def libpq_env(dsn: str, dbname: str | None = None) -> dict[str, str]:
    """The service DSN as PG* variables for a tool (and PGDATABASE = dbname if given)."""
    env = {_LIBPQ_ENV[key]: value for key, value in parse_dsn(dsn).items() if key in _LIBPQ_ENV}
    if dbname is None:
        dbname = parse_dsn(dsn).get("dbname")
    if dbname:
        env["PGDATABASE"] = dbname
    return env


def job_timeout(job: ClaimedJob, tool: ToolConfig) -> float:
    """The job's own timeout_seconds, never above the tool's configured maximum."""
    requested = job.spec.get("timeout_seconds")
    return float(min(int(requested), tool.timeout)) if requested else float(tool.timeout)


def tool_run(ctx: Context, job: ClaimedJob, argv: list[str], env: Mapping[str, str],
             cwd: str | None = None) -> RunSpec:
    return RunSpec(argv=tuple(argv), env=env, timeout=job_timeout(job, ctx.tool), run_as=ctx.tool.run_as,
                   cwd=cwd, kill_grace=float(ctx.tool.kill_grace))


def backup_stem(job: ClaimedJob, now: datetime) -> str:
    """File name stem of a backup: tool, branch, short commit, UTC time and job id, so that
    two backups started in the same second never collide."""
    branch = re.sub(r"[^A-Za-z0-9_.-]", "_", job.branch_name or "nobranch")[:40]
    commit = (job.commit_hash or "nocommit")[:8]
    return f"{job.tool}-{branch}-{commit}-{now:%Y%m%dT%H%M%SZ}-{job.job_id[:8]}"


def partial_path(directory: str, job: ClaimedJob, suffix: str) -> str:
    """The temporary name a backup is written under: one per job, so that the retry of an
    attempt whose worker was killed mid-write finds and removes what that attempt left."""
    path = os.path.join(directory, f".pggit-{job.job_id}{suffix}.partial")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    return path


def allowed_output_dir(directory: str, tool: ToolConfig) -> str:
    """The real path of `directory` if it lies under one of the tool's allowed_output_dirs
    (symlinks resolved on both sides); otherwise InvalidJob."""
    real = os.path.realpath(directory)
    for allowed in tool.allowed_output_dirs:
        root = os.path.realpath(allowed)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return real
    shown = directory if real == directory else f"{directory} (resolves to {real})"
    raise InvalidJob(f"output directory {shown} is not under tools.{tool.name}.allowed_output_dirs "
                     f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})")


def prepare_output_dir(path: str, run_as: str | None) -> None:
    """Create the output directory if missing, owned by the tool's user when we are root."""
    if os.path.isdir(path):
        return
    os.makedirs(path, mode=0o750, exist_ok=True)
    give_to(path, run_as)


def give_to(path: str, user: str | None) -> None:
    """chown `path` to `user` and its primary group, when we are root and a user is named."""
    if user and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def sha256_of(path: str, ctx: Context | None = None) -> tuple[str, int, Mapping[str, str]]:
    """('sha256:HEX', total bytes, per-file digests). A directory's digest is over the sorted
    list of its files' names and digests, so any changed, added or removed file changes it.
    Hashing a large backup takes minutes: `ctx.checkpoint()` keeps the lease meanwhile."""
    if os.path.isfile(path):
        digest, size = _file_sha256(path, ctx)
        return f"sha256:{digest}", size, {}
    files: dict[str, str] = {}
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            digest, size = _file_sha256(full, ctx)
            files[os.path.relpath(full, path)] = digest
            total += size
    tree = hashlib.sha256("".join(f"{name}\0{files[name]}\n" for name in sorted(files)).encode())
    return f"sha256-tree:{tree.hexdigest()}", total, files


def tree_size(path: str) -> int:
    """Bytes of a file, or of every file below a directory (without following links)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.lstat(os.path.join(root, name)).st_size for root, _dirs, names in os.walk(path) for name in names)


def _file_sha256(path: str, ctx: Context | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if ctx is not None and size % (256 << 20) < (1 << 20):
                ctx.checkpoint()
    return digest.hexdigest(), size


def failure_from(result: RunResult, what: str) -> str:
    """'pg_dump exit 1 after 0.3 s: <last stderr lines>'."""
    detail = result.stderr.text().strip() or result.stdout.text().strip()
    lines = detail.splitlines()[-5:]
    return f"{what} {result.summary()}" + (": " + " | ".join(lines) if lines else "")


def run_check(ctx: Context, job: ClaimedJob, argv: list[str], env: Mapping[str, str],
              **changes: Any) -> RunResult:
    """Runs a helper command of a job (pg_restore, pg_verifybackup, `pgbackrest info`, ...) as
    the tool's user, under the job's limits, renewing the lease and telling the supervisor its
    process group. `changes` adjust the RunSpec (e.g. a larger output_limit for JSON listings,
    a shorter timeout, a cwd)."""
    spec = replace(tool_run(ctx, job, argv, env), **changes)
    try:
        return run_tool(spec, on_tick=ctx.tick, on_start=ctx.on_start)
    finally:
        if ctx.on_start is not None:
            ctx.on_start(0, 0)  # that process group is gone: never kill it by a stale id
