"""Checks merged settings against the declaration (settings.py) and builds the Config.

One walk over the declared sections: each value is checked by its kind, a left-out key takes
its default, and the few rules that relate two settings run right after their section. Every
problem is collected before anything is raised, so an operator fixes a broken file in one edit
instead of one restart per typo; unknown keys are errors, so a misspelt key cannot quietly fall
back to its default.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import available_timezones

import psycopg2
from psycopg2.extensions import parse_dsn

from ..retention import Retention
from ..scheduler import Schedule, cron_problem
from . import host, list_rules
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
    Required,
    Section,
    Setting,
    Zone,
    show_default,
)
from .model import Config, Database, RetryConfig, ToolConfig, Tools
from .report import Report, show
from .settings import ROOT, WORKER_ID, allowed_of, builtin_tools

MISSING: Any = object()
INVALID: Any = object()  # a value whose problem has been reported


def validate(raw: Mapping[Any, Any], report: Report, *, check_paths: bool) -> Config:
    """Check every key of the merged settings; raise once with all problems, else build."""
    checked = _Walk(report, check_paths).section("", ROOT, raw)
    report.raise_if_any()
    return _build(checked, report.source)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Walk:
    """One pass over the declaration; `checked` holds what is known so far (kill_grace for the
    tools that inherit it)."""

    def __init__(self, report: Report, check_paths: bool) -> None:
        self.report = report
        self.check_paths = check_paths
        self.checked: dict[str, Any] = {}
        self.label = ""  # "database 'app': " while a databases[] entry is checked

    def add(self, key_path: str, what: str, allowed: str) -> None:
        self.report.add(key_path, self.label + what, allowed)

    def section(self, key_path: str, section: Section, value: Any) -> Any:
        """A mapping of the section's keys; left empty (`retry:`) it means all defaults."""
        before = len(self.report.problems)
        if value is MISSING or value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.add(key_path, f"must be a mapping, got {show(value)}", ", ".join(section.keys()))
            return INVALID
        for key in value:
            if key not in section.keys():
                self.add(_join(key_path, str(key)), "unknown key", ", ".join(section.keys()))
        result: dict[str, Any] = {}
        for item in section.settings:
            child = _join(key_path, item.name)
            given = value.get(item.name, MISSING)
            if isinstance(item, Section) and item.many:
                result[item.name] = self.table(child, item, given)
            elif isinstance(item, Section):
                result[item.name] = self.section(child, item, given)
            else:
                result[item.name] = self.setting(child, item, given)
            self.checked[child] = result[item.name]
        for rule in _RULES.get(key_path, ()):
            rule(self, key_path, value, result)
        return result if len(self.report.problems) == before else INVALID

    def table(self, key_path: str, section: Section, value: Any) -> Any:
        """Named entries, each its own section (tools: {pg_dump: {...}, barman: {...}})."""
        allowed = ", ".join(section.keys())
        if value is MISSING:
            value = self.derived(key_path, section.default)
            if value is INVALID:
                return INVALID
        if not isinstance(value, Mapping):
            self.add(key_path, f"must be a mapping of {section.what} names to settings, got {show(value)}", allowed)
            return INVALID
        if not value:
            self.add(key_path, f"must name at least one {section.what}", allowed)
            return INVALID
        entries = {}
        for name, settings in value.items():
            if name not in section.keys():
                self.add(_join(key_path, str(name)), f"unknown {section.what}", allowed)
                continue
            entry = section.get(name)
            assert isinstance(entry, Section)
            checked = self.section(_join(key_path, name), entry, settings)
            if checked is not INVALID:
                entries[name] = checked
        return entries

    def setting(self, key_path: str, setting: Setting, value: Any) -> Any:
        if value is MISSING or (value is None and setting.null_is_default):
            return self.default(key_path, setting)
        return self.value(key_path, setting, setting.kind, value)

    def default(self, key_path: str, setting: Setting) -> Any:
        if isinstance(setting.default, Required):
            self.add(key_path, "required", allowed_of(setting.kind))
            return INVALID
        if isinstance(setting.default, Derived):
            return self.derived(key_path, setting.default)
        if isinstance(setting.kind, Path) and setting.kind.executable:  # a default path must exist too
            return self.value(key_path, setting, setting.kind, setting.default)
        if isinstance(setting.kind, Duration):  # declared as written ("6h"), used in seconds
            return duration_seconds(setting.default)
        return setting.default

    def derived(self, key_path: str, default: Derived) -> Any:
        """The defaults worked out here; any other Derived default means "none" (None)."""
        if default.inherits:
            inherited = self.checked.get(default.inherits, INVALID)
            return _declared("", default.inherits).default if inherited is INVALID else inherited
        if key_path == "worker_id":
            return self.host_name()
        if key_path == "tools":
            return self.installed_tools()
        return None

    def host_name(self) -> Any:
        name = socket.gethostname()
        if WORKER_ID.fullmatch(name):
            return name
        setting = ROOT.get("worker_id")
        assert isinstance(setting, Setting)
        self.add(
            "worker_id",
            f"not set, and the host name {name!r} is not a valid worker id; set worker_id or {setting.env}",
            allowed_of(setting.kind),
        )
        return INVALID

    def installed_tools(self) -> Any:
        builtins = [(tool.name, _default_path(tool)) for tool in builtin_tools()]
        found = host.installed(builtins)
        if not found:
            paths = ", ".join(path for _, path in builtins)
            tools = ROOT.get("tools")
            assert isinstance(tools, Section)
            self.add(
                "tools", f"not set, and none of {paths} is installed", f"a mapping naming some of {allowed_of(tools)}"
            )
            return INVALID
        return {name: {} for name in found}

    def value(self, key_path: str, setting: Setting, kind: Kind, value: Any) -> Any:
        check = _KIND_CHECKS.get(type(kind))
        if check is None:
            assert isinstance(kind, Section)
            return self.section(key_path, kind, value)
        return check(self, key_path, setting, kind, value)


