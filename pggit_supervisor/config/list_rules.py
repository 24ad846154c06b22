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
    check_paths: bool

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


def database_tools(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """A database's workers run some of the configured tools: a name the tools section does not
    configure would leave its jobs unclaimed forever."""
    configured = walk.checked.get("tools")
    if not isinstance(configured, dict):
        return
    for index, name in enumerate(result["tools"] or ()):
        if name not in configured:
            walk.add(
                f"{key_path}.tools[{index}]",
                f"{name!r} is not configured under tools",
                ", ".join(sorted(configured)) or "the tools configured under tools",
            )


def databases_agree(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """Either dsn (one database) or databases (several); each listed database once, by name and
    by connection, so that no database gets two pools of workers."""
    dsn_allowed = "a postgresql:// URI or a libpq key=value string, or databases: a list of databases"
    if "dsn" in given and "databases" in given:
        walk.add("dsn", "must not be set together with databases", "dsn for one database, or databases for several")
    elif "dsn" not in given and "databases" not in given:
        walk.add("dsn", "required", dsn_allowed)
    written = given.get("databases")
    names: set[str] = set()
    places: dict[tuple[str, str, str], str] = {}
    for index, entry in enumerate(written if isinstance(written, list) else []):
        if not isinstance(entry, Mapping):
            continue
        name, dsn = entry.get("name"), entry.get("dsn")
        if isinstance(name, str) and name in names:
            walk.add(f"databases[{index}].name", f"duplicate database name {name!r}", "each name once")
        names.add(str(name))
        place = _place(dsn)
        if place is not None and place in places:
            walk.add(
                f"databases[{index}].dsn",
                f"database {name!r}: the same database as {places[place]!r}",
                "each database once (its workers would be counted twice)",
            )
        elif place is not None:
            places[place] = str(name)


def _place(dsn: Any) -> tuple[str, str, str] | None:
    """host, port and dbname of a DSN: what makes two DSNs the same database."""
    if not isinstance(dsn, str):
        return None
    try:
        parts = parse_dsn(dsn)
    except Exception:  # reported by the dsn's own check
        return None
    return (parts.get("host", ""), parts.get("port", ""), parts.get("dbname", ""))


def served_names(checked: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The names schedules and retention targets may give as `database`: the listed databases'
    (or the dbname of dsn); None while they are not known (invalid, or dsn without a dbname)."""
    databases = checked.get("databases")
    if isinstance(databases, tuple):
        return tuple(entry["name"] for entry in databases)
    database = _database_of(checked.get("dsn"))
    return None if database is None else (str(database),)


def schedules_agree(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """Schedule names are unique, and each names one served database (optional when there is
    only one)."""
    written, schedules = given.get("schedules"), result.get("schedules")
    seen: set[str] = set()
    for index, entry in enumerate(written if isinstance(written, list) else []):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name in seen:
            walk.add(f"schedules[{index}].name", f"duplicate schedule name {name!r}", "each name once")
        seen.add(str(name))
    names = served_names(result)
    if not isinstance(schedules, tuple) or names is None:
        return
    listed = isinstance(result.get("databases"), tuple)
    for index, schedule in enumerate(schedules):
        database = schedule["database"]
        if database is None and len(names) > 1:
            walk.add(
                f"schedules[{index}].database",
                f"schedule {schedule['name']!r}: required, there are {len(names)} databases",
                ", ".join(names),
            )
        elif database is not None and database not in names:
            what = "a listed database" if listed else "the database of dsn"
            walk.add(
                f"schedules[{index}].database",
                f"schedule {schedule['name']!r}: {database!r} is not {what}",
                ", ".join(names),
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
    databases = walk.checked.get("databases")
    if isinstance(databases, tuple):  # the listed name, or the dbname its dsn connects to
        names = {entry["name"] for entry in databases} | {_database_of(entry["dsn"]) for entry in databases}
        if "database" in target and target["database"] not in names:
            allowed = ", ".join(entry["name"] for entry in databases)
            walk.add(f"{path}.database", f"{target['database']!r} is not a listed database", allowed)
        return
    database = _database_of(walk.checked.get("dsn"))
    if "database" in target and database is not None and target["database"] != database:
        walk.add(f"{path}.database", f"{target['database']!r} is not the database of dsn", str(database))


def notification_secret(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """secret or secret_file, not both; the file's first line becomes the secret (read here, so
    that a missing or empty file stops the service at start, not at the first delivery)."""
    path = result.get("secret_file")
    if "secret" in given and "secret_file" in given:
        walk.add(f"{key_path}.secret_file", "must not be set together with secret", "secret or secret_file")
        return
    if not isinstance(path, str) or not walk.check_paths:
        return
    try:
        with open(path, encoding="utf-8") as file:
            secret = file.readline().strip()
    except OSError as exc:
        walk.add(f"{key_path}.secret_file", f"cannot read {path}: {exc.strerror or exc}", "a readable file")
        return
    except UnicodeError:
        walk.add(f"{key_path}.secret_file", f"{path} is not UTF-8 text", "a file whose first line is the secret")
        return
    if not 16 <= len(secret) <= 256 or not all("!" <= char <= "~" for char in secret):
        walk.add(
            f"{key_path}.secret_file",
            f"{path}: its first line must be 16-256 printable ASCII characters without spaces (not shown)",
            "a file whose first line is the secret",
        )
        return
    result["secret"] = secret


def notification_backoff_ordered(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    base, cap = result.get("backoff_base"), result.get("backoff_cap")
    if isinstance(base, int) and isinstance(cap, int) and cap < base:
        default = "" if "backoff_cap" in given else " (the default)"
        walk.add(
            f"{key_path}.backoff_cap",
            f"must be at least backoff_base ({base}), got {cap}{default}",
            f"{base}-604800 seconds",
        )
    names = [e.get("name") for e in given.get("endpoints") or [] if isinstance(e, Mapping)]
    for index, name in enumerate(names):
        if name in names[:index]:
            walk.add(f"{key_path}.endpoints[{index}].name", f"duplicate endpoint name {name!r}", "each name once")
