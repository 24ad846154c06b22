"""The rules of the list sections (schedules[], retention[]) that relate an entry's keys to each
other or to the rest of the config, run by validate.py once the keys themselves are checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

from psycopg2.extensions import parse_dsn

from .. import schedule_args as args_rules
from ..drills import DRILL_TOOLS
from ..retention import TARGET_KEYS
from .settings import SCHEDULE_NAME as NAME_PATTERN  # the stanza / server rule, as tools.NAME_PATTERN
from .values import duration_seconds


class Walk(Protocol):
    checked: dict[str, Any]
    check_paths: bool

    def add(self, key_path: str, what: str, allowed: str) -> None: ...


def schedule_kind(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """A backup schedule has cron and tool; a drill schedule has `drill: {every, target}` and
    neither (its slots are every `every` seconds; it drills, it does not back up)."""
    name, drill = result["name"], result.get("drill")
    if drill is None:
        for key in ("cron", "tool"):
            if result.get(key) is None and key not in given:
                walk.add(f"{key_path}.{key}", f"schedule {name!r}: required (unless it is a drill)", _REQUIRED[key])
        if given.get("max_drill_age") is not None:
            walk.add(f"{key_path}.max_drill_age", f"schedule {name!r}: only a drill has one", "drill: {every, target}")
        return
    for key in ("cron", "tool", "args", "catch_up", "overlap", "starting_deadline", "max_age"):
        if key in given:
            walk.add(f"{key_path}.{key}", f"schedule {name!r}: a drill has no {key}", "drill: {every, target}")
    if not isinstance(drill, Mapping):
        walk.add(f"{key_path}.drill", f"schedule {name!r}: must be a mapping", "every: a duration, target: {tool, ...}")
        return
    for key in drill:
        if key not in ("every", "target"):
            walk.add(f"{key_path}.drill.{key}", f"schedule {name!r}: unknown key", "every, target")
    every = duration_seconds(drill.get("every"))
    if every is None or not 3600 <= every <= 366 * 86400 or every % 60:
        walk.add(
            f"{key_path}.drill.every",
            f"schedule {name!r}: must be a duration of whole minutes, got {drill.get('every')!r}",
            "1h to 366d (90m, 6h, 7d, 2w)",
        )
    target = drill.get("target")
    tool = target.get("tool") if isinstance(target, Mapping) else None
    if not isinstance(target, Mapping) or tool not in DRILL_TOOLS:
        walk.add(
            f"{key_path}.drill.target",
            f"schedule {name!r}: must be a pg_dump or pg_basebackup target, got {target!r}",
            "{tool: pg_dump, schema: ...} or {tool: pg_basebackup}",
        )
        return
    keys, _ = TARGET_KEYS[tool]
    for key, value in target.items():
        if key not in keys or not isinstance(value, str):
            walk.add(
                f"{key_path}.drill.target.{key}",
                f"schedule {name!r}: not a string key of a {tool} target",
                ", ".join(keys),
            )
    result["drill"] = {"every": every, "target": dict(target)}


_REQUIRED = {
    "cron": "5 cron fields (minute hour day month weekday) or @daily, @hourly",
    "tool": "a built-in backup tool",
}


def schedule_args(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """A schedule's args through the rules of the backup_* function its slots call."""
    if result.get("drill") is not None or result.get("tool") is None:
        return
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


# where a schedule's args name what a retention target's repository key names
_REPOSITORY_ARG = {"pgbackrest": ("stanza", "stanza", "main"), "barman": ("server", "server_name", None)}


def retention_agree(walk: Walk, key_path: str, given: Mapping[Any, Any], result: dict[str, Any]) -> None:
    """Each target is decided by one queue database. A pgBackRest stanza or Barman server is a
    repository outside any database: if two queues recorded its backups, each would count only
    its own, and one could expire a set the other's backups depend on (`pgbackrest expire --set`
    takes its dependants too). So a stanza or server is retained in one named database, once,
    and no other served database's schedules back it up."""
    entries, names = result.get("retention"), served_names(result)
    if not isinstance(entries, tuple) or names is None:
        return
    decided_in: dict[tuple[str, str], tuple[int, str | None]] = {}
    seen: dict[tuple[str, str | None, str | None], int] = {}
    for index, entry in enumerate(entries):
        target, database = entry["target"], entry["database"]
        tool, path = target.get("tool"), f"retention[{index}].database"
        if database is not None and database not in names:
            walk.add(path, f"{database!r} is not a served database", ", ".join(names))
            continue
        if database is not None and target.get("database") not in (None, database):
            walk.add(path, f"{database!r} is not the target's database {target['database']!r}", str(target["database"]))
            continue
        decided = database or target.get("database") or (names[0] if len(names) == 1 else None)
        if tool in _REPOSITORY_ARG:
            key, _, _ = _REPOSITORY_ARG[tool]
            what = f"{tool} {key} {target.get(key)!r}"
            if decided is None:
                walk.add(
                    path,
                    f"required for a {key}: {len(names)} databases are served and one queue must decide over {what}",
                    ", ".join(names),
                )
                continue
            repository = (str(tool), str(target.get(key)))
            if repository in decided_in:
                earlier, where = decided_in[repository]
                walk.add(
                    f"retention[{index}].target",
                    f"{what} is retained already by retention[{earlier}] (database {where!r})",
                    "each stanza or server once",
                )
            decided_in[repository] = (index, decided)
            continue
        identity = (str(tool), decided, target.get("schema"))
        if identity in seen:
            walk.add(
                f"retention[{index}].target", f"the same target as retention[{seen[identity]}]", "each target once"
            )
        seen[identity] = index
    _schedules_record_in(walk, result, names, decided_in)


def _schedules_record_in(
    walk: Walk,
    result: Mapping[str, Any],
    names: tuple[str, ...],
    decided_in: Mapping[tuple[str, str], tuple[int, str | None]],
) -> None:
    """A schedule backing up a retained stanza or server enqueues into the database that decides over it."""
    schedules = result.get("schedules")
    for index, schedule in enumerate(schedules if isinstance(schedules, tuple) else ()):
        if schedule["tool"] not in _REPOSITORY_ARG:
            continue
        key, arg, default = _REPOSITORY_ARG[schedule["tool"]]
        repository = (schedule["tool"], str((schedule["args"] or {}).get(arg, default)))
        database = schedule["database"] or (names[0] if len(names) == 1 else None)
        if repository not in decided_in or database is None:
            continue
        retained, where = decided_in[repository]
        if database != where:
            walk.add(
                f"schedules[{index}].database",
                f"schedule {schedule['name']!r}: {schedule['tool']} {key} {repository[1]!r} is retained in database "
                f"{where!r} (retention[{retained}]); its backups recorded in {database!r} would not be counted there",
                str(where),
            )


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
