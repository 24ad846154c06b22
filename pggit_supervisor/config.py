"""The supervisor's settings: a YAML file, overridden by PGGIT_* variables, checked in one pass.

Every problem is collected before anything is raised, so an operator fixes a broken file in one
edit instead of one restart per typo. Unknown keys are errors for the same reason: a misspelt
key must not quietly fall back to its default.
"""

from __future__ import annotations

import math
import os
import pwd
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import psycopg2
import yaml
from psycopg2.extensions import parse_dsn

DEFAULT_CONFIG_PATH = "/etc/pggit/supervisor.yaml"
ENVIRONMENT = "<environment>"  # Config.source when no file was read

DEFAULT_WORKERS = 1
DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_LEASE_SECONDS = 60
DEFAULT_SHUTDOWN_TIMEOUT = 300
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_BASE_DELAY = 300
DEFAULT_MAX_DELAY = 21600
DEFAULT_KILL_GRACE = 10
DEFAULT_WORKER_TIMEOUT = 60.0
# the unprivileged OS user restore drills run their throwaway cluster as (see sandbox.py)
DEFAULT_DRILL_USER = "pggit-drill"

TOOL_NAMES = ("barman", "custom", "pg_basebackup", "pg_dump", "pgbackrest")
BUILTIN_TOOLS = ("pg_dump", "pg_basebackup", "pgbackrest", "barman")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Variable -> top-level key. The DSN is not here: the listener takes it as an argument.
ENV_OVERRIDES: Mapping[str, str] = MappingProxyType(
    {
        "PGGIT_WORKER_ID": "worker_id",
        "PGGIT_WORKERS": "workers",
        "PGGIT_POLL_INTERVAL": "poll_interval",
        "PGGIT_HEARTBEAT_INTERVAL": "heartbeat_interval",
        "PGGIT_LEASE_SECONDS": "lease_seconds",
        "PGGIT_LOG_LEVEL": "log_level",
    }
)

_TOP_KEYS = (
    "drill_user",
    "dsn",
    "heartbeat_interval",
    "kill_grace",
    "lease_seconds",
    "log_level",
    "poll_interval",
    "retry",
    "shutdown_timeout",
    "tools",
    "worker_id",
    "worker_timeout",
    "workers",
)
_RETRY_KEYS = ("base_delay", "max_delay")
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MAX_TOOL_TIMEOUT = 604800
_MISSING: Any = object()


@dataclass(frozen=True)
class _ToolSpec:
    """What a tool accepts and what it gets when a key is left out."""

    path: str | None
    timeout: int
    keys: tuple[str, ...]


_DUMP_KEYS = ("allowed_output_dirs", "kill_grace", "path", "run_as", "timeout")
_REPO_KEYS = ("config", "kill_grace", "path", "run_as", "timeout")
_TOOL_SPECS: Mapping[str, _ToolSpec] = MappingProxyType(
    {
        "pg_dump": _ToolSpec("/usr/bin/pg_dump", 21600, _DUMP_KEYS),
        "pg_basebackup": _ToolSpec("/usr/bin/pg_basebackup", 21600, _DUMP_KEYS),
        "pgbackrest": _ToolSpec("/usr/bin/pgbackrest", 86400, _REPO_KEYS),
        "barman": _ToolSpec("/usr/bin/barman", 86400, _REPO_KEYS),
        "custom": _ToolSpec(None, 3600, ("allowed_commands", "kill_grace", "run_as", "timeout")),
    }
)


class ConfigError(Exception):
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
    source: str = "<defaults>"