def _default_path(section: Section) -> str:
    setting = section.get("path")
    assert isinstance(setting, Setting)
    return str(setting.default)


def _integer(walk: _Walk, key_path: str, setting: Setting, kind: Integer, value: Any) -> Any:
    allowed = allowed_of(kind)
    if isinstance(value, bool) or not isinstance(value, int):
        what = "a positive integer" if kind.low >= 1 else "a non-negative integer"
        walk.add(key_path, f"must be {what}, got {show(value)}", allowed)
        return INVALID
    if not kind.low <= value <= kind.high:
        walk.add(key_path, f"must be between {kind.low} and {kind.high}, got {value}", allowed)
        return INVALID
    return value


def _number(walk: _Walk, key_path: str, setting: Setting, kind: Number, value: Any) -> Any:
    allowed = allowed_of(kind)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        walk.add(key_path, f"must be a number > 0, got {show(value)}", allowed)
        return INVALID
    if not kind.low <= value <= kind.high:
        walk.add(key_path, f"must be between {kind.low:g} and {kind.high:g}, got {value:g}", allowed)
        return INVALID
    return float(value)


def _choice(walk: _Walk, key_path: str, setting: Setting, kind: Choice, value: Any) -> Any:
    if not isinstance(value, str) or value.upper() not in kind.values:
        walk.add(key_path, f"must be {kind.what}, got {show(value)}", allowed_of(kind))
        return INVALID
    return value.upper()


def _name(walk: _Walk, key_path: str, setting: Setting, kind: Name, value: Any) -> Any:
    if not isinstance(value, str) or not kind.pattern.fullmatch(value) or value in kind.refused:
        walk.add(key_path, f"must {kind.must}, got {show(value)}", allowed_of(kind))
        return INVALID
    if kind.host == "user" and walk.check_paths:
        problem = host.user_problem(value)
        if problem:
            walk.add(key_path, problem, host.USER_ALLOWED)
            return INVALID
    return value


