"""The checked settings as frozen records: what the supervisor, the workers and the tools read.

Defaults come from the declaration in settings.py, so a record built in code (a test, a
restore without a config file) gets the same values as a file that leaves the key out.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import psycopg2
from psycopg2.extensions import parse_dsn

from ..drills import DrillSchedule
from ..errors import PggitError
from ..retention import Retention
from ..scheduler import Schedule
from . import settings
from .settings import NOTIFICATIONS, RETRY, ROOT, default_of

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
DEFAULT_ARCHIVE_CHECK_INTERVAL: int = 300  # archive_check_interval as declared ("5m"), in seconds
DEFAULT_PRUNE_JOBS_AFTER: int = 30 * 86400  # prune_jobs_after as declared ("30d"), in seconds
DEFAULT_WORKER_SILENCE: int = 120  # worker_silence as declared ("2m"), in seconds
DEFAULT_WARNING_FRACTION: float = default_of(ROOT, "warning_fraction")
DEFAULT_LOG_DESTINATION: str = default_of(ROOT, "log_destination")
DEFAULT_NOTIFY_ATTEMPTS: int = default_of(NOTIFICATIONS, "max_attempts")
DEFAULT_NOTIFY_BACKOFF_BASE: int = default_of(NOTIFICATIONS, "backoff_base")
DEFAULT_NOTIFY_BACKOFF_CAP: int = default_of(NOTIFICATIONS, "backoff_cap")
DEFAULT_NOTIFY_TIMEOUT: float = default_of(NOTIFICATIONS, "timeout")


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
class Endpoint:
    """notifications.endpoints[]: a URL that hears about `events` of every job."""

    name: str
    url: str = field(repr=False)  # may carry a token
    events: tuple[str, ...] = ("permanently_failed",)


@dataclass(frozen=True)
class NotificationConfig:
    """How idle workers deliver the outbox (outbox.py, webhooks.py). secret is the key itself,
    read from secret_file when that was given."""

    allowed_hosts: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    endpoints: tuple[Endpoint, ...] = ()
    max_attempts: int = DEFAULT_NOTIFY_ATTEMPTS
    backoff_base: int = DEFAULT_NOTIFY_BACKOFF_BASE
    backoff_cap: int = DEFAULT_NOTIFY_BACKOFF_CAP
    timeout: float = DEFAULT_NOTIFY_TIMEOUT


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
class Database:
    """One queue database the supervisor serves: its own pool of `workers`, each holding one
    connection to it (so it never has more than `workers` of ours), claiming only `tools`."""

    name: str
    dsn: str = field(repr=False)
    workers: int = DEFAULT_WORKERS
    tools: tuple[str, ...] = ()  # names among Config.tools; () means all of them
    # `dsn:` given alone: the worker ids, the schedules and the logs stay as they were
    single: bool = False


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
    drills: tuple[DrillSchedule, ...] = ()  # schedules with `drill:` (drills.py)
    retention: tuple[Retention, ...] = ()
    # the databases served; () for a Config built in code, which serves its dsn (served())
    databases: tuple[Database, ...] = ()
    # the directory of the metrics textfiles (None: none written) and how often (metrics.py)
    metrics_textfile_dir: str | None = None
    metrics_interval: int = 60
    # seconds between readings of each stanza's or server's WAL archive (archive_check.py)
    archive_check_interval: int = DEFAULT_ARCHIVE_CHECK_INTERVAL
    # jobs that ended for good longer ago than this (seconds) are pruned by the workers
    prune_jobs_after: int = DEFAULT_PRUNE_JOBS_AFTER
    # issue 11: `status` calls a worker silent this long (seconds) dead; --check warns at
    # warning_fraction of each limit; log_destination says where log lines go (log.py)
    worker_silence: int = DEFAULT_WORKER_SILENCE
    max_wal_age: int = 3600  # max_wal_age as declared ("1h"), in seconds
    warning_fraction: float = DEFAULT_WARNING_FRACTION
    log_destination: str = DEFAULT_LOG_DESTINATION
    notifications: NotificationConfig = field(default_factory=NotificationConfig)
    source: str = "<defaults>"

    def served(self) -> tuple[Database, ...]:
        """The databases the workers serve: those listed, or the one of dsn."""
        if self.databases:
            return self.databases
        return (Database(database_name(self.dsn), self.dsn, self.workers, single=True),)

    @property
    def total_workers(self) -> int:
        return sum(database.workers for database in self.served())

    def for_database(self, database: Database) -> Config:
        """What one database's workers run with: its dsn, worker count, tools, schedules and
        retention targets (a schedule without `database` belongs to the only database there is)."""
        tools = self.tools
        if database.tools:
            tools = Tools(tuple(tool for tool in self.tools.entries if tool.name in database.tools))
        schedules, retention, drills = self.schedules, self.retention, self.drills
        if not database.single:
            schedules = tuple(s for s in self.schedules if s.database in (None, database.name))
            drills = tuple(d for d in self.drills if d.database in (None, database.name))
            # a target naming a database (its own, or `database:` for a stanza or server) is
            # that database's; a pg_dump or pg_basebackup target naming none is every database's
            # own (each queue deciding over its own dumps); a stanza or server must name one when
            # there are several (list_rules.retention_agree): one queue decides over its backups
            names = (None, database.name, database_name(database.dsn))
            retention = tuple(r for r in self.retention if (r.database or r.target.get("database")) in names)
        return replace(
            self,
            dsn=database.dsn,
            workers=database.workers,
            tools=tools,
            schedules=schedules,
            drills=drills,
            retention=retention,
            databases=(database,),
        )


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


def database_name(dsn: str) -> str:
    """The dbname of a DSN, as a database's name (schedules and retention targets name it)."""
    try:
        return parse_dsn(dsn).get("dbname") or "default"
    except psycopg2.Error:
        return "default"


def config_summary(config: Config) -> str:
    """One log line; the DSN is shown without its password."""
    if config.databases:
        served = "databases=" + ",".join(
            f"{d.name}:{redacted_dsn(d.dsn)}:{d.workers}w" + (f":{'+'.join(d.tools)}" if d.tools else "")
            for d in config.databases
        )
    else:
        served = f"workers={config.workers} db={redacted_dsn(config.dsn)}"
    return (
        f"config={config.source} worker_id={config.worker_id} {served} poll_interval={config.poll_interval:g}s "
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