def default_tool(name: str, kill_grace: int = DEFAULT_KILL_GRACE) -> ToolConfig:
    """The settings a tool gets when its section is empty (custom then allows no command)."""
    spec = _TOOL_SPECS[name]
    return ToolConfig(
        name=name,
        path=spec.path,
        run_as=None,
        timeout=spec.timeout,
        config=None,
        allowed_output_dirs=("/backups",) if "allowed_output_dirs" in spec.keys else (),
        allowed_commands=(),
        kill_grace=kill_grace,
    )


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> str:
    """The command line wins, then PGGIT_CONFIG, then the packaged location."""
    return cli_path or environ.get("PGGIT_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(
    path: str, environ: Mapping[str, str] | None = None, *, dsn: str | None = None, check_paths: bool = True
) -> Config:
    """Read `path`, let `environ` (default os.environ) and `dsn` override it, check it all.

    check_paths=False skips the checks that look at this machine (executables, users), for
    validating a file meant for another host, and for tests.
    """
    raw, file_problems = _read_mapping(path)
    merged, origins = _merge_overrides(raw, os.environ if environ is None else environ, dsn)
    report = _Report(path, origins)
    report.problems.extend(file_problems)
    return _validate(merged, report, check_paths=check_paths)


def listener_config(dsn: str, environ: Mapping[str, str], *, check_paths: bool = True) -> Config:
    """Settings for `pggit-backup-listener DSN`: PGGIT_CONFIG's file if set, else defaults
    plus the environment, with every built-in tool installed here (never custom)."""
    path = environ.get("PGGIT_CONFIG", "")
    if path:
        return load_config(path, environ, dsn=dsn, check_paths=check_paths)
    merged, origins = _merge_overrides({}, environ, dsn)
    return _validate(merged, _Report(ENVIRONMENT, origins), check_paths=check_paths)


def apply_overrides(config: Config, environ: Mapping[str, str], dsn: str | None = None) -> Config:
    """A copy of `config` with PGGIT_* variables and `dsn` applied, checked again."""
    raw: dict[str, Any] = {
        f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("retry", "tools", "source")
    }
    raw["retry"] = {"base_delay": config.retry.base_delay, "max_delay": config.retry.max_delay}
    merged, origins = _merge_overrides(raw, environ, dsn)
    return _validate(merged, _Report(config.source, origins), check_paths=False, tools=config.tools)


def config_summary(config: Config) -> str:
    """One log line; the DSN is shown without its password."""
    return (
        f"config={config.source} worker_id={config.worker_id} workers={config.workers} "
        f"db={_redacted_dsn(config.dsn)} poll_interval={config.poll_interval:g}s "
        f"heartbeat_interval={config.heartbeat_interval:g}s "
        f"lease_seconds={config.lease_seconds}s shutdown_timeout={config.shutdown_timeout}s "
        f"kill_grace={config.kill_grace}s "
        f"retry={config.retry.base_delay}s..{config.retry.max_delay}s "
        f"log_level={config.log_level} tools={','.join(sorted(config.tools)) or '-'}"
    )


