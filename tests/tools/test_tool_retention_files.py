"""Expiry step 2 on real pg_dump output (expiry.py, tools/removing.py): the dumps no rule keeps
are removed from the allowed directory while pinned and floor-protected ones stay, without
following a symlink planted in a dump's place or inside a directory dump; a removal that fails
is recorded, shown by `retention --dry-run` (which changes nothing) and retried by the next run."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

from helpers import CLI, ROOT
from helpers.db import query, scalar
from helpers.queue import force
from helpers.retention import recorded_dump as dump
from pggit_supervisor.config import Config, Tools, default_tool
from pggit_supervisor.expiry import apply_retention
from pggit_supervisor.queue import Queue
from pggit_supervisor.retention import Retention

NOW = datetime.now(timezone.utc)


def config_for(dsn: str, *allowed: Path) -> Config:
    tool = replace(default_tool("pg_dump"), allowed_output_dirs=tuple(str(each) for each in allowed))
    return Config(dsn=dsn, worker_id="host-r", tools=Tools((tool,)))


def expiration(db, backup_id: str) -> dict:
    rows = query(db, "SELECT * FROM pggit.backup_expiration_status WHERE backup_id = %s", (backup_id,))
    return rows[0] if rows else {}


def test_expired_dumps_are_removed_pinned_and_floor_kept_ones_stay_and_no_symlink_is_followed(
    db, dsn, backup_dir, tmp_path
):
    outside = tmp_path / "not-ours"
    outside.mkdir()
    precious, inside_target = outside / "precious.txt", outside / "inside.txt"
    precious.write_text("never removed")
    inside_target.write_text("never removed either")
    pinned, pinned_path = dump(db, dsn, backup_dir, 9)
    swapped, swapped_path = dump(db, dsn, backup_dir, 7)
    directory, directory_path = dump(db, dsn, backup_dir, 5, fmt="directory")
    floor, floor_path = dump(db, dsn, backup_dir, 3)
    newest, newest_path = dump(db, dsn, backup_dir, 1)
    scalar(db, "SELECT pggit.pin_backup(%s, 'audit')", (pinned,))
    # a symlink planted in a dump's place, and one inside a directory dump, both pointing outside
    swapped_path.unlink()
    swapped_path.symlink_to(precious)
    (directory_path / "escape").symlink_to(inside_target)

    retention = Retention(target={"tool": "pg_dump"}, keep_last=1, min_verified=3)  # pinned + newest + the floor
    done = apply_retention(Queue(db), config_for(dsn, backup_dir), retention)

    assert {row[0] for row in done.marked} == {swapped, directory}
    assert [each.error for each in done.removals] == [None, None], done.render()
    assert not swapped_path.is_symlink() and not swapped_path.exists()
    assert not directory_path.exists()
    assert precious.read_text() == "never removed" and inside_target.read_text() == "never removed either"
    assert pinned_path.is_file() and floor_path.is_file() and newest_path.is_file()
    for backup_id in (swapped, directory):
        assert expiration(db, backup_id)["removal"] == "removed"
        assert expiration(db, backup_id)["removed_by"] == "host-r"
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 5, "a backup row is never deleted"
    again = apply_retention(Queue(db), config_for(dsn, backup_dir), retention)
    assert (again.marked, again.removals) == ([], [])


def retention_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "retention", "-c", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def write_config(tmp_path: Path, dsn: str, allowed: list[str]) -> Path:
    path = tmp_path / "supervisor.yaml"
    data = {
        "dsn": dsn,
        "worker_id": "host-c",
        "tools": {"pg_dump": {"allowed_output_dirs": allowed}},
        "retention": [{"target": {"tool": "pg_dump"}, "keep_last": 1}],
        "prune_jobs_after": "7d",
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def snapshot(db) -> tuple:
    return (
        query(db, "SELECT * FROM pggit.backup_expirations ORDER BY backup_id"),
        query(db, "SELECT backup_id, status, location FROM pggit.backups ORDER BY backup_id"),
        scalar(db, "SELECT count(*) FROM pggit.backup_jobs"),
    )


def test_a_failed_removal_is_visible_in_the_dry_run_which_changes_nothing_and_the_next_run_retries_it(
    db, dsn, backup_dir, tmp_path
):
    elsewhere = backup_dir / "elsewhere"
    elsewhere.mkdir()
    old, old_path = dump(db, dsn, elsewhere, 40)
    _, new_path = dump(db, dsn, backup_dir, 1)
    force(db, "UPDATE pggit.backup_jobs SET completed_at = now() - interval '40 days' WHERE backup_id = %s", (old,))
    # tools.pg_dump allows only a sibling of the old dump's directory: its removal is refused
    narrow = write_config(tmp_path, dsn, [str(backup_dir / "new")])
    (backup_dir / "new").mkdir()

    first = retention_cli(narrow, "--now")
    assert first.returncode == 1, first.stderr
    assert "0 removed, 1 removal(s) failed (retried next run)" in first.stdout.splitlines()[0]
    assert f"is not under tools.pg_dump.allowed_output_dirs (allowed: {backup_dir / 'new'})" in first.stdout
    assert "pruned 0 job(s)" in first.stdout, "the old dump's job places it in its target until its data is gone"
    assert old_path.is_file()
    assert expiration(db, old)["removal"] == "failed" and expiration(db, old)["removal_attempts"] == 1

    before = snapshot(db)
    shown = retention_cli(narrow, "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert f"  pending {old}" in shown.stdout and "removal failed 1x: " in shown.stdout
    assert snapshot(db) == before, "--dry-run changes nothing"
    assert old_path.is_file()

    retried = retention_cli(write_config(tmp_path, dsn, [str(backup_dir)]), "--now")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines()[0] == (
        "target pg_dump: 0 backup(s) marked expired, 1 removed, 0 removal(s) failed (retried next run)"
    )
    assert "pruned 1 job(s)" in retried.stdout, "the old dump's job ended 40 days ago, its data is removed"
    assert not old_path.exists() and new_path.is_file()
    assert expiration(db, old)["removal"] == "removed" and expiration(db, old)["removal_attempts"] == 2
    assert expiration(db, old)["removal_error"] is None
