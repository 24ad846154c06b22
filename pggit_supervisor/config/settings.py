"""Every setting of the supervisor, declared once: name, kind, default, environment variable, doc.

The loader checks a file against this table, the PGGIT_* overrides come from it, the man page's
SETTINGS section is rendered from it, and a test holds conf/supervisor.yaml to it; so a setting is
added here and nowhere else by hand. Kinds are values (bounds, allowed names), not code paths:
what a kind accepts is in its fields, how a value is checked is in the loader, what the machine
must provide (an executable, a user) is in host.py. The notifications section is declared in
notification_settings.py and placed in ROOT here, like any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .kinds import (
    Boolean,
    Choice,
    Cron,
    Derived,
    Dsn,
    Duration,
    Free,
    Integer,
    Kind,
    ListOf,
    Name,
    Number,
    Path,
    Secret,
    Section,
    Setting,
    Zone,
)
from .monitoring_settings import MONITORING
from .notification_settings import NOTIFICATIONS

DEFAULT_CONFIG_PATH = "/etc/pggit/supervisor.yaml"
CONFIG_PATH_VARIABLE = "PGGIT_CONFIG"  # names the file; not a setting, so not in the table

WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


EXECUTABLE = "an absolute path to an executable file"
_PATH_LIST = "be a non-empty list of absolute paths"
_SECONDS = "seconds between SIGTERM and SIGKILL when this tool's process tree is stopped"


def _tool(name: str, doc: str, path: str | None, timeout: int, *extra: Setting) -> Section:
    """One tool's section: what every tool has, plus `extra`, in the order they are checked."""
    common: list[Setting] = []
    if path is not None:
        common.append(Setting("path", Path(EXECUTABLE, executable=True), "the tool's executable", path))
    common.append(
        Setting(
            "run_as",
            Name(USER_NAME, "be a user name", host="user"),
            "the OS user the tool runs as",
            Derived("the service's own user"),
            null_is_default=True,
        )
    )
    common.append(Setting("timeout", Integer(1, 604800), "seconds before the tool is stopped", timeout))
    inherited = Derived("the top-level kill_grace", inherits="kill_grace")
    common.append(Setting("kill_grace", Integer(1, 600), _SECONDS, inherited))
    return Section(name, doc, (*common, *extra))


_OUTPUT_DIRS = Setting(
    "allowed_output_dirs",
    ListOf(
        Path("an absolute directory path", not_root=True),
        _PATH_LIST,
        "a non-empty list of absolute paths of directories",
    ),
    "backups may only be written below these directories",
    ("/backups",),
)
_TOOL_CONFIG = Setting(
    "config",
    Path("an absolute path to the tool's configuration file"),
    "the tool's own configuration file, passed to it",
    Derived("the tool's own default"),
    null_is_default=True,
)
_COMMAND_ENTRY = Section(
    "entry",
    "a command given as a mapping",
    (
        Setting("path", Path(EXECUTABLE, executable=True), "the command's executable"),
        Setting("pass_credentials", Boolean(), "give this command the service's database credentials", False),
    ),
    main="path",
)
_ALLOWED_COMMANDS = Setting(
    "allowed_commands",
    ListOf(
        Path(EXECUTABLE, executable=True),
        _PATH_LIST,
        "a non-empty list of absolute paths of executables",
        _COMMAND_ENTRY,
    ),
    "the only commands a custom job may run: paths, or {path, pass_credentials} mappings",
)

TOOLS = Section(
    "tools",
    "the tools workers may run: only those named here",
    many=(
        _tool("pg_dump", "the pg_dump tool, for pggit.backup_pg_dump()", "/usr/bin/pg_dump", 21600, _OUTPUT_DIRS),
        _tool(
            "pg_basebackup",
            "the pg_basebackup tool, for pggit.backup_pg_basebackup()",
            "/usr/bin/pg_basebackup",
            21600,
            _OUTPUT_DIRS,
        ),
        _tool(
            "pgbackrest",
            "the pgBackRest tool, for pggit.backup_pgbackrest()",
            "/usr/bin/pgbackrest",
            86400,
            _TOOL_CONFIG,
        ),
        _tool("barman", "the Barman tool, for pggit.backup_barman()", "/usr/bin/barman", 86400, _TOOL_CONFIG),
        _tool("custom", "the allowed commands, for jobs queued with tool custom", None, 3600, _ALLOWED_COMMANDS),
    ),
    what="tool",
    default=Derived("every built-in tool installed at its default path (never custom)"),
)