class _Report:
    """Where each key came from, and the problems found so far."""

    def __init__(self, source: str, origins: Mapping[str, str]) -> None:
        self.source = source
        self.origins = origins
        self.problems: list[str] = []

    def where(self, key_path: str) -> str:
        return self.origins.get(key_path, f"{self.source}: {key_path}")

    def add(self, key_path: str, what: str, allowed: str) -> None:
        self.problems.append(f"{self.where(key_path)}: {what} (allowed: {allowed})")

    def integer(self, key_path: str, value: Any, low: int, high: int, unit: str = " seconds") -> int | None:
        allowed = f"{low}-{high}{unit}"
        if isinstance(value, bool) or not isinstance(value, int):
            kind = "a positive integer" if low >= 1 else "a non-negative integer"
            self.add(key_path, f"must be {kind}, got {_show(value)}", allowed)
            return None
        if not low <= value <= high:
            self.add(key_path, f"must be between {low} and {high}, got {value}", allowed)
            return None
        return value

    def number(self, key_path: str, value: Any, low: float, high: float) -> float | None:
        allowed = f"{low:g}-{high:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.add(key_path, f"must be a number > 0, got {_show(value)}", allowed)
            return None
        if not low <= value <= high:
            self.add(key_path, f"must be between {low:g} and {high:g}, got {value:g}", allowed)
            return None
        return float(value)

    def section(self, key_path: str, value: Any, keys: Sequence[str]) -> Mapping[Any, Any] | None:
        """A nested mapping; left empty (`retry:`) it means all defaults."""
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(key_path, f"must be a mapping, got {_show(value)}", ", ".join(keys))
            return None
        for key in value:
            if key not in keys:
                self.add(f"{key_path}.{key}", "unknown key", ", ".join(keys))
        return value

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _show(value: Any) -> str:
    """A value as the operator wrote it, short enough for one log line."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # `yes`, `on` and `true` all land here
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value)


def _default_note(raw: Mapping[Any, Any], key: str) -> str:
    return "" if key in raw else " (the default)"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys, where PyYAML would silently keep the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _read_mapping(path: str) -> tuple[Mapping[Any, Any], list[str]]:
    """The file's top-level mapping plus its non-fatal problems; fatal ones raise."""
    report = _Report(path, {})
    unreadable = "a readable YAML file, named on the command line or by PGGIT_CONFIG"
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        report.add("(file)", "does not exist", unreadable)
    except IsADirectoryError:
        report.add("(file)", "is a directory", unreadable)
    except PermissionError:
        report.add("(file)", "cannot be read: permission denied", unreadable)
    except UnicodeDecodeError as error:
        report.add("(file)", f"is not UTF-8 text (bad byte at offset {error.start})", unreadable)
    except OSError as error:
        report.add("(file)", f"cannot be read: {error.strerror}", unreadable)
    report.raise_if_any()
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = error.problem or error.context
        if error.problem and error.context and error.context_mark:  # where the construct began
            what = f"{error.problem} ({error.context} started at line {error.context_mark.line + 1})"
        report.add("(file)", f"YAML syntax error{at}: {what}", "valid YAML")
        raise ConfigError(report.problems) from None
    except yaml.YAMLError as error:
        report.add("(file)", f"YAML syntax error: {error}", "valid YAML")
        raise ConfigError(report.problems) from None
    finally:
        loader.dispose()
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else _show(data)
        report.add("(file)", f"top level must be a mapping, got {got}", ", ".join(_TOP_KEYS))
        report.raise_if_any()
    for key, line in loader.duplicates:
        report.add("(file)", f"duplicate key {key!r} at line {line}", "each key once per mapping")
    return data, report.problems


def _merge_overrides(
    raw: Mapping[Any, Any], environ: Mapping[str, str], dsn: str | None
) -> tuple[dict[Any, Any], dict[str, str]]:
    """Overlay the environment and the DSN argument, remembering who set what."""
    merged = dict(raw)
    origins: dict[str, str] = {}
    for variable, key in ENV_OVERRIDES.items():
        text = environ.get(variable, "")
        if text == "":  # `PGGIT_WORKERS= cmd` means unset, as in most shells' habits
            continue
        merged[key] = _parse_env(key, text)
        origins[key] = f"environment: {variable}"
    if dsn is not None:
        merged["dsn"] = dsn
        origins["dsn"] = "command line: dsn"
    return merged, origins


def _parse_env(key: str, text: str) -> Any:
    """Numbers for numeric keys; anything unparsable stays text, so the check quotes it."""
    try:
        if key in ("workers", "lease_seconds"):
            return int(text)
        if key in ("poll_interval", "heartbeat_interval"):
            return float(text)
    except ValueError:
        pass
    return text