def _dsn(walk: _Walk, key_path: str, setting: Setting, kind: Dsn, value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        walk.add(key_path, f"must be a non-empty string, got {show(value)}", kind.allowed)
        return INVALID
    try:
        parse_dsn(value)
    except psycopg2.Error:
        # libpq's reason quotes fragments of the string, which may include the password.
        walk.add(key_path, "is not a valid libpq connection string", kind.allowed)
        return INVALID
    return value


def _boolean(walk: _Walk, key_path: str, setting: Setting, kind: Boolean, value: Any) -> Any:
    if not isinstance(value, bool):
        allowed = f"{allowed_of(kind)} (default {show_default(setting.default)})"
        walk.add(key_path, f"must be true or false, got {show(value)}", allowed)
        return INVALID
    return value


def _path(walk: _Walk, key_path: str, setting: Setting, kind: Path, value: Any) -> Any:
    """An absolute path, normalised; `..` is refused because it defeats an allow-list."""
    if not isinstance(value, str) or not value.startswith("/"):
        walk.add(key_path, f"must be an absolute path, got {show(value)}", kind.allowed)
        return INVALID
    if ".." in value.split("/"):
        walk.add(key_path, f"must not contain '..', got {show(value)}", kind.allowed)
        return INVALID
    path = os.path.normpath(value)
    if kind.not_root and not path.strip("/"):  # "/" would let a job write anywhere
        walk.add(key_path, "must not be /", "a directory set aside for backups")
        return INVALID
    if kind.executable and walk.check_paths:
        problem = host.executable_problem(path)
        if problem:
            walk.add(key_path, problem, kind.allowed)
            return INVALID
    return path


def _list(walk: _Walk, key_path: str, setting: Setting, kind: ListOf, value: Any) -> Any:
    if not isinstance(value, list) or not value:
        walk.add(key_path, f"must {kind.must}, got {show(value)}", kind.allowed)
        return INVALID
    items = []
    for index, item in enumerate(value):
        item_path = f"{key_path}[{index}]"
        if kind.entry is None:
            assert kind.item is not None
            items.append(walk.value(item_path, setting, kind.item, item))
        elif isinstance(item, Mapping):
            named = kind.entry.name == "database" and isinstance(item.get("name"), str)
            walk.label = f"database {item['name']!r}: " if named else ""
            checked = walk.section(item_path, kind.entry, item)
            for rule in _ENTRY_RULES.get(kind.entry.name, ()):
                if checked is not INVALID:
                    rule(walk, item_path, item, checked)
            walk.label = ""
            items.append(checked)
        elif kind.item is None:
            walk.add(item_path, f"must be a mapping, got {show(item)}", ", ".join(kind.entry.keys()))
            items.append(INVALID)
        else:  # a plain item is the entry's main key, every other key at its default
            defaults = {key.name: key.default for key in kind.entry.settings if isinstance(key, Setting)}
            items.append({**defaults, kind.entry.main: walk.value(item_path, setting, kind.item, item)})
    if any(item is INVALID or (isinstance(item, dict) and INVALID in item.values()) for item in items):
        return INVALID
    return tuple(items)


def _cron(walk: _Walk, key_path: str, setting: Setting, kind: Cron, value: Any) -> Any:
    problem = cron_problem(value)
    if problem:
        walk.add(key_path, problem, kind.allowed)
        return INVALID
    return value.strip()


def _zone(walk: _Walk, key_path: str, setting: Setting, kind: Zone, value: Any) -> Any:
    if not isinstance(value, str) or (value != "UTC" and value not in available_timezones()):
        walk.add(key_path, f"must be a time zone, got {show(value)}", kind.allowed)
        return INVALID
    return value


_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(value: Any) -> int | None:
    """90, "90s", "30m", "6h", "2d", "1w" as seconds; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    return int(match[1]) * _UNITS[match[2]] if match else None


def _duration(walk: _Walk, key_path: str, setting: Setting, kind: Duration, value: Any) -> Any:
    seconds = duration_seconds(value)
    if seconds is None or not kind.low <= seconds <= kind.high:
        walk.add(key_path, f"must be a duration, got {show(value)}", kind.allowed)
        return INVALID
    return seconds


def _free(walk: _Walk, key_path: str, setting: Setting, kind: Free, value: Any) -> Any:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        walk.add(key_path, f"must be a mapping, got {show(value)}", kind.allowed)
        return INVALID
    return dict(value)


_KIND_CHECKS: dict[type, Callable[..., Any]] = {
    Integer: _integer,
    Number: _number,
    Choice: _choice,
    Name: _name,
    Dsn: _dsn,
    Boolean: _boolean,
    Path: _path,
    ListOf: _list,
    Cron: _cron,
    Zone: _zone,
    Duration: _duration,
    Free: _free,
}


def _default_note(given: Mapping[Any, Any], key: str) -> str:
    return "" if key in given else " (the default)"


def _retry_delays_ordered(walk: _Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    base, high = result["base_delay"], result["max_delay"]
    if base is INVALID or high is INVALID or high >= base:
        return
    setting = _declared(key_path, "max_delay")
    assert isinstance(setting.kind, Integer)
    walk.add(
        "retry.max_delay",
        f"must be at least retry.base_delay ({base}), got {high}{_default_note(given, 'max_delay')}",
        f"{base}-{setting.kind.high} seconds",
    )


def _lease_outlasts_two_heartbeats(
    walk: _Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]
) -> None:
    """A lease shorter than two heartbeats expires on one late renewal: a running job would be
    handed to a second worker while the first still runs it."""
    lease, heartbeat = result["lease_seconds"], result["heartbeat_interval"]
    if lease is INVALID or heartbeat is INVALID or lease >= 2 * heartbeat:
        return
    setting = _declared(key_path, "lease_seconds")
    assert isinstance(setting.kind, Integer)
    set_by = walk.report.where("heartbeat_interval")
    by = "" if set_by == f"{walk.report.source}: heartbeat_interval" else f", set by {set_by}"
    walk.add(
        "lease_seconds",
        f"must be at least twice heartbeat_interval ({heartbeat:g}{by}), "
        f"got {lease}{_default_note(given, 'lease_seconds')}",
        f"{max(setting.kind.low, math.ceil(2 * heartbeat))}-{setting.kind.high} seconds",
    )


def _declared(section_path: str, name: str) -> Setting:
    """The setting `name` of the section at `section_path` ("" for the top level)."""
    section: Section = ROOT
    for part in filter(None, section_path.split(".")):
        child = section.get(part)
        assert isinstance(child, Section)
        section = child
    setting = section.get(name)
    assert isinstance(setting, Setting)
    return setting


# Rules that relate settings of one section, run once the section's own keys are checked.
_RULES: dict[str, tuple[Callable[[_Walk, str, Mapping[Any, Any], dict[str, Any]], None], ...]] = {
    "retry": (_retry_delays_ordered,),
    "": (_lease_outlasts_two_heartbeats, list_rules.databases_agree, list_rules.schedules_agree),
}
# Rules of one list entry, by the entry section's name, run once the entry's own keys are checked.
_ENTRY_RULES: dict[str, tuple[Callable[[_Walk, str, Mapping[Any, Any], dict[str, Any]], None], ...]] = {
    "schedule": (list_rules.schedule_args,),
    "retention": (list_rules.retention_target,),
    "database": (list_rules.database_tools,),
}


def _build(checked: dict[str, Any], source: str) -> Config:
    lists = ("retry", "tools", "schedules", "retention", "databases")
    top = {key: value for key, value in checked.items() if key not in lists}
    databases = tuple(
        Database(entry["name"], entry["dsn"], entry["workers"], tuple(entry["tools"] or ()))
        for entry in checked["databases"] or ()
    )
    if databases:
        top["dsn"] = databases[0].dsn  # what a command that takes one database defaults to
    return Config(
        **top,
        databases=databases,
        schedules=tuple(_schedule(values) for values in checked["schedules"] or ()),
        retention=tuple(Retention(**values) for values in checked["retention"] or ()),
        retry=RetryConfig(**checked["retry"]),
        tools=Tools(tuple(_tool(name, values) for name, values in sorted(checked["tools"].items()))),
        source=source,
    )


def _schedule(values: dict[str, Any]) -> Schedule:
    return Schedule(**{**values, "args": values["args"] or {}})


def _tool(name: str, values: dict[str, Any]) -> ToolConfig:
    commands = values.get("allowed_commands", ())
    return ToolConfig(
        name=name,
        path=values.get("path"),
        run_as=values["run_as"],
        timeout=values["timeout"],
        config=values.get("config"),
        allowed_output_dirs=values.get("allowed_output_dirs", ()),
        allowed_commands=tuple(entry["path"] for entry in commands),
        kill_grace=values["kill_grace"],
        pass_credentials=tuple(entry["path"] for entry in commands if entry["pass_credentials"]),
    )
