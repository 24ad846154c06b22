"""Barman's command line as the adapter speaks it: `barman [-c CFG] ...` argv, its JSON answers,
the backup a run made, and the recover command a restore runs."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..config import ToolConfig
from ..errors import invalid
from ..runner import RunResult
from .params import NAME_PATTERN

BACKUP_ID = re.compile(r"\d{8}T\d{6}")
# list/show/check/version answer from Barman's catalogue and config: minutes mean a hang
QUERY_TIMEOUT = 600.0
# a JSON answer must be read whole: a catalogue of thousands of backups still fits
QUERY_OUTPUT_LIMIT = 4 << 20
LOCATION = re.compile(r"barman://(?P<server>[^/]+)/(?P<backup_id>[^/]+)")
# What `barman backup` prints when it starts copying; names the backup this run made.
STARTED = re.compile(
    r"Starting backup (?:using \S+ method for server \S+ in \S*/base/|copy via \S+ for )"
    r"(\d{8}T\d{6})"
)


def restore_argv(tool: ToolConfig, location: str, target_dir: str) -> list[str]:
    """`barman [-c CFG] recover SERVER BACKUP_ID TARGET_DIR` for a barman://SERVER/BACKUP_ID location.

    A local recovery (no --remote-ssh-command): run it as Barman's user (the tool's run_as), so
    the files it writes are owned by barman; chown -R them to the PostgreSQL user before starting
    the cluster. Recovering to the end of the backup (no --target-*), Barman 3.4 also copies the
    WAL segments from begin_wal to end_wal into TARGET_DIR/pg_wal, so the cluster reaches a
    consistent state by itself: no --get-wal, restore_command or recovery.signal is needed.
    The restored postgresql.conf is the source's (its port, unix_socket_directories): override
    them (`pg_ctl -o "-p PORT -k DIR"`) to start it on the same host. Barman creates TARGET_DIR
    if missing and writes over what it holds: the caller makes sure it is new or empty.
    Refused for good: a location that is not barman://SERVER/BACKUP_ID, a relative target.
    """
    match = LOCATION.fullmatch(location)
    if not match or not NAME_PATTERN.fullmatch(match["server"]) or not BACKUP_ID.fullmatch(match["backup_id"]):
        raise invalid(f"{location!r} is not a Barman backup location (barman://SERVER/YYYYMMDDTHHMMSS)")
    if not os.path.isabs(target_dir):
        raise invalid(f"restore target {target_dir!r} is not an absolute path")
    return barman_argv(tool, "recover", match["server"], match["backup_id"], target_dir)


def delete_argv(tool: ToolConfig, location: str) -> list[str]:
    """`barman [-c CFG] delete SERVER BACKUP_ID` for a barman://SERVER/BACKUP_ID location
    (refused for good otherwise)."""
    match = LOCATION.fullmatch(location)
    if not match or not NAME_PATTERN.fullmatch(match["server"]) or not BACKUP_ID.fullmatch(match["backup_id"]):
        raise invalid(f"{location!r} is not a Barman backup location (barman://SERVER/YYYYMMDDTHHMMSS)")
    return barman_argv(tool, "delete", match["server"], match["backup_id"])


def barman_argv(tool: ToolConfig, *args: str) -> list[str]:
    """`barman [-c CFG] ARGS`: -c and -f are global options, before the sub-command."""
    return [tool.executable(), *(["-c", tool.config] if tool.config else []), *args]


def parsed(result: RunResult) -> dict[str, Any] | None:
    """The JSON object a `barman -f json` run printed; None if it printed none, or not all of it."""
    if result.stdout.dropped:
        return None
    try:
        answer = json.loads(result.stdout.text() or "{}")
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def config_name(tool: ToolConfig) -> str:
    return tool.config or "Barman's default configuration (~/.barman.conf, /etc/barman.conf)"


def new_backup(after: set[str], before: tuple[str, ...], stdout: str) -> str | None:
    """The backup this run made: the new id Barman named when it started, else the only new id."""
    new = set(after) - set(before)
    named = STARTED.search(stdout)
    if named and named.group(1) in new:
        return named.group(1)
    return new.pop() if len(new) == 1 else None


def last_lines(text: str, count: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])