def _validate(raw: Mapping[Any, Any], report: _Report, *, check_paths: bool, tools: Tools | None = None) -> Config:
    """Check every key of the merged settings; raise once with all problems, else build."""
    for key in raw:
        if key not in _TOP_KEYS:
            report.add(str(key), "unknown key", ", ".join(_TOP_KEYS))

    def setting(key: str, default: Any, check: Callable[[str, Any], Any]) -> Any:
        value = raw.get(key, _MISSING)
        return default if value is _MISSING else check(key, value)

    dsn = _check_dsn(report, raw.get("dsn", _MISSING))
    worker_id = _check_worker_id(report, raw.get("worker_id", _MISSING))
    workers = setting("workers", DEFAULT_WORKERS, lambda k, v: report.integer(k, v, 1, 64, unit=""))
    poll = setting("poll_interval", DEFAULT_POLL_INTERVAL, lambda k, v: report.number(k, v, 0.1, 3600))
    heartbeat = setting("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL, lambda k, v: report.number(k, v, 0.1, 3600))
    lease = setting("lease_seconds", DEFAULT_LEASE_SECONDS, lambda k, v: report.integer(k, v, 5, 86400))
    shutdown = setting("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, lambda k, v: report.integer(k, v, 0, 86400))
    log_level = setting("log_level", DEFAULT_LOG_LEVEL, lambda k, v: _check_log_level(report, v))
    kill_grace = setting("kill_grace", DEFAULT_KILL_GRACE, lambda k, v: report.integer(k, v, 1, 600))
    worker_timeout = setting("worker_timeout", DEFAULT_WORKER_TIMEOUT, lambda k, v: report.number(k, v, 1, 3600))
    drill_user = setting("drill_user", DEFAULT_DRILL_USER, lambda k, v: _check_drill_user(report, v))
    retry = _check_retry(report, raw.get("retry", _MISSING))
    if tools is None:
        tools = _check_tools(report, raw.get("tools", _MISSING), kill_grace or DEFAULT_KILL_GRACE, check_paths)

    # A lease shorter than two heartbeats expires on one late renewal: a running job
    # would be handed to a second worker while the first still runs it.
    if lease is not None and heartbeat is not None and lease < 2 * heartbeat:
        set_by = report.where("heartbeat_interval")
        by = "" if set_by == f"{report.source}: heartbeat_interval" else f", set by {set_by}"
        report.add(
            "lease_seconds",
            f"must be at least twice heartbeat_interval ({heartbeat:g}{by}), "
            f"got {lease}{_default_note(raw, 'lease_seconds')}",
            f"{max(5, math.ceil(2 * heartbeat))}-86400 seconds",
        )
    report.raise_if_any()
    # each check that returns None has reported why, so raise_if_any did not return
    assert dsn is not None and worker_id is not None and retry is not None and tools is not None
    return Config(
        dsn=dsn,
        worker_id=worker_id,
        workers=workers,
        poll_interval=poll,
        heartbeat_interval=heartbeat,
        lease_seconds=lease,
        shutdown_timeout=shutdown,
        log_level=log_level,
        retry=retry,
        tools=tools,
        kill_grace=kill_grace,
        worker_timeout=worker_timeout,
        drill_user=drill_user,
        source=report.source,
    )


def _check_dsn(report: _Report, value: Any) -> str | None:
    allowed = "a postgresql:// URI or a libpq key=value string"
    if value is _MISSING:
        report.add("dsn", "required", allowed)
        return None
    if not isinstance(value, str) or not value.strip():
        report.add("dsn", f"must be a non-empty string, got {_show(value)}", allowed)
        return None
    try:
        parse_dsn(value)
    except psycopg2.Error:
        # libpq's reason quotes fragments of the string, which may include the password.
        report.add("dsn", "is not a valid libpq connection string", allowed)
        return None
    return value


def _check_worker_id(report: _Report, value: Any) -> str | None:
    allowed = f"^{_WORKER_ID.pattern}$"
    if value is _MISSING:
        host = socket.gethostname()
        if _WORKER_ID.fullmatch(host):
            return host
        report.add(
            "worker_id",
            f"not set, and the host name {host!r} is not a valid worker id; set worker_id or PGGIT_WORKER_ID",
            allowed,
        )
        return None
    if not isinstance(value, str) or not _WORKER_ID.fullmatch(value):
        report.add(
            "worker_id",
            f"must be 1-63 letters, digits or _.:@- starting with a letter or digit, got {_show(value)}",
            allowed,
        )
        return None
    return value


def _check_drill_user(report: _Report, value: Any) -> str | None:
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value) or value == "root":
        report.add(
            "drill_user",
            f"must be the name of an unprivileged user, got {_show(value)}",
            f"^{_USER_NAME.pattern}$ but not root; default {DEFAULT_DRILL_USER}",
        )
        return None
    return value


def _check_log_level(report: _Report, value: Any) -> str | None:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        report.add("log_level", f"must be a log level name, got {_show(value)}", ", ".join(LOG_LEVELS))
        return None
    return value.upper()


def _check_retry(report: _Report, value: Any) -> RetryConfig | None:
    section = report.section("retry", value, _RETRY_KEYS)
    if section is None:
        return None
    base: int | None = DEFAULT_BASE_DELAY
    if "base_delay" in section:
        base = report.integer("retry.base_delay", section["base_delay"], 1, 86400)
    high: int | None = DEFAULT_MAX_DELAY
    if "max_delay" in section:
        high = report.integer("retry.max_delay", section["max_delay"], 1, 604800)
    if base is None or high is None:
        return None
    if high < base:
        report.add(
            "retry.max_delay",
            f"must be at least retry.base_delay ({base}), got {high}{_default_note(section, 'max_delay')}",
            f"{base}-604800 seconds",
        )
        return None
    return RetryConfig(base_delay=base, max_delay=high)


def _installed_builtin_tools() -> dict[str, Any]:
    return {name: {} for name in BUILTIN_TOOLS if _executable_problem(_TOOL_SPECS[name].path or "") is None}


def _check_tools(report: _Report, value: Any, kill_grace: int, check_paths: bool) -> Tools | None:
    allowed = ", ".join(TOOL_NAMES)
    if value is _MISSING:
        value = _installed_builtin_tools()
        if not value:
            paths = ", ".join(_TOOL_SPECS[name].path or "" for name in BUILTIN_TOOLS)
            report.add("tools", f"not set, and none of {paths} is installed", f"a mapping naming some of {allowed}")
            return None
    if not isinstance(value, Mapping):
        report.add("tools", f"must be a mapping of tool names to settings, got {_show(value)}", allowed)
        return None
    if not value:
        report.add("tools", "must name at least one tool", allowed)
        return None
    entries = []
    for name, settings in value.items():
        if name not in _TOOL_SPECS:
            report.add(f"tools.{name}", "unknown tool", allowed)
            continue
        tool = _check_tool(report, name, settings, kill_grace, check_paths)
        if tool is not None:
            entries.append(tool)
    return Tools(tuple(sorted(entries, key=lambda tool: tool.name)))


def _check_tool(report: _Report, name: str, settings: Any, kill_grace: int, check_paths: bool) -> ToolConfig | None:
    spec = _TOOL_SPECS[name]
    prefix = f"tools.{name}"
    section = report.section(prefix, settings, spec.keys)
    if section is None:
        return None
    problems_before = len(report.problems)
    tool = default_tool(name, kill_grace)
    path = tool.path
    if spec.path is not None:
        path = _check_executable(report, f"{prefix}.path", section.get("path", spec.path), check_paths)
    run_as = _check_run_as(report, f"{prefix}.run_as", section.get("run_as"), check_paths)
    timeout: int | None = tool.timeout
    if "timeout" in section:
        timeout = report.integer(f"{prefix}.timeout", section["timeout"], 1, _MAX_TOOL_TIMEOUT)
    grace: int | None = kill_grace
    if "kill_grace" in section:
        grace = report.integer(f"{prefix}.kill_grace", section["kill_grace"], 1, 600)
    config = None
    if section.get("config") is not None:
        config = _check_absolute(
            report, f"{prefix}.config", section["config"], "an absolute path to the tool's configuration file"
        )
    output_dirs: tuple[str, ...] | None = tool.allowed_output_dirs
    if "allowed_output_dirs" in section:
        output_dirs = _check_path_list(
            report,
            f"{prefix}.allowed_output_dirs",
            section["allowed_output_dirs"],
            executables=False,
            check_paths=check_paths,
        )
    commands: tuple[str, ...] | None = ()
    credentials: tuple[str, ...] = ()
    if "allowed_commands" in spec.keys:
        entries, credentials = _command_entries(
            report, f"{prefix}.allowed_commands", section.get("allowed_commands", _MISSING)
        )
        commands = _check_path_list(
            report, f"{prefix}.allowed_commands", entries, executables=True, check_paths=check_paths
        )
    # every None above was reported, so the count decides; the None tests only narrow the types
    problems = len(report.problems) > problems_before
    if problems or timeout is None or grace is None or output_dirs is None or commands is None:
        return None
    return ToolConfig(
        name=name,
        path=path,
        run_as=run_as,
        timeout=timeout,
        config=config,
        allowed_output_dirs=output_dirs,
        allowed_commands=commands,
        kill_grace=grace,
        pass_credentials=credentials,
    )


_COMMAND_ENTRY_KEYS = ("path", "pass_credentials")


def _command_entries(report: _Report, key_path: str, value: Any) -> tuple[Any, tuple[str, ...]]:
    """allowed_commands with each `{path: ..., pass_credentials: true}` entry turned into its
    path, and the normalised paths whose entry passes the database credentials."""
    if not isinstance(value, list):
        return value, ()
    paths: list[Any] = []
    credentials: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            paths.append(item)
            continue
        item_path = f"{key_path}[{index}]"
        for key in item:
            if key not in _COMMAND_ENTRY_KEYS:
                report.add(f"{item_path}.{key}", "unknown key", ", ".join(_COMMAND_ENTRY_KEYS))
        passes = item.get("pass_credentials", False)
        if not isinstance(passes, bool):
            report.add(
                f"{item_path}.pass_credentials",
                f"must be true or false, got {_show(passes)}",
                "true, false (default false)",
            )
        command = item.get("path", _MISSING)
        if command is _MISSING:
            report.add(f"{item_path}.path", "required", "an absolute path to an executable file")
            continue
        paths.append(command)
        if passes is True and isinstance(command, str):
            credentials.append(os.path.normpath(command))
    return paths, tuple(credentials)


def _check_absolute(report: _Report, key_path: str, value: Any, allowed: str) -> str | None:
    """An absolute path, normalised; `..` is refused because it defeats an allow-list."""
    if not isinstance(value, str) or not value.startswith("/"):
        report.add(key_path, f"must be an absolute path, got {_show(value)}", allowed)
        return None
    if ".." in value.split("/"):
        report.add(key_path, f"must not contain '..', got {_show(value)}", allowed)
        return None
    return os.path.normpath(value)


def _executable_problem(path: str) -> str | None:
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.path.isfile(path):
        return f"{path} is not a file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    return None


def _check_executable(report: _Report, key_path: str, value: Any, check_paths: bool) -> str | None:
    allowed = "an absolute path to an executable file"
    path = _check_absolute(report, key_path, value, allowed)
    if path is None or not check_paths:
        return path
    problem = _executable_problem(path)
    if problem:
        report.add(key_path, problem, allowed)
        return None
    return path


def _check_run_as(report: _Report, key_path: str, value: Any, check_paths: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value):
        report.add(key_path, f"must be a user name, got {_show(value)}", f"^{_USER_NAME.pattern}$")
        return None
    if check_paths:
        try:
            pwd.getpwnam(value)
        except KeyError:
            report.add(
                key_path,
                f"user {value!r} does not exist",
                "an existing user, or no run_as to run as the service's own user",
            )
            return None
    return value


def _check_path_list(
    report: _Report, key_path: str, value: Any, *, executables: bool, check_paths: bool
) -> tuple[str, ...] | None:
    what = "executables" if executables else "directories"
    allowed = f"a non-empty list of absolute paths of {what}"
    if value is _MISSING:
        report.add(key_path, "required", allowed)
        return None
    if not isinstance(value, list) or not value:
        report.add(key_path, f"must be a non-empty list of absolute paths, got {_show(value)}", allowed)
        return None
    paths = []
    for index, item in enumerate(value):
        item_path = f"{key_path}[{index}]"
        if executables:
            path = _check_executable(report, item_path, item, check_paths)
        else:
            path = _check_absolute(report, item_path, item, "an absolute directory path")
            if path is not None and not path.strip("/"):  # "/" would let a job write anywhere
                report.add(item_path, "must not be /", "a directory set aside for backups")
                path = None
        if path is not None:
            paths.append(path)
    return tuple(paths) if len(paths) == len(value) else None


def _redacted_dsn(dsn: str) -> str:
    """user@host:port/dbname, never the password; '[local]' for a Unix socket, as psql says."""
    try:
        parts = parse_dsn(dsn)
    except psycopg2.Error:
        return "(invalid dsn)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{user}{parts.get('host') or '[local]'}{port}/{parts.get('dbname', '')}"
