"""The rules of the list sections (schedules[], retention[]) that relate an entry's keys to each
other or to the rest of the config, run by validate.py once the keys themselves are checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

from psycopg2.extensions import parse_dsn

from .. import schedule_args as args_rules
from ..retention import TARGET_KEYS
from .settings import SCHEDULE_NAME as NAME_PATTERN  # the stanza / server rule, as tools.NAME_PATTERN


class Walk(Protocol):
    checked: dict[str, Any]

    def add(self, key_path: str, what: str, allowed: str) -> None: ...


def schedule_args(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """A schedule's args through the rules of the backup_* function its slots call."""
    args = result["args"] or {}
    for key, what, allowed in args_rules.problems(result["tool"], args):
        walk.add(f"{key_path}.args.{key}", f"schedule {result['name']!r}: {what}", allowed)
    output = args.get("output_path")
    dirs = walk.checked.get(f"tools.{result['tool']}.allowed_output_dirs")
    if isinstance(output, str) and isinstance(dirs, tuple) and output.startswith("/"):
        path = os.path.normpath(output)
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs):
            walk.add(
                f"{key_path}.args.output_path",
                f"schedule {result['name']!r}: {output!r} is not below tools.{result['tool']}.allowed_output_dirs",
                ", ".join(dirs),
            )


def schedules_agree(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """Schedule names are unique, and name the one database of dsn (with several databases,
    `database` will pick one of them)."""
    written, schedules, dsn = given.get("schedules"), result.get("schedules"), result.get("dsn")
    seen: set[str] = set()
    for index, entry in enumerate(written if isinstance(written, list) else []):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name in seen:
            walk.add(f"schedules[{index}].name", f"duplicate schedule name {name!r}", "each name once")
        seen.add(str(name))
    if not isinstance(schedules, tuple):
        return
    database = parse_dsn(dsn).get("dbname") if isinstance(dsn, str) else None
    for index, schedule in enumerate(schedules):
        if schedule["database"] is not None and database is not None and schedule["database"] != database:
            walk.add(
                f"schedules[{index}].database",
                f"schedule {schedule['name']!r}: {schedule['database']!r} is not the database of dsn",
                str(database),
            )


def _database_of(dsn: Any) -> str | None:
    return parse_dsn(dsn).get("dbname") if isinstance(dsn, str) else None


def retention_target(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """A target names one thing a tool backs up, as pggit.retention_plan reads it."""
    target, path = result["target"], f"{key_path}.target"
    tool = target.get("tool")
    if tool not in TARGET_KEYS:
        walk.add(f"{path}.tool", f"must be a backup tool, got {tool!r}", ", ".join(TARGET_KEYS))
        return
    keys, required = TARGET_KEYS[tool]
    for key, value in target.items():
        if key not in keys:
            walk.add(f"{path}.{key}", f"is not a key of a {tool} target", ", ".join(keys))
        elif not isinstance(value, str):
            walk.add(f"{path}.{key}", f"must be a string, got {value!r}", "a name")
    if required and not (isinstance(target.get(required), str) and NAME_PATTERN.fullmatch(target[required])):
        walk.add(f"{path}.{required}", f"must be a name, got {target.get(required)!r}", "1-63 letters, digits, _ . -")
    database = _database_of(walk.checked.get("dsn"))
    if "database" in target and database is not None and target["database"] != database:
        walk.add(f"{path}.database", f"{target['database']!r} is not the database of dsn", str(database))
