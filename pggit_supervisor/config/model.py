"""The checked settings as frozen records: what the supervisor, the workers and the tools read.

Defaults come from the declaration in settings.py, so a record built in code (a test, a
restore without a config file) gets the same values as a file that leaves the key out.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg2
from psycopg2.extensions import parse_dsn

from ..errors import PggitError
from ..retention import Retention
from ..scheduler import Schedule
from . import settings
from .settings import RETRY, ROOT, default_of

DEFAULT_WORKERS: int = default_of(ROOT, "workers")
DEFAULT_POLL_INTERVAL: float = default_of(ROOT, "poll_interval")
DEFAULT_HEARTBEAT_INTERVAL: float = default_of(ROOT, "heartbeat_interval")
DEFAULT_LEASE_SECONDS: int = default_of(ROOT, "lease_seconds")
DEFAULT_SHUTDOWN_TIMEOUT: int = default_of(ROOT, "shutdown_timeout")
DEFAULT_LOG_LEVEL: str = default_of(ROOT, "log_level")
DEFAULT_BASE_DELAY: int = default_of(RETRY, "base_delay")
DEFAULT_MAX_DELAY: int = default_of(RETRY, "max_delay")
DEFAULT_KILL_GRACE: int = default_of(ROOT, "kill_grace")
DEFAULT_WORKER_TIMEOUT: float = default_of(ROOT, "worker_timeout")
# the unprivileged OS user restore drills run their throwaway cluster as (see sandbox.py)
DEFAULT_DRILL_USER: str = default_of(ROOT, "drill_user")
DEFAULT_SCHEDULE_INTERVAL: float = default_of(ROOT, "schedule_interval")
DEFAULT_PRUNE_JOBS_AFTER: int = 30 * 86400  # prune_jobs_after as declared ("30d"), in seconds


class ConfigError(PggitError):
    """Every problem found, one `WHERE: key.path: what is wrong (allowed: ...)` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        return (type(self), (self.problems,))


@dataclass(frozen=True)
class RetryConfig:
    """Backoff for failed jobs: base_delay doubles per attempt, capped at max_delay."""

    base_delay: int = DEFAULT_BASE_DELAY
    max_delay: int = DEFAULT_MAX_DELAY


@dataclass(frozen=True)
class ToolConfig:
    """One backup tool as the operator allowed it; `default_tool` gives the per-tool defaults."""

    name: str
    path: str | None  # None for custom, which runs only allowed_commands
    run_as: str | None  # None: the service's own user
    timeout: int
    config: str | None  # pgbackrest / barman only
    allowed_output_dirs: tuple[str, ...]  # pg_dump / pg_basebackup only
    allowed_commands: tuple[str, ...]  # custom only
    kill_grace: int
    # custom only: the allowed commands whose entry says pass_credentials: true, the only ones
    # that get the DSN's password, PGPASSFILE, PGSERVICEFILE, ...
    pass_credentials: tuple[str, ...] = ()

    def executable(self) -> str:
        """`path` of a built-in tool, which always has one (only custom has none)."""
        if self.path is None:
            raise ValueError(f"tools.{self.name}.path is not set")
        return self.path


@dataclass(frozen=True, eq=False)
class Tools(Mapping[str, ToolConfig]):
    """Configured tools by name. A tuple inside, so a Config pickles and hashes (a
    MappingProxyType does neither, which would break a spawn-started worker)."""

    entries: tuple[ToolConfig, ...] = ()

    def __getitem__(self, name: str) -> ToolConfig:
        for tool in self.entries:
            if tool.name == name:
                return tool
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (tool.name for tool in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __hash__(self) -> int:
        return hash(frozenset(self.entries))


@dataclass(frozen=True)
class Config:
    """The checked settings of one supervisor and the workers it forks."""

    dsn: str = field(repr=False)  # may carry a password: keep it out of reprs and logs
    worker_id: str = field(default_factory=socket.gethostname)
    workers: int = DEFAULT_WORKERS
    poll_interval: float = DEFAULT_POLL_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT
    log_level: str = DEFAULT_LOG_LEVEL
    retry: RetryConfig = field(default_factory=RetryConfig)
    tools: Tools = field(default_factory=Tools)
    kill_grace: int = DEFAULT_KILL_GRACE
    # a worker silent this long (hung in a call) is killed and replaced; a running tool is not
    # silence: the worker keeps heartbeating to the supervisor while it waits for the tool
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    # restore drills run as this user; its existence is checked when a drill runs (a missing
    # user fails that drill, not the service)
    drill_user: str = DEFAULT_DRILL_USER
    # each idle worker records due schedule slots at most this often (scheduler.py)
    schedule_interval: float = DEFAULT_SCHEDULE_INTERVAL
    schedules: tuple[Schedule, ...] = ()
    retention: tuple[Retention, ...] = ()
    # jobs that ended for good longer ago than this (seconds) are pruned by `retention`
    prune_jobs_after: int = DEFAULT_PRUNE_JOBS_AFTER
    source: str = "<defaults>"


def default_tool(name: str, kill_grace: int = DEFAULT_KILL_GRACE) -> ToolConfig:
    """The settings a tool gets when its section is empty (custom then allows no command)."""
    section = settings.tool(name)
    keys = section.keys()
    return ToolConfig(
        name=name,
        path=default_of(section, "path") if "path" in keys else None,
        run_as=None,
        timeout=default_of(section, "timeout"),
        config=None,
        allowed_output_dirs=default_of(section, "allowed_output_dirs") if "allowed_output_dirs" in keys else (),
        allowed_commands=(),
        kill_grace=kill_grace,
    )


def config_summary(config: Config) -> str:
    """One log line; the DSN is shown without its password."""
    return (
        f"config={config.source} worker_id={config.worker_id} workers={config.workers} "
        f"db={redacted_dsn(config.dsn)} poll_interval={config.poll_interval:g}s "
        f"heartbeat_interval={config.heartbeat_interval:g}s "
        f"lease_seconds={config.lease_seconds}s shutdown_timeout={config.shutdown_timeout}s "
        f"kill_grace={config.kill_grace}s "
        f"retry={config.retry.base_delay}s..{config.retry.max_delay}s "
        f"log_level={config.log_level} tools={','.join(sorted(config.tools)) or '-'}"
    )


def redacted_dsn(dsn: str) -> str:
    """user@host:port/dbname, never the password; '[local]' for a Unix socket, as psql says."""
    try:
        parts = parse_dsn(dsn)
    except psycopg2.Error:
        return "(invalid dsn)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{user}{parts.get('host') or '[local]'}{port}/{parts.get('dbname', '')}"
