"""Retention in the config and `pggit-supervisor retention`: targets and rules are checked naming
the entry and key; --dry-run prints kept-and-why and would-go per target and changes nothing;
without it the backups no rule keeps are marked expired, once, and their data removed."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from helpers import CLI, ROOT
from helpers.config_files import problems_in, write_config
from helpers.db import query, scalar
from helpers.retention import make
from pggit_supervisor.config import load_config
from pggit_supervisor.config.kinds import Integer, Setting
from pggit_supervisor.config.settings import RETENTION

DSN = "postgresql://pggit_backup@localhost:5432/mydb"
DUMPS = {"target": {"tool": "pg_dump"}, "keep_last": 2}


def write(tmp_path: Path, *entries: dict[str, Any], dsn: str = DSN) -> str:
    return write_config(tmp_path, {"dsn": dsn, "worker_id": "w1", "tools": {"pg_dump": {}}, "retention": list(entries)})


def problems(tmp_path: Path, *entries: dict[str, Any]) -> list[str]:
    return problems_in(write(tmp_path, *entries))


def test_a_retention_entry_loads_with_its_defaults(tmp_path):
    (entry,) = load_config(write(tmp_path, DUMPS), {}, check_paths=False).retention
    assert entry.target == {"tool": "pg_dump"} and entry.keep_last == 2
    assert (entry.keep_days, entry.keep_daily, entry.min_verified, entry.grace) == (0, 0, 1, 86400)
    assert entry.rules()["grace_seconds"] == 86400


@pytest.mark.parametrize(
    "name", [item.name for item in RETENTION.settings if isinstance(item, Setting) and isinstance(item.kind, Integer)]
)
def test_every_bounded_retention_key_refuses_values_beyond_its_bounds(tmp_path, name):
    setting = RETENTION.get(name)
    assert isinstance(setting, Setting) and isinstance(setting.kind, Integer)
    for value in (setting.kind.low - 1, setting.kind.high + 1):
        found = problems(tmp_path, {**DUMPS, name: value})
        assert found == [
            f"retention[0].{name}: must be between {setting.kind.low} and {setting.kind.high}, got {value} "
            f"(allowed: {setting.kind.low}-{setting.kind.high})"
        ]


@pytest.mark.parametrize(
    "target, expected",
    [
        ({"tool": "custom"}, "retention[0].target.tool: must be a backup tool, got 'custom'"),
        ({"tool": "pgbackrest"}, "retention[0].target.stanza: must be a name, got None"),
        ({"tool": "barman", "server": "a b"}, "retention[0].target.server: must be a name, got 'a b'"),
        ({"tool": "pg_dump", "stanza": "x"}, "retention[0].target.stanza: is not a key of a pg_dump target"),
        ({"tool": "pg_dump", "database": "other"}, "retention[0].target.database: 'other' is not the database of dsn"),
        ("pg_dump", "retention[0].target: must be a mapping, got 'pg_dump'"),
    ],
)
def test_a_bad_target_is_a_config_error_naming_the_key(tmp_path, target, expected):
    found = problems(tmp_path, {**DUMPS, "target": target})
    assert len(found) == 1 and found[0].startswith(expected), found


def retention(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "retention", "-c", config, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_dry_run_prints_kept_and_why_and_would_go_and_changes_nothing_then_expiry_marks_once(db, dsn, tmp_path):
    now = datetime.now(timezone.utc)
    backups = [make(db, now - timedelta(days=day, hours=1)) for day in range(4)]
    unverified = make(db, now - timedelta(days=3), verified=False)
    config = write(tmp_path, DUMPS, dsn=dsn)

    shown = retention(config, "--dry-run")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "target pg_dump (keep_last=2, min_verified=1, grace_seconds=86400): keep 2, would expire 3"
    by_id = {line.split()[3]: line for line in lines[1:]}
    assert by_id[backups[0]].split()[0] == "keep" and by_id[backups[0]].endswith("newest verified, keep_last")
    assert by_id[backups[1]].split()[0] == "keep" and by_id[backups[1]].endswith("keep_last")
    assert by_id[backups[3]].split()[0] == "go" and by_id[backups[3]].endswith("no rule keeps it")
    assert by_id[unverified].split()[0] == "go" and by_id[unverified].endswith("unverified, never counted")
    assert scalar(db, "SELECT count(*) FROM pggit.backup_expirations") == 0, "--dry-run changes nothing"

    done = retention(config, "--now")
    # these forged rows name the output directory, not a dump file: never emptied, the removal
    # fails visibly (exit 1) and is tried again next run
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == (
        "target pg_dump: 3 backup(s) marked expired, 0 removed, 3 removal(s) failed (retried next run)"
    )
    # they share that location with the kept backups: held before the adapter's name check
    assert "held: it records the location of pg_dump backup" in done.stdout
    assert "so removing file:///backups/ would remove its data" in done.stdout
    expired = {row["backup_id"] for row in query(db, "SELECT backup_id::text FROM pggit.backup_expirations")}
    assert expired == {backups[2], backups[3], unverified}
    again = retention(config, "--now").stdout.splitlines()[0]
    assert again == "target pg_dump: 0 backup(s) marked expired, 0 removed, 3 removal(s) failed (retried next run)"
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 5, "backup rows stay"
