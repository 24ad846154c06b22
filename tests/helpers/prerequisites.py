"""What the test run needs on the machine, checked once at session start: a missing tool is named
with the one command that installs everything, instead of surfacing as many unrelated errors."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

INSTALL_HINT = "install everything the tests need with (as root): sh packaging/install-deps.sh"

# Run by name (searched on PATH, as the runner's fixed PATH would find them).
COMMANDS = ("pg_dump", "pg_restore", "pg_basebackup", "psql", "pgbackrest", "barman", "runuser", "tar", "gzip", "git")
# Run from the server's own directory (Debian links none of them into /usr/bin).
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_verifybackup", "pg_receivewal")
# The OS users the tools run as (their packages create them).
USERS = ("postgres", "barman", "nobody")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def missing(bin_dir: Path, path: str | None = None) -> list[str]:
    """Everything absent, each named with what it is; empty when the machine is ready."""
    search = path if path is not None else os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = [f"{name} (command)" for name in COMMANDS if shutil.which(name, path=search) is None]
    found += [
        f"{bin_dir / name} (PostgreSQL 15 server)" for name in SERVER_PROGRAMS if not os.access(bin_dir / name, os.X_OK)
    ]
    found += [f"{name} (OS user)" for name in USERS if not _user_exists(name)]
    return found


def report(absent: list[str]) -> str:
    return "missing for the tests: " + ", ".join(absent) + "\n" + INSTALL_HINT
