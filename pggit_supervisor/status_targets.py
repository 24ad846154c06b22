"""Which targets `status` watches: each one the config names, by a schedule (its tool and args)
or a retention entry, in the form a retention target has (schema/015), so that the database
counts a schedule's backups and a retention entry's under one identity. A target's max_age is
the strictest of the schedules that back it up; a target only retention names has none (then
only a target that never had a verified backup is a problem)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .retention import Retention
from .scheduler import Schedule


@dataclass(frozen=True)
class WatchedTarget:
    """One target of one database's config: the identity sent to pggit.backup_target_status,
    a label for people and perfdata, the schedules that make its backups and its max_age."""

    target: Mapping[str, str]
    label: str
    schedules: tuple[str, ...]
    max_age: int | None


def schedule_target(schedule: Schedule) -> dict[str, str] | None:
    """The target a schedule's backups belong to, as _retention_identity names it (None for a
    Barman schedule without a server: its slots are refused, it backs nothing up)."""
    args: Mapping[str, Any] = schedule.args
    if schedule.tool == "pgbackrest":
        return {"tool": "pgbackrest", "stanza": str(args.get("stanza") or "main")}
    if schedule.tool == "barman":
        server = args.get("server_name")
        return {"tool": "barman", "server": str(server)} if server else None
    if schedule.tool == "pg_dump" and args.get("schema"):
        return {"tool": "pg_dump", "schema": str(args["schema"])}
    return {"tool": schedule.tool}


def retention_target(retention: Retention) -> dict[str, str]:
    """A retention entry's target without its database: the config already gave it to this
    database's part (Config.for_database), and the database fills in its own name."""
    return {key: str(value) for key, value in retention.target.items() if key != "database"}


def target_key(target: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A target as a dict key and sort key: its items in key order. json.dumps(sort_keys=True)
    did this at 3 us a call, 0.1 s of status with 10k targets; for the names a target allows
    (letters, digits, _ . -) the order is that JSON's."""
    return tuple(sorted(target.items()))


def label_of(target: Mapping[str, str], database: str) -> str:
    tool = target["tool"]
    if tool == "pgbackrest":
        return f"pgbackrest:{target['stanza']}"
    if tool == "barman":
        return f"barman:{target['server']}"
    schema = f"/{target['schema']}" if target.get("schema") else ""
    return f"{tool}:{database}{schema}"


def watched_targets(
    schedules: Sequence[Schedule], retention: Sequence[Retention], database: str
) -> list[WatchedTarget]:
    """Every target of one database's config, in the config's order (schedules first)."""
    found: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[str], list[int]]] = {}
    for target, schedule in [(schedule_target(s), s) for s in schedules] + [
        (retention_target(r), None) for r in retention
    ]:
        if target is None:
            continue
        _, names, ages = found.setdefault(target_key(target), (target, [], []))
        if schedule is not None:
            names.append(schedule.name)
            if schedule.max_age is not None and schedule.enabled:
                ages.append(schedule.max_age)
    return [
        WatchedTarget(target, label_of(target, database), tuple(names), min(ages) if ages else None)
        for target, names, ages in found.values()
    ]
