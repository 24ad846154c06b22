"""Expiry step 2 against rows a hostile worker wrote (expiry.py, schema/016): a backup whose
recorded location is a kept backup's file, or the output directory holding it (named as the
adapter names its backups, so the name check lets it through), is held, with the reason recorded
as the attempt's error, and nothing on disk goes; once the kept backup is itself expired, its
file is removed as usual. A directory holding backups no row here records (another served
database's) is refused as a whole, and backups a worker expired under rules looser than this
host's stay."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from helpers.cluster import BIN
from helpers.db import query, scalar
from helpers.queue import force
from helpers.retention import make
from pggit_supervisor.config import Config, Tools, default_tool
from pggit_supervisor.expiry import apply_retention
from pggit_supervisor.queue import Queue
from pggit_supervisor.retention import Retention

NOW = datetime.now(timezone.utc)


def recorded(db, days: int, location: str, *, verified: bool = True) -> str:
    backup_id = make(db, NOW - timedelta(days=days), verified=verified)
    force(db, "UPDATE pggit.backups SET location = %s WHERE backup_id = %s", (location, backup_id))
    return backup_id


def test_a_location_shared_with_a_kept_backup_is_held_and_nothing_is_removed(db, dsn, backup_dir):
    daily = backup_dir / "pg_dump-daily"
    daily.mkdir()
    kept_path = daily / "pg_dump-main-nocommit-20260101T000000Z-abcdef12.dump"
    subprocess.run(
        [str(BIN / "pg_dump"), "--format=custom", f"--file={kept_path}", dsn], check=True, capture_output=True
    )
    kept = recorded(db, 1, f"file://{kept_path}")
    same = recorded(db, 5, f"file://{kept_path}", verified=False)
    holder = recorded(db, 6, f"file://{daily}", verified=False)
    tool = replace(default_tool("pg_dump"), allowed_output_dirs=(str(backup_dir),))
    config = Config(dsn=dsn, worker_id="host-r", tools=Tools((tool,)))
    retention = Retention(target={"tool": "pg_dump"}, keep_last=1)

    done = apply_retention(Queue(db), config, retention)
    assert {row[0] for row in done.marked} == {same, holder}
    assert kept_path.is_file() and daily.is_dir(), done.render()
    for backup_id in (same, holder):
        row = query(db, "SELECT * FROM pggit.backup_expiration_status WHERE backup_id = %s", (backup_id,))[0]
        assert row["removal"] == "failed" and kept in row["removal_error"], row

    # the kept dump's own turn: a newer one takes its place, and its file goes; the directory
    # of backups a forged row names is still refused as a whole (files.remove_backup_path)
    newer_path = backup_dir / "pg_dump-main-nocommit-20260102T000000Z-12abcdef.dump"
    newer_path.write_bytes(kept_path.read_bytes())
    recorded(db, 0, f"file://{newer_path}")
    again = apply_retention(Queue(db), config, retention)
    assert {row[0] for row in again.marked} == {kept}
    errors = {each.backup_id: each.error for each in again.removals}
    assert errors[same] is None and errors[kept] is None, again.render()
    assert "holds other backups" in str(errors[holder])
    assert not kept_path.exists() and daily.is_dir() and newer_path.is_file()
    statuses = query(db, "SELECT backup_id::text, removal FROM pggit.backup_expiration_status")
    assert {row["backup_id"]: row["removal"] for row in statuses} == {
        kept: "removed",
        same: "removed",
        holder: "failed",
    }
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 4, "a backup row is never deleted"


def test_backups_a_worker_expired_under_looser_rules_stay_on_disk(db, dsn, backup_dir):
    """Any worker may call expire_backups with rules of its own; this host keeps 3 and does not
    remove what was expired under keep_last 0."""
    paths = [backup_dir / f"pg_dump-main-nocommit-{day}.dump" for day in (9, 7, 5, 3, 1)]
    for path in paths:
        path.write_bytes(b"PGDMP")
    ids = [recorded(db, day, f"file://{path}") for day, path in zip((9, 7, 5, 3, 1), paths, strict=True)]
    assert len(query(db, "SELECT * FROM pggit.expire_backups('evil/1', '{\"tool\": \"pg_dump\"}', '{}')")) == 4
    tool = replace(default_tool("pg_dump"), allowed_output_dirs=(str(backup_dir),))
    config = Config(dsn=dsn, worker_id="host-r", tools=Tools((tool,)))

    done = apply_retention(Queue(db), config, Retention(target={"tool": "pg_dump"}, keep_last=3))
    assert all(path.is_file() for path in paths), done.render()
    assert sorted(each.backup_id for each in done.removals) == sorted(ids[:4])
    assert all(each.error and "keep_last 0 < 3" in each.error for each in done.removals), done.render()


def test_a_location_naming_a_directory_of_backups_no_row_here_records_is_refused(db, dsn, backup_dir):
    """Another served database's dumps share the output directory; this database has no row of
    them, so only the directory's contents can tell it is not one backup."""
    daily = backup_dir / "pg_dump-daily"
    daily.mkdir()
    theirs = daily / "pg_dump-other-nocommit-20260101T000000Z-0badf00d.dump"
    theirs.write_bytes(b"PGDMP")
    recorded(db, 1, f"file://{backup_dir}/pg_dump-main-nocommit-1.dump")
    holder = recorded(db, 6, f"file://{daily}", verified=False)
    tool = replace(default_tool("pg_dump"), allowed_output_dirs=(str(backup_dir),))
    config = Config(dsn=dsn, worker_id="host-r", tools=Tools((tool,)))

    done = apply_retention(Queue(db), config, Retention(target={"tool": "pg_dump"}, keep_last=1))
    assert [each.backup_id for each in done.removals] == [holder]
    assert theirs.is_file(), done.render()
    assert done.removals[0].error and "holds other backups (pg_dump-other-" in done.removals[0].error