RETRY = Section(
    "retry",
    "backoff for failed jobs: the delay doubles per attempt from base_delay up to max_delay",
    (
        Setting("base_delay", Integer(1, 86400), "seconds before the first retry", 300),
        Setting("max_delay", Integer(1, 604800), "cap on the retry delay, at least base_delay", 21600),
    ),
)

SCHEDULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # as pggit.backup_schedules
_BACKUP_TOOLS = tuple(section.name for section in TOOLS.many if "path" in section.keys())
_MONTH = 31 * 86400
SCHEDULE = Section(
    "schedule",
    "a backup fired by cron, or a restore drill",
    (
        Setting(
            "name",
            Name(SCHEDULE_NAME, "be 1-63 letters, digits or _.- starting with a letter or digit"),
            "the schedule's name, the same on every host that carries it",
        ),
        Setting(
            "database",
            Name(SCHEDULE_NAME, "be a database name"),
            "the database whose queue gets the backups",
            Derived("the one database there is (required when databases lists several)"),
            null_is_default=True,
        ),
        Setting(
            "cron",
            Cron(),
            "when it fires, as cron reads it",
            Derived("none (required, but for a drill)"),
            null_is_default=True,
        ),
        Setting("timezone", Zone(), "the zone cron's times are read in", "UTC"),
        Setting(
            "tool",
            Name(re.compile("|".join(_BACKUP_TOOLS)), "be a built-in backup tool", allowed=", ".join(_BACKUP_TOOLS)),
            "the pggit.backup_<tool> function a slot calls",
            Derived("none (required, but for a drill)"),
            null_is_default=True,
        ),
        Setting(
            "drill",
            Free("a mapping of every (a duration, at least 1h) and target (a pg_dump or pg_basebackup target)"),
            "a restore drill schedule instead of a backup: every so often, the target's newest verified"
            " backup not yet drilled is drilled (no cron, tool or args then)",
            Derived("none: a backup schedule"),
            null_is_default=True,
        ),
        Setting(
            "max_drill_age",
            Duration(3600, 12 * _MONTH),
            "how old the target's last passed drill may grow before monitoring warns (drills only)",
            Derived("none"),
            null_is_default=True,
        ),
        Setting(
            "args",
            Free(
                "the function's parameters without p_ (branch, stanza, schema, format, output_path, "
                "server_name, backup_type) and options"
            ),
            "what the function is called with",
            Derived("the function's own defaults"),
            null_is_default=True,
        ),
        Setting(
            "catch_up",
            Name(re.compile("skip|latest|all"), "be skip, latest or all", allowed="skip, latest, all"),
            "what runs of the slots missed while no supervisor was up",
            "latest",
        ),
        Setting(
            "starting_deadline",
            Duration(60, _MONTH),
            "a slot later than this is recorded as missed, not run",
            "6h",
        ),
        Setting(
            "overlap",
            Name(re.compile("skip|queue"), "be skip or queue", allowed="skip, queue"),
            "what a slot does while the schedule's previous run is still queued or running",
            "skip",
        ),
        Setting(
            "max_age",
            Duration(60, 12 * _MONTH),
            "how old the newest backup may grow before monitoring warns",
            Derived("none"),
            null_is_default=True,
        ),
        Setting("enabled", Boolean(), "false records each slot as skipped (disabled) instead of running it", True),
    ),
)

