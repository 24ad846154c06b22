"""Checks merged settings against the declaration (settings.py) and builds the Config.

One walk over the declared sections: each value is checked by its kind, a left-out key takes
its default, and the few rules that relate two settings run right after their section. Every
problem is collected before anything is raised, so an operator fixes a broken file in one edit
instead of one restart per typo; unknown keys are errors, so a misspelt key cannot quietly fall
back to its default.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ..drills import DrillSchedule
from ..retention import Retention
from ..scheduler import Schedule
from . import host, list_rules, values
from .kinds import (
    Derived,
    Duration,
    Integer,
    Kind,
    ListOf,
    Path,
    Required,
    Section,
    Setting,
)
from .model import Config, Database, Endpoint, NotificationConfig, RetryConfig, ToolConfig, Tools
from .report import Report, show
from .settings import ROOT, WORKER_ID, allowed_of, builtin_tools
from .values import INVALID, duration_seconds

MISSING: Any = object()


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
        keys = section.keys()  # once per mapping: 10k retention entries asked it 40k times
        if not isinstance(value, Mapping):
            self.add(key_path, f"must be a mapping, got {show(value)}", ", ".join(keys))
            return INVALID
        for key in value:
            if key not in keys:
                self.add(_join(key_path, str(key)), "unknown key", ", ".join(keys))
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


_KIND_CHECKS: dict[type, Callable[..., Any]] = {**values.CHECKS, ListOf: _list}


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
    "notifications": (list_rules.notification_secret, list_rules.notification_backoff_ordered),
    "": (
        _lease_outlasts_two_heartbeats,
        list_rules.databases_agree,
        list_rules.schedules_agree,
        list_rules.retention_agree,
    ),
}
# Rules of one list entry, by the entry section's name, run once the entry's own keys are checked.
_ENTRY_RULES: dict[str, tuple[Callable[[_Walk, str, Mapping[Any, Any], dict[str, Any]], None], ...]] = {
    "schedule": (list_rules.schedule_kind, list_rules.schedule_args),
    "retention": (list_rules.retention_target,),
    "database": (list_rules.database_tools,),
}


def _build(checked: dict[str, Any], source: str) -> Config:
    lists = ("retry", "tools", "schedules", "retention", "databases", "notifications")
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
        schedules=tuple(_schedule(values) for values in checked["schedules"] or () if values["drill"] is None),
        drills=tuple(_drill(values) for values in checked["schedules"] or () if values["drill"] is not None),
        retention=tuple(Retention(**values) for values in checked["retention"] or ()),
        retry=RetryConfig(**checked["retry"]),
        notifications=_notifications(checked["notifications"]),
        tools=Tools(tuple(_tool(name, values) for name, values in sorted(checked["tools"].items()))),
        source=source,
    )


def _notifications(values: dict[str, Any]) -> NotificationConfig:
    endpoints = tuple(Endpoint(e["name"], e["url"], tuple(e["events"])) for e in values["endpoints"] or ())
    kept = {key: value for key, value in values.items() if key not in ("secret_file", "endpoints", "allowed_hosts")}
    return NotificationConfig(**kept, allowed_hosts=tuple(values["allowed_hosts"] or ()), endpoints=endpoints)


def _schedule(values: dict[str, Any]) -> Schedule:
    drill_only = ("drill", "max_drill_age")
    return Schedule(**{**{k: v for k, v in values.items() if k not in drill_only}, "args": values["args"] or {}})


def _drill(values: dict[str, Any]) -> DrillSchedule:
    drill = values["drill"]
    return DrillSchedule(
        values["name"], drill["every"], drill["target"], values["database"], values["max_drill_age"], values["enabled"]
    )


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
