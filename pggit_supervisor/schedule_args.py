"""A schedule's `args`, checked as the pggit.backup_* function will check them at 2 a.m.

args are the function's parameters without p_ (`branch` for p_branch_name) plus `options` (its
p_options). The keys each function takes are declared here (schema/014's _enqueue_scheduled says
the same: tests/test_config_schedules.py holds them together); the values go through the tool
adapter's own parse of the spec the function would write (tools' PARAMETERS, NAME_PATTERN), so
check-config, the SQL and the worker apply one set of rules. What only the database knows (does
the branch exist, the schema) is left to the slot's record, which says `refused` and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import JobError
from .specs.barman import REUSE_BACKUP_ALIASES, BarmanParams
from .specs.pg_basebackup import BaseBackupParams
from .specs.pg_dump import DumpParams
from .specs.pgbackrest import BackRestParams

ARGS: Mapping[str, tuple[str, ...]] = {
    "pgbackrest": ("backup_type", "branch", "stanza", "options"),
    "barman": ("server_name", "branch", "options"),
    "pg_dump": ("branch", "schema", "format", "output_path", "options"),
    "pg_basebackup": ("branch", "output_path", "options"),
}
_COMMON_OPTIONS = (
    "priority",
    "max_attempts",
    "timeout_seconds",
    "webhook_url",
    "notify_on_success",
    "notify_on_failure",
)
OPTIONS: Mapping[str, tuple[str, ...]] = {
    "pgbackrest": ("repo", "type", *_COMMON_OPTIONS),
    "barman": ("wait", "reuse-backup", *_COMMON_OPTIONS),
    "pg_dump": ("compression_level", "jobs", *_COMMON_OPTIONS),
    "pg_basebackup": ("format", "compression", "compression_level", "checkpoint", *_COMMON_OPTIONS),
}
# as pggit._common_options checks webhook_url (schema/003)
_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~:/?#@!$&()*+,;=%-]*)?")
_COMMON_BOUNDS = {"priority": (0, 100), "max_attempts": (1, 100), "timeout_seconds": (1, 604800)}


def problems(tool: str, args: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key below args, what is wrong, what is allowed) for each problem; none: it will schedule."""
    found: list[tuple[str, str, str]] = []
    allowed = ARGS[tool]
    for key, value in args.items():
        if key not in allowed:
            found.append((str(key), f"is not a parameter of pggit.backup_{tool}", ", ".join(allowed)))
        elif key != "options" and not isinstance(value, str):
            found.append((key, f"must be a string, got {value!r}", "a string"))
    options = args.get("options", {})
    if not isinstance(options, Mapping):
        found.append(("options", "must be a mapping", ", ".join(OPTIONS[tool])))
        options = {}
    found.extend(_option_problems(tool, options))
    if found:
        return found
    return _spec_problems(tool, args, options)


def _option_problems(tool: str, options: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    found = []
    for key, value in options.items():
        path = f"options.{key}"
        if key not in OPTIONS[tool]:
            found.append((path, "unknown option", ", ".join(OPTIONS[tool])))
        elif key in _COMMON_BOUNDS:
            low, high = _COMMON_BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                found.append((path, f"{value!r} is not allowed", f"an integer from {low} to {high}"))
        elif key.startswith("notify_on_") and not isinstance(value, bool):
            found.append((path, f"{value!r} is not allowed", "true, false"))
        elif key == "webhook_url" and (not isinstance(value, str) or len(value) > 2048 or not _URL.fullmatch(value)):
            found.append((path, "is not an http(s) URL", "an http:// or https:// URL of at most 2048 characters"))
    return found


def _spec_problems(tool: str, args: Mapping[str, Any], options: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The params the function would store, through the parse the adapter re-checks a job with."""

    backup_type = args.get("backup_type", "full")
    if tool == "pgbackrest" and options.get("type", backup_type) != backup_type:
        return [("options.type", f"{options['type']!r} disagrees with backup_type {backup_type!r}", "leave it out")]
    specs: dict[str, tuple[str, Any, dict[str, Any]]] = {
        "pgbackrest": (
            "backup_type",
            BackRestParams.parse,
            {"stanza": args.get("stanza", "main"), "type": backup_type, "repo": options.get("repo")},
        ),
        "barman": (
            "server_name",
            BarmanParams.parse,
            {
                "server": args.get("server_name"),
                "wait": options.get("wait", True),
                "reuse_backup": _alias(REUSE_BACKUP_ALIASES, options.get("reuse-backup")),
            },
        ),
        "pg_dump": (
            "format",
            DumpParams.parse,
            {
                "schema": args.get("schema"),
                "format": args.get("format", "custom"),
                "output_dir": args.get("output_path", "/backups"),
                "compression_level": options.get("compression_level"),
                "jobs": options.get("jobs"),
            },
        ),
        "pg_basebackup": (
            "options.format",
            BaseBackupParams.parse,
            {
                "output_dir": args.get("output_path", "/backups"),
                "format": options.get("format", "plain"),
                "compression": options.get("compression", "none"),
                "compression_level": options.get("compression_level"),
                "checkpoint": options.get("checkpoint", "fast"),
            },
        ),
    }
    main_key, parse, params = specs[tool]
    try:
        parse({key: value for key, value in params.items() if value is not None})
    except JobError as refused:
        message, _, allowed = str(refused).removesuffix(")").partition(" (allowed: ")
        return [(_arg_of(tool, message, main_key), message.partition(": ")[2] or message, allowed or tool)]
    return []


def _alias(aliases: Mapping[str, str], value: Any) -> Any:
    return aliases.get(value, value) if isinstance(value, str) else value


# the spec's parameter a refusal names -> the args key the operator wrote
_SPEC_TO_ARG = {
    "stanza": "stanza",
    "type": "backup_type",
    "repo": "options.repo",
    "server": "server_name",
    "wait": "options.wait",
    "reuse_backup": "options.reuse-backup",
    "schema": "schema",
    "output_dir": "output_path",
    "compression_level": "options.compression_level",
    "jobs": "options.jobs",
    "compression": "options.compression",
    "checkpoint": "options.checkpoint",
}


def _arg_of(tool: str, message: str, default: str) -> str:
    name = message.removeprefix("parameter ").split(":", 1)[0]
    if name == "format":
        return "options.format" if tool == "pg_basebackup" else "format"
    return _SPEC_TO_ARG.get(name, default)
