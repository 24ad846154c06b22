"""Expiry step 2 and job pruning in SQL (schema/016): a removal's outcome is recorded on the
expiration (failed with the error and counted, then removed) and shown in a view; one remover
per target (a session lock); pruning deletes only jobs that ended for good longer ago than the
age, never a job in play, and every backup row stays."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from helpers.db import WORKER, scalar
from helpers.queue import force
from helpers.retention import make

DUMPS = json.dumps({"tool": "pg_dump"})
KEEP_ONE = json.dumps({"keep_last": 1})
NOW = datetime.now(timezone.utc)


def rows(conn, sql, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def expire_one(db, worker) -> tuple[str, str]:
    """Two verified dumps; keep_last 1 expires the older: (expired, kept)."""
    old = make(db, NOW - timedelta(days=3))
    new = make(db, NOW - timedelta(days=1))
    marked = rows(worker, "SELECT backup_id::text FROM pggit.expire_backups('host-a/1', %s, %s)", (DUMPS, KEEP_ONE))
    assert [row[0] for row in marked] == [old]
    return old, new


def status(db, backup_id: str) -> dict:
    with db.cursor() as cur:
        cur.execute(
            "SELECT removal, removed_by, removal_attempts, removal_error, removed_at IS NOT NULL"
            " FROM pggit.backup_expiration_status WHERE backup_id = %s",
            (backup_id,),
        )
        removal, by, attempts, error, removed = cur.fetchone()
    return {"removal": removal, "by": by, "attempts": attempts, "error": error, "removed": removed}


def test_a_failed_removal_is_recorded_and_stays_pending_until_one_succeeds(db, login):
    worker, reader = login(WORKER), login("pggit_backup_reader")
    old, new = expire_one(db, worker)
    pending = rows(worker, "SELECT backup_id::text, removal_attempts FROM pggit.pending_backup_removals(%s)", (DUMPS,))
    assert pending == [(old, 0)] and status(reader, old)["removal"] == "pending"

    failed = scalar(worker, "SELECT pggit.record_backup_removal('host-a/1', %s, 'disk on fire')", (old,))
    assert failed == "failed"
    assert status(reader, old) == {
        "removal": "failed",
        "by": None,
        "attempts": 1,
        "error": "disk on fire",
        "removed": False,
    }
    pending = rows(worker, "SELECT backup_id::text, removal_error FROM pggit.pending_backup_removals(%s)", (DUMPS,))
    assert pending == [(old, "disk on fire")], "a failed removal is tried again"

    assert scalar(worker, "SELECT pggit.record_backup_removal('host-b/7', %s, NULL)", (old,)) == "removed"
    assert status(reader, old) == {"removal": "removed", "by": "host-b", "attempts": 2, "error": None, "removed": True}
    assert rows(worker, "SELECT * FROM pggit.pending_backup_removals(%s)", (DUMPS,)) == []
    assert scalar(worker, "SELECT pggit.record_backup_removal('host-b/7', %s, NULL)", (old,)) is None
    assert scalar(worker, "SELECT pggit.record_backup_removal('host-b/7', %s, NULL)", (new,)) is None, "not expired"
    assert scalar(db, "SELECT count(*) FROM pggit.backups WHERE backup_id IN (%s, %s)", (old, new)) == 2


def test_one_remover_per_target_and_the_lock_goes_with_the_session(db, login, connect):
    first, second = login(WORKER), login(WORKER)
    assert scalar(first, "SELECT pggit.lock_retention_target(%s)", (DUMPS,)) is True
    # the same target spelled with its database: the same lock
    spelled = json.dumps({"tool": "pg_dump", "database": scalar(db, "SELECT current_database()")})
    assert scalar(second, "SELECT pggit.lock_retention_target(%s)", (spelled,)) is False
    assert scalar(second, "SELECT pggit.lock_retention_target(%s)", (json.dumps({"tool": "pg_basebackup"}),)) is True
    first.close()
    deadline = datetime.now(timezone.utc) + timedelta(seconds=10)
    while not scalar(second, "SELECT pggit.lock_retention_target(%s)", (DUMPS,)):
        assert datetime.now(timezone.utc) < deadline, "the lock outlived its session"
    assert scalar(second, "SELECT pggit.unlock_retention_target(%s)", (DUMPS,)) is True


def test_pruning_deletes_only_jobs_that_ended_for_good_long_enough_ago_and_keeps_every_backup(db, login):
    worker = login(WORKER)
    old = make(db, NOW - timedelta(days=40))  # its job completed 40 days ago
    recent = make(db, NOW - timedelta(days=2))
    failed_old = make(db, NOW - timedelta(days=40), status="failed")  # its job: cancelled 40 days ago
    queued = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    force(db, "UPDATE pggit.backup_jobs SET created_at = now() - interval '50 days' WHERE backup_id = %s", (queued,))
    jobs_before = dict(rows(db, "SELECT backup_id::text, job_id::text FROM pggit.backup_jobs"))
    backups_before = scalar(db, "SELECT count(*) FROM pggit.backups")
    # a backup's first job places it in its retention target: it goes once the data is removed
    assert scalar(worker, "SELECT pggit.prune_backup_jobs(%s)", (30 * 86400,)) == 0
    marked = rows(worker, "SELECT backup_id::text FROM pggit.expire_backups('host-a/1', %s, %s)", (DUMPS, KEEP_ONE))
    assert {row[0] for row in marked} == {old, failed_old}
    for backup_id in (old, failed_old):
        assert scalar(worker, "SELECT pggit.record_backup_removal('host-a/1', %s, NULL)", (backup_id,)) == "removed"

    assert scalar(worker, "SELECT pggit.prune_backup_jobs(%s)", (30 * 86400,)) == 2
    left = {row[0] for row in rows(db, "SELECT backup_id::text FROM pggit.backup_jobs")}
    assert left == {recent, queued} and set(jobs_before) == {old, recent, failed_old, queued}
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == backups_before
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (old,)) == "completed"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_job_queue WHERE backup_id = %s", (queued,)) == 1
    assert scalar(worker, "SELECT pggit.prune_backup_jobs(%s)", (30 * 86400,)) == 0


@pytest.mark.parametrize("age", [None, 0, 3599, 315360001])
def test_pruning_refuses_an_age_out_of_range_naming_it(db, login, age):
    worker = login(WORKER)
    make(db, NOW - timedelta(days=40))
    with pytest.raises(psycopg2.Error) as caught:
        scalar(worker, "SELECT pggit.prune_backup_jobs(%s)", (age,))
    assert caught.value.pgcode == "22023" and "p_older_than_seconds" in caught.value.diag.message_primary
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 1


def test_rights_readers_see_removals_only_workers_remove_and_prune(db, login):
    reader, operator = login("pggit_backup_reader"), login("pggit_backup_operator")
    old, _ = expire_one(db, login(WORKER))
    assert status(reader, old)["removal"] == "pending"
    for conn in (reader, operator):
        for statement, params in (
            ("SELECT pggit.record_backup_removal('h/1', %s, NULL)", (old,)),
            ("SELECT pggit.prune_backup_jobs(86400)", None),
            ("SELECT * FROM pggit.pending_backup_removals(%s)", (DUMPS,)),
            ("SELECT pggit.lock_retention_target(%s)", (DUMPS,)),
        ):
            with pytest.raises(psycopg2.Error) as caught:
                scalar(conn, statement, params)
            assert caught.value.pgcode == "42501", statement
    assert status(reader, old)["removal"] == "pending"
