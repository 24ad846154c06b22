"""How one value is checked by its kind (an integer in bounds, a name by its pattern, a path,
a cron expression...): the leaves of validate.py's walk. Each check reports through the walk
(key path, what is wrong, what is allowed) and returns the value to use, or INVALID."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from zoneinfo import available_timezones

import psycopg2
from psycopg2.extensions import parse_dsn

from ..scheduler import cron_problem
from . import host
from .kinds import (
    Boolean,
    Choice,
    Cron,
    Dsn,
    Duration,
    Free,
    Integer,
    Name,
    Number,
    Path,
    Secret,
    Setting,
    Zone,
    show_default,
)
from .report import show
from .settings import allowed_of

INVALID: Any = object()  # a value whose problem has been reported


class Walk(Protocol):
    check_paths: bool

    def add(self, key_path: str, what: str, allowed: str) -> None: ...


def _integer(walk: Walk, key_path: str, setting: Setting, kind: Integer, value: Any) -> Any:
    allowed = allowed_of(kind)
    if isinstance(value, bool) or not isinstance(value, int):
        what = "a positive integer" if kind.low >= 1 else "a non-negative integer"
        walk.add(key_path, f"must be {what}, got {show(value)}", allowed)
        return INVALID
    if not kind.low <= value <= kind.high:
        walk.add(key_path, f"must be between {kind.low} and {kind.high}, got {value}", allowed)
        return INVALID
    return value


def _number(walk: Walk, key_path: str, setting: Setting, kind: Number, value: Any) -> Any:
    allowed = allowed_of(kind)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        walk.add(key_path, f"must be a number > 0, got {show(value)}", allowed)
        return INVALID
    if not kind.low <= value <= kind.high:
        walk.add(key_path, f"must be between {kind.low:g} and {kind.high:g}, got {value:g}", allowed)
        return INVALID
    return float(value)


def _choice(walk: Walk, key_path: str, setting: Setting, kind: Choice, value: Any) -> Any:
    if not isinstance(value, str) or value.upper() not in kind.values:
        walk.add(key_path, f"must be {kind.what}, got {show(value)}", allowed_of(kind))
        return INVALID
    return value.upper()


def _name(walk: Walk, key_path: str, setting: Setting, kind: Name, value: Any) -> Any:
    if not isinstance(value, str) or not kind.pattern.fullmatch(value) or value in kind.refused:
        walk.add(key_path, f"must {kind.must}, got {show(value)}", allowed_of(kind))
        return INVALID
    if kind.host == "user" and walk.check_paths:
        problem = host.user_problem(value)
        if problem:
            walk.add(key_path, problem, host.USER_ALLOWED)
            return INVALID
    return value


def _dsn(walk: Walk, key_path: str, setting: Setting, kind: Dsn, value: Any) -> Any:
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


def _boolean(walk: Walk, key_path: str, setting: Setting, kind: Boolean, value: Any) -> Any:
    if not isinstance(value, bool):
        allowed = f"{allowed_of(kind)} (default {show_default(setting.default)})"
        walk.add(key_path, f"must be true or false, got {show(value)}", allowed)
        return INVALID
    return value


def _path(walk: Walk, key_path: str, setting: Setting, kind: Path, value: Any) -> Any:
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


def _cron(walk: Walk, key_path: str, setting: Setting, kind: Cron, value: Any) -> Any:
    problem = cron_problem(value)
    if problem:
        walk.add(key_path, problem, kind.allowed)
        return INVALID
    return value.strip()


def _zone(walk: Walk, key_path: str, setting: Setting, kind: Zone, value: Any) -> Any:
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


def _duration(walk: Walk, key_path: str, setting: Setting, kind: Duration, value: Any) -> Any:
    seconds = duration_seconds(value)
    if seconds is None or not kind.low <= seconds <= kind.high:
        walk.add(key_path, f"must be a duration, got {show(value)}", kind.allowed)
        return INVALID
    return seconds


def _secret(walk: Walk, key_path: str, setting: Setting, kind: Secret, value: Any) -> Any:
    if not isinstance(value, str) or not kind.low <= len(value) <= kind.high or not _PRINTABLE.fullmatch(value):
        what = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        walk.add(key_path, f"must be {kind.allowed}, got {what} (not shown)", kind.allowed)
        return INVALID
    return value


_PRINTABLE = re.compile(r"[!-~]+")


def _free(walk: Walk, key_path: str, setting: Setting, kind: Free, value: Any) -> Any:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        walk.add(key_path, f"must be a mapping, got {show(value)}", kind.allowed)
        return INVALID
    return dict(value)


CHECKS: dict[type, Callable[..., Any]] = {
    Integer: _integer,
    Number: _number,
    Choice: _choice,
    Name: _name,
    Dsn: _dsn,
    Boolean: _boolean,
    Path: _path,
    Cron: _cron,
    Zone: _zone,
    Duration: _duration,
    Secret: _secret,
    Free: _free,
}
