"""What every tool adapter shares: the interface, the outcome records, and small helpers for
connection settings, output paths and checksums. Adding a tool is adding one module."""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, BinaryIO, Literal, Protocol, overload

from psycopg2.extensions import parse_dsn

from ..config import Config, ToolConfig
from ..errors import JobError, Stopped
from ..queue import ClaimedJob
from ..runner import RunResult, RunSpec, run_tool

# libpq connection keywords and the environment variables that carry them to a tool, so that
# no password ever appears on a command line (visible in ps to every local user).
_LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING",
    "application_name": "PGAPPNAME",
}
# What proves who the service is, as opposed to where it connects: a custom command gets these
# only when its allowed_commands entry says pass_credentials (a service file can hold a password).
CREDENTIAL_ENV = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSSLCERT", "PGSSLKEY")
# A file name component taken from the database: letters, digits and _ . - only
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_TIMEOUT_SECONDS = 604800  # as pggit._common_options allows


class InvalidJob(JobError):
    """Transitional: a JobError that is never retryable (being replaced by errors.invalid())."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


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


class Adapter(Protocol):
    name: str

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        """Build the argv from the job's spec and the tool config; raise InvalidJob if it can't run."""

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        """Interpret the run, verify what it produced, and say what to record."""

    def discard(self, invocation: Invocation) -> None:
        """Remove what a stopped or failed run left behind (partial files)."""


def libpq_env(dsn: str, dbname: str | None = None, *, credentials: bool = True) -> dict[str, str]:
    """The service DSN as PG* variables for a tool (and PGDATABASE = dbname if given);
    credentials=False leaves out everything in CREDENTIAL_ENV."""
    env = {_LIBPQ_ENV[key]: value for key, value in parse_dsn(dsn).items() if key in _LIBPQ_ENV}
    if not credentials:
        env = {name: value for name, value in env.items() if name not in CREDENTIAL_ENV}
    if dbname is None:
        dbname = parse_dsn(dsn).get("dbname")
    if dbname:
        env["PGDATABASE"] = dbname
    return env


def job_timeout(job: ClaimedJob, tool: ToolConfig) -> float:
    """The job's own timeout_seconds, never above the tool's configured maximum. A spec is a
    row another login may have written: a value the SQL would have refused is InvalidJob."""
    requested = job.spec.get("timeout_seconds") if isinstance(job.spec, Mapping) else None
    if requested is None:
        return float(tool.timeout)
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= _MAX_TIMEOUT_SECONDS:
        raise InvalidJob(
            f"timeout_seconds {requested!r} is not allowed (allowed: an integer from 1 to {_MAX_TIMEOUT_SECONDS})"
        )
    return float(min(requested, tool.timeout))


# -- a job's parameters, re-checked: the spec is a row, and rows can be written by hand --------


def spec_params(job: ClaimedJob) -> Mapping[str, Any]:
    """The spec's params object; InvalidJob if the spec or its params are not JSON objects."""
    params = job.spec.get("params", {}) if isinstance(job.spec, Mapping) else None
    if not isinstance(params, Mapping):
        raise InvalidJob(f"the job's spec.params must be a JSON object, got {type(params).__name__}")
    return params


def param_choice(params: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = params.get(key, default)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidJob(f"parameter {key}: {value!r} is not allowed (allowed: {', '.join(allowed)})")
    return value


def param_int(params: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    """An optional integer parameter in [low, high]; a JSON integer only, as the SQL stores it."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJob(f"parameter {key}: {value!r} is not allowed (allowed: an integer from {low} to {high})")
    return value


def param_bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidJob(f"parameter {key}: {value!r} is not allowed (allowed: true, false)")
    return value


# a required parameter is never None: the overloads let the type checker know
@overload
def param_text(
    params: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, required: Literal[True] = True
) -> str: ...
@overload
def param_text(
    params: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, required: bool
) -> str | None: ...
def param_text(
    params: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, required: bool = True
) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidJob(f"parameter {key}: {value!r} is not allowed (allowed: {allowed})")
    return value


def param_dir(params: Mapping[str, Any], key: str = "output_dir") -> str:
    """An absolute directory as pggit._require_dir leaves it: normalised, no '..', no control
    characters. Whether it is allowed is the config's business (allowed_output_dir)."""
    value = params.get(key)
    allowed = "an absolute directory path without '..' or control characters"
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > 4096
        or ".." in value.split("/")
        or any(ord(char) < 32 or ord(char) == 127 for char in value)
    ):
        raise InvalidJob(f"parameter {key}: {value!r} is not allowed (allowed: {allowed})")
    return os.path.normpath(value)


# -- the vocabulary of a job's parameters: each adapter declares its values once, its parse
# uses the declaration, and tests/test_vocabulary.py checks the SQL against it -----------------

# a pgBackRest stanza or a Barman server: the tool's own argument (as pggit._require_name)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Choice:
    """A string parameter with a fixed set of values; `default` is what a spec without it means."""

    values: tuple[str, ...]
    default: str | None = None

    def parse(self, params: Mapping[str, Any], key: str) -> str:
        return param_choice(params, key, self.values, self.default)


@dataclass(frozen=True)
class IntRange:
    """An optional integer parameter from `low` to `high`."""

    low: int
    high: int

    def parse(self, params: Mapping[str, Any], key: str) -> int | None:
        return param_int(params, key, self.low, self.high)


Parameter = Choice | IntRange


def tool_run(ctx: Context, job: ClaimedJob, argv: list[str], env: Mapping[str, str], cwd: str | None = None) -> RunSpec:
    return RunSpec(
        argv=tuple(argv),
        env=env,
        timeout=job_timeout(job, ctx.tool),
        run_as=ctx.tool.run_as,
        cwd=cwd,
        kill_grace=float(ctx.tool.kill_grace),
    )


def safe_component(value: Any, limit: int) -> str:
    """A piece of a file name taken from the database (branch, commit, job id, ...): only
    letters, digits and _ . -, so no value can add a directory or climb out of one."""
    return _UNSAFE_NAME_CHARS.sub("_", str(value))[:limit]


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


def partial_path(directory: str, job: ClaimedJob, suffix: str) -> str:
    """The temporary name a backup is written under: one per job, so that the retry of an
    attempt whose worker was killed mid-write finds and removes what that attempt left.
    `directory` is a real path (allowed_output_dir); the leftover is removed relative to the
    directory opened without following any symlink."""
    name = f".pggit-{safe_component(job.job_id, 64)}{safe_component(suffix, 16)}.partial"
    fd = open_real_dir(directory)
    try:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        elif info is not None:
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    return os.path.join(directory, name)


def allowed_output_dir(directory: str, tool: ToolConfig) -> str:
    """The real path of `directory` if it lies under one of the tool's allowed_output_dirs
    (symlinks resolved on both sides); otherwise InvalidJob."""
    real = os.path.realpath(directory)
    for allowed in tool.allowed_output_dirs:
        root = os.path.realpath(allowed)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return real
    shown = directory if real == directory else f"{directory} (resolves to {real})"
    raise InvalidJob(
        f"output directory {shown} is not under tools.{tool.name}.allowed_output_dirs "
        f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})"
    )


