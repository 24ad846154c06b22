"""Backups for retention tests: real rows made by the scheduling functions, finished (and
verified, or not) at a chosen time by the test-only `force` (see queue_helpers)."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from helpers.cluster import BIN
from helpers.db import scalar
from helpers.queue import force


def make(
    db,
    done: datetime,
    *,
    verified: bool = True,
    status: str = "completed",
    backup_type: str | None = None,
    stanza: str = "s1",
    label: str | None = None,
) -> str:
    """A backup of the test database (pg_dump) or of a stanza (backup_type given), finished at `done`."""
    if backup_type is None:
        backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    else:
        backup_id = scalar(db, "SELECT pggit.backup_pgbackrest(%s, 'main', %s)", (backup_type, stanza))
    job_status = "completed" if status == "completed" else "cancelled"
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = %s, completed_at = %s WHERE backup_id = %s",
        (job_status, done, backup_id),
    )
    force(
        db,
        "UPDATE pggit.backups SET status = %s, created_at = %s, completed_at = %s, verified_at = %s,"
        " location = coalesce(%s, location) WHERE backup_id = %s",
        (
            status,
            done - timedelta(minutes=5),
            done,
            done if verified else None,
            f"pgbackrest://{stanza}/{label}" if label else None,
            backup_id,
        ),
    )
    return backup_id


def recorded_dump(db, dsn: str, directory: Path, days: int, fmt: str = "custom") -> tuple[str, Path]:
    """A real pg_dump of the test database in `directory`, recorded as a verified backup that
    finished `days` ago under the name the adapter gives."""
    backup_id = make(db, datetime.now(timezone.utc) - timedelta(days=days, minutes=1))
    path = directory / f"pg_dump-main-nocommit-{days:02d}-{backup_id[:8]}{'.dump' if fmt == 'custom' else ''}"
    subprocess.run([str(BIN / "pg_dump"), f"--format={fmt}", f"--file={path}", dsn], check=True, capture_output=True)
    force(
        db,
        "UPDATE pggit.backups SET location = %s, metadata = metadata || jsonb_build_object('format', %s::text)"
        " WHERE backup_id = %s",
        (f"file://{path}", fmt, backup_id),
    )
    return backup_id, path