_KEEP = Integer(0, 100000, unit="")
RETENTION = Section(
    "retention",
    "how many backups of one target are kept",
    (
        Setting(
            "target",
            Free("a mapping of tool and stanza (pgbackrest), server (barman), database and schema (pg_dump), database"),
            "what a tool backs up: tool plus stanza, server, or database (and schema)",
        ),
        Setting("keep_last", _KEEP, "keep the newest N verified backups", 0),
        Setting("keep_days", _KEEP, "keep every verified backup younger than D days", 0),
        Setting("keep_daily", _KEEP, "keep the newest verified backup of each of the last N days that have one", 0),
        Setting("keep_weekly", _KEEP, "keep the newest verified backup of each of the last N weeks that have one", 0),
        Setting("keep_monthly", _KEEP, "keep the newest verified backup of each of the last N months that have one", 0),
        Setting(
            "min_verified",
            Integer(1, 1000, unit=""),
            "never fewer verified backups than this, whatever the rules say",
            1,
        ),
        Setting(
            "grace", Duration(0, 365 * 86400), "how long a failed or unverified backup is left before it goes", "1d"
        ),
        Setting(
            "database",
            Name(SCHEDULE_NAME, "be a database name"),
            "the database whose queue records this stanza's or server's backups and decides over them",
            Derived("the one database there is (required for a stanza or server when databases lists several)"),
            null_is_default=True,
        ),
        Setting(
            "schedule",
            Cron(),
            "when a retention job is queued for the target, besides after each of its successful backups",
            "@hourly",
        ),
        Setting("timezone", Zone(), "the zone the schedule's times are read in", "UTC"),
    ),
)

# 1-48 characters, so that host/database/slot stays within the queue's 128-character worker id
DATABASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
DATABASE = Section(
    "database",
    "one queue database this supervisor serves, with its own pool of workers",
    (
        Setting(
            "name",
            Name(DATABASE_NAME, "be 1-48 letters, digits or _.- starting with a letter or digit"),
            "the database's name in schedules, retention targets, worker ids and log lines",
        ),
        Setting("dsn", Dsn(), "the queue database's connection string"),
        Setting(
            "workers",
            Integer(1, 64, unit=""),
            "worker processes of this database, each with one connection to it",
            Derived("the top-level workers", inherits="workers"),
            null_is_default=True,
        ),
        Setting(
            "tools",
            ListOf(
                Name(re.compile("|".join(TOOLS.keys())), "be a tool name", allowed=", ".join(TOOLS.keys())),
                "be a non-empty list of tool names",
                "a non-empty list of names of the configured tools",
            ),
            "the tools this database's workers run, some of those configured under tools",
            Derived("every configured tool"),
            null_is_default=True,
        ),
    ),
)