def prepare_output_dir(path: str, tool: ToolConfig) -> None:
    """Create the checked output directory `path` (a real path from allowed_output_dir) and
    any missing parents below its allowed root, each owned by the tool's user when we are root.

    The tool's user owns directories on the way: between the check and this call it could swap
    one for a symlink, and root would create and chown a directory wherever it points. So the
    walk goes from / one opened directory at a time, never following a symlink (the checked
    path has none), and creates and chowns each new directory through its descriptor."""
    root = next(
        (
            real
            for real in map(os.path.realpath, tool.allowed_output_dirs)
            if path == real or path.startswith(real.rstrip("/") + "/")
        ),
        None,
    )
    if root is None:
        raise InvalidJob(
            f"output directory {path} is not under tools.{tool.name}.allowed_output_dirs "
            f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})"
        )
    may_create_from = len(_components(os.path.dirname(root)))
    os.close(open_real_dir(path, create_below=may_create_from, owner=tool.run_as))


def make_scratch_dir(parent: str, prefix: str, run_as: str | None) -> str:
    """A new directory with a random name under the real directory `parent`, made and given to
    `run_as` through descriptors, as prepare_output_dir does (tempfile.mkdtemp plus a chown by
    name would chown whatever a swapped-in symlink names)."""
    fd = open_real_dir(parent)
    try:
        for _attempt in range(100):
            name = f"{prefix}{secrets.token_hex(6)}"
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                continue
            os.close(_open_created(fd, name, run_as))
            return os.path.join(parent, name)
        raise FileExistsError(errno.EEXIST, f"no free scratch name under {parent}")
    finally:
        os.close(fd)


def open_real_dir(path: str, *, create_below: int | None = None, owner: str | None = None) -> int:
    """A descriptor of the directory `path`, opened from / one component at a time with
    O_NOFOLLOW: a symlink anywhere on the way is refused (InvalidJob), so what is opened is the
    path as checked. Components after the first `create_below` are made if missing, given to
    `owner`."""
    parts = _components(path)
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, name in enumerate(parts):
            try:
                next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if create_below is None or index < create_below:
                    raise
                try:
                    os.mkdir(name, 0o750, dir_fd=fd)
                    made_by = owner
                except FileExistsError:
                    made_by = None  # made meanwhile by someone else: opened, never chowned
                next_fd = _open_created(fd, name, made_by)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise InvalidJob(
                    f"{path}: {'/' + '/'.join(parts[: index + 1])} is not a directory "
                    "(a symlink or file put there after the path was checked?)"
                ) from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_created(dir_fd: int, name: str, owner: str | None) -> int:
    """Open the directory just made as `name` (refusing a symlink swapped in meanwhile) and
    chown that very directory, through its descriptor."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise InvalidJob(f"the directory {name} just created was replaced by a symlink or file") from None
    try:
        if owner and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(fd, entry.pw_uid, entry.pw_gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def give_to(path: str, user: str | None) -> None:
    """chown `path` to `user` and its primary group, when we are root and a user is named.
    A symlink at `path` is chowned itself, never what it points to."""
    if user and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


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


def open_regular(path: str) -> BinaryIO:
    """A regular file the tool's user wrote, opened for reading as root: a symlink (to
    /etc/shadow, /dev/zero, ...) or any other kind of file put in its place is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return os.fdopen(fd, "rb")


def _file_sha256(path: str, ctx: Context | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open_regular(path) as handle:
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


def run_check(ctx: Context, job: ClaimedJob, argv: list[str], env: Mapping[str, str], **changes: Any) -> RunResult:
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
