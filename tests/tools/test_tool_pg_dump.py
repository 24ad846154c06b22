"""pg_dump end to end: scheduled with the guide's call, run by a real supervisor as the postgres
OS user, verified by reading the whole archive, recorded, restored and compared; and the ways
a dump must fail."""

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from helpers import CLI, ROOT
from helpers.db import query, scalar
from helpers.queue import force
from helpers.service import wait_for_state
from helpers.session import PG_HOST, PG_PORT, PG_USER
from pggit_supervisor.config import default_tool
from pggit_supervisor.tools.pg_dump import _check_plain_trailer

TABLE_DIGEST = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM public.orders t"


@pytest.fixture
def orders(db):
    db.cursor().execute("""CREATE TABLE public.orders AS SELECT g AS id, md5(g::text) AS label
                           FROM generate_series(1, 5000) g;
                           CREATE SCHEMA sales;
                           CREATE TABLE sales.refunds AS SELECT g AS id FROM generate_series(1, 7) g""")
    return query(db, TABLE_DIGEST)[0]


@pytest.fixture
def service(make_service, backup_dir):
    def start(**tools):
        tools = tools or {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}}
        return make_service(workers=2, tools=tools).start()

    return start


def _backup(db, backup_id):
    return query(db, "SELECT * FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]


def _job_of(db, backup_id):
    return str(
        scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s AND tool <> 'restore_test'", (backup_id,))
    )


@pytest.mark.parametrize(
    "fmt,options",
    [
        ("custom", '{"compression_level": "9"}'),
        ("directory", '{"jobs": "2"}'),
        ("tar", "{}"),
        ("plain", '{"compression_level": 5}'),
    ],
)
def test_dump_is_verified_recorded_and_restores_to_the_same_data(
    service, db, orders, backup_dir, empty_db, fmt, options, tmp_path
):
    service()
    backup_id = scalar(
        db, "SELECT pggit.backup_pg_dump('main', NULL, %s, %s, %s::jsonb)", (fmt, str(backup_dir), options)
    )
    wait_for_state(db, _job_of(db, backup_id), "completed", timeout=60)
    row = _backup(db, backup_id)
    path = row["location"].removeprefix("file://")
    assert row["status"] == "completed" and row["verified_at"] is not None
    assert os.path.exists(path) and os.path.dirname(path) == str(backup_dir)
    assert not [name for name in os.listdir(backup_dir) if name.endswith(".partial")], "no partial file left"
    head = scalar(db, "SELECT left(head_commit_hash, 8) FROM pggit.branches WHERE name = 'main'")
    assert os.path.basename(path).startswith(f"pg_dump-main-{head}-") and _job_of(db, backup_id)[:8] in path
    assert pwd.getpwuid(os.stat(path).st_uid).pw_name == "postgres", "pg_dump ran as run_as"
    if os.path.isfile(path):
        assert row["checksum"] == "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert row["backup_size"] == os.path.getsize(path)
    else:
        assert row["checksum"].startswith("sha256-tree:") and row["metadata"]["files"]
    counts = row["metadata"]["row_counts"]
    assert counts["public.orders"] == 5000 and counts["sales.refunds"] == 7
    assert counts["pggit.backups"] == 1, "counted in pg_dump's snapshot: the backup row exists, completion comes later"
    assert row["compression_type"] == ("none" if fmt == "tar" else "gzip")

    out = subprocess.run(
        CLI + ["restore", str(backup_id), "--dsn", db.dsn, "--target-dsn", empty_db, "-c", "/nonexistent.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "nonexistent.yaml" in out.stderr, "a named config that is missing is an error"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dsn: '{db.dsn}'\ntools:\n  pg_dump: {{run_as: postgres, allowed_output_dirs: [{backup_dir}]}}\n"
    )
    out = subprocess.run(
        CLI + ["restore", str(backup_id), "--target-dsn", empty_db, "-c", str(config), "--trust-backup-contents"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    restored = psycopg2.connect(empty_db)
    try:
        assert query(restored, TABLE_DIGEST)[0] == orders
        assert scalar(restored, "SELECT count(*) FROM sales.refunds") == 7
    finally:
        restored.close()
    again = subprocess.run(
        CLI + ["restore", str(backup_id), "--target-dsn", empty_db, "-c", str(config), "--trust-backup-contents"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert again.returncode == 1 and "is not empty" in again.stderr, "a restore never writes into a used database"


def test_schema_dump_restores_into_a_new_database_and_passes_the_drill(service, db, orders, backup_dir, empty_db):
    service()
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s)", (str(backup_dir),))
    wait_for_state(db, _job_of(db, backup_id), "completed", timeout=60)
    assert _backup(db, backup_id)["metadata"]["row_counts"] == {"public.orders": 5000}
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    wait_for_state(db, drill, "completed", timeout=60)
    row = _backup(db, backup_id)
    assert row["restore_test_result"] == "passed" and row["restore_tested_at"] is not None
    assert row["metadata"]["restore_test"]["tables_compared"] == 1
    assert row["status"] == "completed", "a drill never changes its backup's status"
    assert scalar(db, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pggit_restore_test_%'") == 0


def test_drill_finds_a_backup_whose_data_does_not_match_what_was_recorded(service, db, orders, backup_dir):
    service()
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    wait_for_state(db, _job_of(db, backup_id), "completed", timeout=60)
    # the recorded counts say more rows than the file holds, as if rows had been lost
    force(
        db,
        """UPDATE pggit.backups SET metadata = jsonb_set(metadata, '{row_counts,public.orders}', '5001')
                 WHERE backup_id = %s""",
        (backup_id,),
    )
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    row = wait_for_state(db, drill, "permanently_failed", timeout=60)
    assert "public.orders: 5001 rows at dump time, 5000 restored" in row["last_error"]
    assert _backup(db, backup_id)["restore_test_result"] == "failed"


def test_truncated_dump_fails_verification(backup_dir, dsn, orders):
    dump = backup_dir / "x.dump"
    env = {**os.environ, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": PG_USER}
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", dsn], check=True, env=env)
    with open(dump, "r+b") as handle:
        handle.truncate(int(os.path.getsize(dump) * 0.8))  # the table of contents survives, data does not
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True)
    full = subprocess.run(["pg_restore", "--file=/dev/null", str(dump)], capture_output=True, text=True)
    assert listing.returncode == 0, "--list alone passes a truncated file"
    assert full.returncode != 0, "reading the whole archive (what the adapter does) does not"
    plain = backup_dir / "x.sql.partial"
    subprocess.run(["pg_dump", "--format=plain", f"--file={plain}", dsn], check=True, env=env)
    assert _check_plain_trailer(str(plain)) is None
    with open(plain, "r+b") as handle:
        handle.truncate(os.path.getsize(plain) // 2)
    assert "completion line" in _check_plain_trailer(str(plain))


def test_dump_verification_failure_fails_the_job_and_leaves_no_file(service, db, orders, backup_dir, tmp_path):
    fake_restore_dir = Path(tempfile.mkdtemp(prefix="pggit-bin-", dir="/tmp"))
    os.chmod(fake_restore_dir, 0o755)
    try:
        # a pg_dump whose sibling pg_restore rejects everything: the adapter must trust the check
        os.symlink("/usr/lib/postgresql/15/bin/pg_dump", fake_restore_dir / "pg_dump")
        (fake_restore_dir / "pg_restore").write_text(
            "#!/bin/sh\necho 'pg_restore: error: corrupt archive' >&2\nexit 1\n"
        )
        os.chmod(fake_restore_dir / "pg_restore", 0o755)
        service(
            pg_dump={
                "path": str(fake_restore_dir / "pg_dump"),
                "run_as": "postgres",
                "allowed_output_dirs": [str(backup_dir)],
            }
        )
        backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
        row = wait_for_state(db, _job_of(db, backup_id), "will_retry", timeout=60)
        assert (
            row["last_error"].startswith("verification failed: pg_restore exit 1")
            and "corrupt archive" in row["last_error"]
        )
        assert os.listdir(backup_dir) == [], "neither the final name nor the partial file remains"
    finally:
        shutil.rmtree(fake_restore_dir, ignore_errors=True)


def test_output_dir_outside_the_allowlist_or_via_a_symlink_fails_permanently(service, db, backup_dir):
    allowed = backup_dir / "allowed"
    allowed.mkdir()
    shutil.chown(allowed, "postgres", "postgres")
    os.symlink("/etc", allowed / "escape")
    service(pg_dump={"run_as": "postgres", "allowed_output_dirs": [str(allowed)]})
    outside = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir / "other"),))
    via_link = scalar(db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s)", (str(allowed / "escape"),))
    first = wait_for_state(db, _job_of(db, outside), "permanently_failed")
    second = wait_for_state(db, _job_of(db, via_link), "permanently_failed")
    assert "is not under tools.pg_dump.allowed_output_dirs" in first["last_error"]
    assert "resolves to /etc" in second["last_error"]
    assert not os.path.exists(backup_dir / "other") and not any(Path("/etc").glob("pg_dump-*"))


def test_default_pg_dump_section_points_at_the_debian_paths():
    tool = default_tool("pg_dump")
    assert tool.path == "/usr/bin/pg_dump" and tool.allowed_output_dirs == ("/backups",)