# In the order they are checked, which is the order their problems are listed in.
ROOT = Section(
    "",
    "the supervisor's settings",
    (
        Setting(
            "dsn",
            Dsn(),
            "the queue database (also what pg_dump and pg_basebackup back up by default)",
            Derived("none; required unless databases lists the databases"),
        ),
        Setting(
            "worker_id",
            Name(WORKER_ID, "be 1-63 letters, digits or _.:@- starting with a letter or digit"),
            "the name this host's workers report in the queue",
            Derived("the host name"),
            env="PGGIT_WORKER_ID",
        ),
        Setting(
            "workers", Integer(1, 64, unit=""), "worker processes; each runs one job at a time", 1, env="PGGIT_WORKERS"
        ),
        Setting(
            "poll_interval",
            Number(0.1, 3600),
            "seconds between queue polls when no NOTIFY arrives",
            10.0,
            env="PGGIT_POLL_INTERVAL",
        ),
        Setting(
            "heartbeat_interval",
            Number(0.1, 3600),
            "seconds between lease renewals while a job runs",
            10.0,
            env="PGGIT_HEARTBEAT_INTERVAL",
        ),
        Setting(
            "lease_seconds",
            Integer(5, 86400),
            "seconds a running job may go without a heartbeat, at least twice heartbeat_interval",
            60,
            env="PGGIT_LEASE_SECONDS",
        ),
        Setting("shutdown_timeout", Integer(0, 86400), "seconds running jobs get to finish after SIGTERM", 300),
        Setting(
            "log_level",
            Choice(LOG_LEVELS, "a log level name"),
            "the lowest level logged",
            "INFO",
            env="PGGIT_LOG_LEVEL",
        ),
        Setting(
            "kill_grace",
            Integer(1, 600),
            "seconds between SIGTERM and SIGKILL when a tool's process tree is stopped",
            10,
        ),
        Setting(
            "worker_timeout",
            Number(1, 3600),
            "seconds a worker may stay silent to the supervisor before it is replaced",
            60.0,
        ),
        Setting(
            "drill_user",
            Name(
                USER_NAME,
                "be the name of an unprivileged user",
                refused=("root",),
                allowed=f"^{USER_NAME.pattern}$ but not root; default pggit-drill",
            ),
            "the unprivileged OS user restore drills run their throwaway cluster as",
            "pggit-drill",
        ),
        RETRY,
        TOOLS,
        Setting(
            "databases",
            ListOf(
                None,
                "be a non-empty list of databases",
                "a list of mappings of " + ", ".join(DATABASE.keys()),
                DATABASE,
            ),
            "the queue databases this supervisor serves, instead of dsn: each with its own workers",
            Derived("the one database of dsn"),
        ),
        Setting(
            "schedule_interval",
            Number(1, 300),
            "seconds between an idle worker's checks for due schedule slots",
            30.0,
        ),
        Setting(
            "schedules",
            ListOf(
                None,
                "be a non-empty list of schedules",
                "a list of mappings of " + ", ".join(SCHEDULE.keys()),
                SCHEDULE,
            ),
            "backups fired by cron, each slot recorded once in the database whichever hosts carry it",
            Derived("none"),
        ),
        Setting(
            "retention",
            ListOf(
                None,
                "be a non-empty list of targets",
                "a list of mappings of " + ", ".join(RETENTION.keys()),
                RETENTION,
            ),
            "which backups each target keeps; the rest are expired and removed by the workers' retention jobs",
            Derived("none"),
        ),
        NOTIFICATIONS,
        *MONITORING,
        # -- retention's removal step and job pruning (issue 10) -------------------------------
        Setting(
            "prune_jobs_after",
            Duration(3600, 10 * 365 * 86400),
            "how long a job that ended for good is kept before the workers delete it (its backup's row stays)",
            "30d",
        ),
    ),
)


def walk(section: Section = ROOT, prefix: str = "") -> Iterator[tuple[str, Setting]]:
    """Every setting with its dotted path, tools.<name>.<key> for each tool, `[]` for list entries."""
    for item in section.many or section.settings:
        path = f"{prefix}{item.name}"
        if isinstance(item, Section):
            yield from walk(item, f"{path}.")
            continue
        yield path, item
        if isinstance(item.kind, ListOf) and item.kind.entry is not None:
            yield from walk(item.kind.entry, f"{path}[].")


def environment_variables() -> dict[str, str]:
    """PGGIT_* variable -> top-level key it overrides."""
    return {setting.env: setting.name for setting in ROOT.settings if isinstance(setting, Setting) and setting.env}


def tool_names() -> tuple[str, ...]:
    return TOOLS.keys()


def builtin_tools() -> tuple[Section, ...]:
    """The tools with an executable of their own (all but custom), in the listener's order."""
    return tuple(section for section in TOOLS.many if "path" in section.keys())


def allowed_of(kind: Kind) -> str:
    """What a kind accepts, as `(allowed: ...)` and the man page say it."""
    if isinstance(kind, Integer):
        return f"{kind.low}-{kind.high}{kind.unit}"
    if isinstance(kind, Number):
        return f"{kind.low:g}-{kind.high:g}"
    if isinstance(kind, Choice):
        return ", ".join(kind.values)
    if isinstance(kind, Name):
        return kind.allowed_text()
    if isinstance(kind, Boolean):
        return "true, false"
    if isinstance(kind, (Dsn, Path, ListOf, Cron, Zone, Duration, Secret, Free)):
        return kind.allowed
    return ", ".join(kind.keys())


def tool(name: str) -> Section:
    section = TOOLS.get(name)
    assert isinstance(section, Section)
    return section


def default_of(section: Section, name: str) -> Any:
    item = section.get(name)
    assert isinstance(item, Setting)
    return item.default
