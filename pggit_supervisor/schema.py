"""Installs and upgrades the SQL schema: the same numbered files `psql -f schema/install.sql` runs.

A file is applied once, in its own transaction, and records its own version in
pggit.backup_schema_migrations; a later release adds a file and `schema install` upgrades an
older database in place. An advisory lock keeps two installers from racing.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2.extensions import connection

from .errors import PggitError
from .rows import one_row

BOOTSTRAP = "000_bootstrap.sql"
# run before the bootstrap on every install: refuses a pggit schema a non-superuser controls
PREFLIGHT = "preflight.sql"
_NUMBERED = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# any constant: serialises concurrent installers on one database
_LOCK_KEY = 0x70676769_74  # "pggit"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


class SchemaError(PggitError):
    """The schema files cannot be found or applied."""


def schema_dir() -> Path:
    """Where the SQL files are: $PGGIT_SCHEMA_DIR, the source tree, or the installed share dir."""
    candidates = []
    if os.environ.get("PGGIT_SCHEMA_DIR"):
        candidates.append(Path(os.environ["PGGIT_SCHEMA_DIR"]))
    candidates += [
        Path(__file__).resolve().parent.parent / "schema",
        Path(sys.prefix) / "share" / "pggit-supervisor" / "schema",
        Path("/usr/share/pggit-supervisor/schema"),
    ]
    for candidate in candidates:
        if (candidate / BOOTSTRAP).is_file():
            return candidate
    raise SchemaError(
        "schema files not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + " (set PGGIT_SCHEMA_DIR to the directory holding 000_bootstrap.sql)"
    )


def migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or schema_dir()
    found = []
    for path in sorted(directory.iterdir()):
        match = _NUMBERED.match(path.name)
        if match and int(match.group(1)) > 0:
            found.append(Migration(int(match.group(1)), path.stem, path))
    return found


def installed_versions(conn: connection) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('pggit.backup_schema_migrations') IS NOT NULL")
        if not one_row(cur)[0]:
            return []
        cur.execute("SELECT version FROM pggit.backup_schema_migrations ORDER BY version")
        return [row[0] for row in cur.fetchall()]


def install(dsn: str, directory: Path | None = None, log: Callable[[str], object] = print) -> list[Migration]:
    """Applies every numbered file not yet recorded; returns the ones applied.

    The preflight runs first, every time (numbered files run once): a pggit schema whose
    objects a non-superuser owns or may create is refused before anything is written."""
    directory = directory or schema_dir()
    pending = migrations(directory)
    applied: list[Migration] = []
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET client_min_messages = warning")
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        conn.autocommit = False
        if (directory / PREFLIGHT).is_file():  # the files of an older release have none
            try:
                with conn, conn.cursor() as cur:
                    cur.execute((directory / PREFLIGHT).read_text())
            except psycopg2.Error as exc:
                raise SchemaError(f"{directory / PREFLIGHT}: {str(exc).strip()}") from exc
        with conn, conn.cursor() as cur:
            cur.execute((directory / BOOTSTRAP).read_text())
        with conn:
            done = set(installed_versions(conn))
        for migration in pending:
            if migration.version in done:
                continue
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(migration.path.read_text())
            except psycopg2.Error as exc:
                raise SchemaError(f"{migration.path}: {str(exc).strip()}") from exc
            applied.append(migration)
            log(f"applied {migration.name}")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    finally:
        conn.close()
    return applied


def status(dsn: str, directory: Path | None = None) -> tuple[int, int, list[Migration]]:
    """(installed version, newest available version, files not yet applied)."""
    available = migrations(directory)
    conn = psycopg2.connect(dsn)
    try:
        done = installed_versions(conn)
    finally:
        conn.close()
    pending = [m for m in available if m.version not in set(done)]
    return (max(done, default=0), max((m.version for m in available), default=0), pending)
