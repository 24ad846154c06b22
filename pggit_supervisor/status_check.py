"""`pggit-supervisor status --check`: OK / WARNING / CRITICAL / UNKNOWN by the Nagios/Icinga plugin
conventions, judged by pure functions over a frozen snapshot (no database here, so every case
is a unit test).

What it guards against is a backup that silently did not happen, so nothing that did not happen
reads as fine: a target that never had a verified backup is CRITICAL, not OK; a time the
database does not have is None, never 0, and its performance value is `U` (undetermined); a
database that cannot be read is UNKNOWN, never OK; a database with nothing to measure (no
target in the config) is UNKNOWN too. Precedence: CRITICAL, then UNKNOWN, then WARNING, so one
unreadable database never hides another's stale backup and a warning never hides an unknown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_PRECEDENCE = (OK, WARNING, UNKNOWN, CRITICAL)  # worst last

# What an age measures: the newest verified backup of a target, the newest record of a worker
# serving the database, how far a WAL archive is behind, the last passed drill.
BACKUP = "backup"
WORKERS = "workers"
WAL = "wal"  # how far a stanza's or server's WAL archive is behind (pggit.archive_freshness)
DRILL = "drill"  # the last passed restore drill of a drill schedule's target
_NEVER = {
    BACKUP: "never backed up (no verified backup)",
    WORKERS: "no worker ever seen",
    WAL: "no reading of its WAL archive yet",
    DRILL: "no restore drill ever passed",
}
_WHAT = {
    BACKUP: "newest verified backup",
    WORKERS: "newest worker record",
    WAL: "oldest unarchived WAL",
    DRILL: "last passed drill",
}
_LIMIT = {BACKUP: "max_age", WORKERS: "worker_silence", WAL: "max_wal_age", DRILL: "max_drill_age"}
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class Age:
    """How old something that must keep happening is, against its limit. seconds None: it
    never happened (CRITICAL whatever the limit); limit None: only never is a problem."""

    kind: str
    label: str
    seconds: float | None
    limit: float | None


@dataclass(frozen=True)
class DatabaseSnapshot:
    """One served database as --check needs it; error set when it could not be read."""

    name: str
    error: str | None = None
    ages: tuple[Age, ...] = ()
    unacknowledged_failures: int = 0
    ready: int = 0
    in_progress: int = 0
    oldest_ready_seconds: float | None = None


@dataclass(frozen=True)
class Verdict:
    code: int
    problems: tuple[tuple[int, str], ...]
    perfdata: tuple[str, ...]
    summary: str

    @property
    def state(self) -> str:
        return STATE_NAMES[self.code]

    def line(self) -> str:
        """The plugin's one line: `PGGIT STATE - summary | perfdata`."""
        perf = " ".join(self.perfdata)
        return f"PGGIT {self.state} - {self.summary}" + (f" | {perf}" if perf else "")


def worst(codes: Sequence[int]) -> int:
    return max(codes, key=_PRECEDENCE.index, default=OK)


def human(seconds: float) -> str:
    """3d 4h, 2h, 7m 3s, 12s: the largest unit and the next one unless it is 0."""
    left = int(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units):
        if left >= size or unit == "s":
            text = f"{left // size}{unit}"
            if index + 1 < len(units) and (rest := (left % size) // units[index + 1][1]):
                text += f" {rest}{units[index + 1][0]}"
            return text
    return "0s"


def judge_age(age: Age, fraction: float) -> tuple[int, str | None]:
    """The state of one age and, when it is not OK, what to say."""
    what = _WHAT.get(age.kind, f"newest {age.kind}")
    limit_name = _LIMIT.get(age.kind, "its limit")
    if age.seconds is None:
        return CRITICAL, f"{age.label}: {_NEVER.get(age.kind, f'no {age.kind} ever recorded')}"
    if age.limit is None:
        return OK, None
    if age.seconds > age.limit:
        return CRITICAL, f"{age.label}: {what} is {human(age.seconds)} old ({limit_name} {human(age.limit)})"
    if age.seconds >= fraction * age.limit:
        return (
            WARNING,
            f"{age.label}: {what} is {human(age.seconds)} old, {age.seconds / age.limit:.0%} of {limit_name} "
            f"{human(age.limit)}",
        )
    return OK, None


def judge_database(database: DatabaseSnapshot, fraction: float) -> list[tuple[int, str]]:
    """Every problem of one database, each with its state (none: all is well)."""
    if database.error is not None:
        return [(UNKNOWN, f"database {database.name}: cannot be read: {database.error}")]
    found: list[tuple[int, str]] = []
    if not any(age.kind == BACKUP for age in database.ages):
        found.append(
            (UNKNOWN, f"database {database.name}: no backup target to check (give schedules or retention targets)")
        )
    for age in database.ages:
        code, problem = judge_age(age, fraction)
        if problem is not None:
            found.append((code, problem))
    if database.unacknowledged_failures:
        found.append(
            (
                CRITICAL,
                f"database {database.name}: {database.unacknowledged_failures} unacknowledged permanent "
                "failure(s) (pggit.acknowledge_failure)",
            )
        )
    return found


_LABEL = re.compile(r"[^A-Za-z0-9_.:/-]")


def perf_label(text: str) -> str:
    """A label with no quote, = or space (plugins quote those; we avoid them)."""
    return _LABEL.sub("_", text)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")


def perfdata(database: DatabaseSnapshot, fraction: float) -> list[str]:
    """label=value[UOM];warn;crit;min;max for one database; U for a value the database lacks."""
    if database.error is not None:
        return []
    name = perf_label(database.name)
    oldest = "U" if database.oldest_ready_seconds is None else _number(database.oldest_ready_seconds) + "s"
    found = [
        f"{name}_ready={database.ready};;;0",
        f"{name}_in_progress={database.in_progress};;;0",
        f"{name}_oldest_ready={oldest};;;0",
        f"{name}_unacknowledged_failures={database.unacknowledged_failures};;0;0",
    ]
    for age in database.ages:
        value = "U" if age.seconds is None else _number(age.seconds) + "s"
        warn = crit = ""
        if age.limit is not None:
            warn, crit = _number(fraction * age.limit), _number(age.limit)
        found.append(f"{perf_label(f'{database.name}_{age.kind}_{age.label}')}_age={value};{warn};{crit};0")
    return found


def evaluate(databases: Sequence[DatabaseSnapshot], fraction: float) -> Verdict:
    """The probe's verdict over every served database."""
    problems = [problem for database in databases for problem in judge_database(database, fraction)]
    code = worst([c for c, _ in problems]) if databases else UNKNOWN
    if not databases:
        problems = [(UNKNOWN, "no database is served")]
    shown = sorted(problems, key=lambda item: -_PRECEDENCE.index(item[0]))
    if shown:
        summary = "; ".join(text for _, text in shown[:MAX_PROBLEMS_SHOWN])
        if len(shown) > MAX_PROBLEMS_SHOWN:
            summary += f"; and {len(shown) - MAX_PROBLEMS_SHOWN} more"
    else:
        targets = sum(1 for database in databases for age in database.ages if age.kind == BACKUP)
        summary = f"{targets} target(s) backed up within their limits in {len(databases)} database(s)"
    lines = [line for database in databases for line in perfdata(database, fraction)]
    return Verdict(code, tuple(shown), tuple(lines), summary.replace("|", "/").replace("\n", " "))
