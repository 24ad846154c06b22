"""schema/023: each backup's target is stored once (pggit.backup_target_identity, kept by a
trigger on its jobs), and every watched target's status comes in one call
(pggit.backup_target_statuses). What the stored identity must equal is 015's own computation
(_retention_identity of the backup's first job of its tool), after any insert or delete; what the
one call must equal is the per-target backup_target_status, target by target, in the order given."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from helpers.db import query, refused, scalar
from helpers.queue import force, schedule_dump
from helpers.retention import make

READER = "pggit_backup_reader"

COMPUTED = """SELECT b.backup_id::text AS backup_id,
                     pggit._retention_identity(b.backup_tool,
                                               pggit._retention_params(b.backup_id, b.backup_tool)) AS target
                FROM pggit.backups b ORDER BY 1"""
STORED = "SELECT backup_id::text AS backup_id, target FROM pggit.backup_target_identity ORDER BY 1"


def ago(hours: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=hours)


def computed(db) -> list[dict]:
    return [row for row in query(db, COMPUTED) if row["target"] is not None]


def mixed_population(db) -> None:
    """Several tools and targets; verified, unverified, failed and drilled backups."""
    make(db, ago(30))
    make(db, ago(3))
    make(db, ago(1), verified=False)
    make(db, ago(5), backup_type="full", stanza="s1")
    make(db, ago(2), backup_type="incr", stanza="s1")
    make(db, ago(4), backup_type="full", stanza="s2", verified=False)
    drilled = make(db, ago(6), backup_type="full", stanza="s2")
    force(
        db,
        "UPDATE pggit.backups SET restore_tested_at = now() - interval '1 hour', restore_test_result = 'passed'"
        " WHERE backup_id = %s",
        (drilled,),
    )
    _, failed = schedule_dump(db)
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = max_attempts, completed_at = now(),"
        " last_error = 'pg_dump: out of disk' WHERE job_id = %s",
        (failed,),
    )


def test_the_stored_identity_is_what_015_computes_for_every_backup(db):
    mixed_population(db)
    assert len(computed(db)) == 8
    assert query(db, STORED) == computed(db)


def test_the_identity_follows_a_deleted_job_and_goes_with_its_backup(db):
    mixed_population(db)
    backup_id = make(db, ago(7), backup_type="full", stanza="s3")
    stored = scalar(db, "SELECT target FROM pggit.backup_target_identity WHERE backup_id = %s", (backup_id,))
    assert stored == {"tool": "pgbackrest", "stanza": "s3"}

    force(db, "DELETE FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))
    assert query(db, STORED) == computed(db)  # no job of its tool left: no identity
    assert scalar(db, "SELECT count(*) FROM pggit.backup_target_identity WHERE backup_id = %s", (backup_id,)) == 0

    other = make(db, ago(8), backup_type="full", stanza="s4")
    force(db, "DELETE FROM pggit.backup_jobs WHERE backup_id = %s", (other,))
    force(db, "DELETE FROM pggit.backups WHERE backup_id = %s", (other,))
    assert query(db, STORED) == computed(db)


def test_every_targets_status_in_one_call_equals_each_targets_own_in_the_order_given(db, login):
    mixed_population(db)
    reader = login(READER)
    targets = [
        {"tool": "pgbackrest", "stanza": "s2"},
        {"tool": "pg_dump"},
        {"tool": "pgbackrest", "stanza": "s1"},
        {"tool": "pgbackrest", "stanza": "never"},
        {"tool": "pg_dump"},  # the same target twice: answered twice
    ]
    together = query(reader, "SELECT * FROM pggit.backup_target_statuses(%s)", (json.dumps(targets),))
    one_by_one = [query(reader, "SELECT * FROM pggit.backup_target_status(%s)", (json.dumps(t),))[0] for t in targets]
    # newest_verified_seconds is measured at each statement's now(): compare it apart
    for row in together + one_by_one:
        row["newest_verified_seconds"] = (
            None if row["newest_verified_seconds"] is None else round(row["newest_verified_seconds"] / 60)
        )
    assert together == one_by_one
    assert [row["backups"] for row in together] == [2, 4, 2, 0, 4]  # pg_dump: three made, one whose job failed
    assert together[0]["last_drill_result"] == "passed" and together[1]["last_failure_error"] == "pg_dump: out of disk"


def test_backup_target_statuses_refuses_a_bad_entry_naming_its_place(login):
    reader = login(READER)
    error = refused(
        reader, """SELECT * FROM pggit.backup_target_statuses('[{"tool": "pg_dump"}, {"tool": "rsync"}]')"""
    )
    assert error.pgcode == "22023" and error.diag.column_name == "p_targets[1].tool"
    error = refused(reader, """SELECT * FROM pggit.backup_target_statuses('{"tool": "pg_dump"}')""")
    assert error.pgcode == "22023" and error.diag.column_name == "p_targets"
