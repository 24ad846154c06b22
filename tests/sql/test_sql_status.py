"""schema/019 through real logins: workers record themselves bound to their login, operators
acknowledge permanent failures (and only those), and readers see per target the newest verified
backup, the last failure and the last drill, with a missing time NULL, never 0."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from helpers.db import WORKER, query, refused, scalar
from helpers.queue import claim, force, schedule_dump
from helpers.retention import make

OPERATOR = "pggit_backup_operator"
READER = "pggit_backup_reader"
NOW = datetime.now(timezone.utc)


def ago(delta: timedelta) -> datetime:
    """A time that long before this moment (not the module's import: a long run drifts)."""
    return datetime.now(timezone.utc) - delta


RECORD = "SELECT pggit.record_worker(%s, 'machine-1', 4242, '0.1.0', 'db', ARRAY['pg_dump'], %s, %s)"


def record(conn, worker_id: str, job=None) -> None:
    conn.cursor().execute(RECORD, (worker_id, NOW, job))


def permanently_failed(db, error: str = "pg_dump: connection refused") -> str:
    _, job_id = schedule_dump(db)
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = max_attempts, completed_at = now(),"
        " last_error = %s WHERE job_id = %s",
        (error, job_id),
    )
    return str(job_id)


def test_a_worker_records_itself_and_readers_see_how_long_it_has_been_silent(db, login):
    worker, reader = login(WORKER), login(READER)
    record(worker, "host-a/1")

    row = query(reader, "SELECT * FROM pggit.backup_worker_status")[0]
    assert (row["worker_id"], row["host_name"], row["machine"], row["pid"], row["tools"]) == (
        "host-a/1",
        "host-a",
        "machine-1",
        4242,
        ["pg_dump"],
    )
    assert 0 <= row["silent_seconds"] < 60 and row["stopped_at"] is None
    force(db, "UPDATE pggit.backup_workers SET last_seen_at = now() - interval '10 minutes'")
    assert 599 < scalar(reader, "SELECT silent_seconds FROM pggit.backup_worker_status") < 700


def test_another_login_cannot_overwrite_a_live_hosts_worker_rows_until_it_stopped(login):
    first, second = login(WORKER), login(WORKER)
    record(first, "host-a/1")

    error = refused(second, RECORD, ("host-a/2", NOW, None))
    assert error.pgcode == "42501" and "host-a is carried by login" in error.diag.message_primary
    assert scalar(first, "SELECT pggit.record_worker_stopped('host-a/1')") is True
    assert scalar(second, "SELECT pggit.record_worker_stopped('host-a/1')") is False, "not its row"
    record(second, "host-a/1")  # the host stopped in order: a new login may carry it
    assert scalar(second, "SELECT login = session_user AND stopped_at IS NULL FROM pggit.backup_worker_status")


def test_a_worker_may_name_only_a_job_its_own_login_claimed(db, login):
    worker, other = login(WORKER), login(WORKER)
    schedule_dump(db)
    job = claim(worker, "host-a/1", ["pg_dump"])["job_id"]

    record(worker, "host-a/1", job)
    assert str(scalar(db, "SELECT current_job_id FROM pggit.backup_workers")) == str(job)
    error = refused(other, RECORD, ("host-b/1", NOW, job))
    assert error.pgcode == "22023" and error.diag.column_name == "p_current_job"


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (("bad id!", "m", 1, "0.1", "db", ["pg_dump"], NOW), "p_worker_id"),
        (("h/1", "", 1, "0.1", "db", ["pg_dump"], NOW), "p_machine"),
        (("h/1", "m", 0, "0.1", "db", ["pg_dump"], NOW), "p_pid"),
        (("h/1", "m", 1, "0.1 beta", "db", ["pg_dump"], NOW), "p_version"),
        (("h/1", "m", 1, "0.1", "a\nb", ["pg_dump"], NOW), "p_database"),
        (("h/1", "m", 1, "0.1", "db", ["rsync"], NOW), "p_tools"),
        (("h/1", "m", 1, "0.1", "db", ["pg_dump"], NOW + timedelta(days=1)), "p_started_at"),
    ],
)
def test_record_worker_refuses_bad_input_naming_the_parameter(login, args, param):
    worker = login(WORKER)
    error = refused(worker, "SELECT pggit.record_worker(%s, %s, %s, %s, %s, %s, %s)", args)
    assert error.pgcode == "22023" and error.diag.column_name == param, error.diag.message_primary
    assert scalar(worker, "SELECT count(*) FROM pggit.backup_worker_status") == 0


def test_only_workers_record_themselves(login):
    for role in (READER, OPERATOR):
        assert refused(login(role), RECORD, ("host-a/1", NOW, None)).pgcode == "42501"


def test_an_operator_acknowledges_a_permanent_failure_with_who_when_and_a_note(db, login_as):
    operator, name = login_as(OPERATOR)
    job_id = permanently_failed(db)
    assert scalar(db, "SELECT count(*) FROM pggit.backup_permanent_failures WHERE NOT acknowledged") == 1

    at = scalar(operator, "SELECT pggit.acknowledge_failure(%s, 'disk replaced, rerun queued')", (job_id,))
    row = query(operator, "SELECT * FROM pggit.backup_permanent_failures WHERE job_id = %s", (job_id,))[0]
    assert row["acknowledged"] and row["acknowledged_by"] == name and row["acknowledged_at"] == at
    assert row["acknowledgement_note"] == "disk replaced, rerun queued"


def test_a_job_reset_and_failed_again_is_a_new_unacknowledged_failure(db, login):
    operator = login(OPERATOR)
    job_id = permanently_failed(db)
    scalar(operator, "SELECT pggit.acknowledge_failure(%s, 'seen')", (job_id,))
    force(db, "UPDATE pggit.backup_jobs SET completed_at = now() + interval '1 minute' WHERE job_id = %s", (job_id,))

    assert scalar(db, "SELECT acknowledged FROM pggit.backup_permanent_failures WHERE job_id = %s", (job_id,)) is False


@pytest.mark.parametrize(
    ("job", "note", "param", "problem"),
    [
        (None, "n", "p_job_id", "must not be NULL"),
        ("00000000-0000-0000-0000-000000000000", "n", "p_job_id", "no job with id"),
        ("failed", "", "p_note", "1-1000 characters"),
        ("failed", "a\x1b[2Jb", "p_note", "control character"),
        ("ready", "n", "p_job_id", "is ready, not permanently_failed"),
    ],
)
def test_acknowledge_failure_refuses_bad_input_naming_the_parameter(db, login, job, note, param, problem):
    operator = login(OPERATOR)
    if job == "failed":
        job = permanently_failed(db)
    elif job == "ready":
        job = str(schedule_dump(db)[1])
    error = refused(operator, "SELECT pggit.acknowledge_failure(%s, %s)", (job, note))
    assert error.pgcode == "22023" and error.diag.column_name == param and problem in error.diag.message_primary
    assert scalar(db, "SELECT count(*) FROM pggit.backup_failure_acknowledgements") == 0


def test_readers_and_workers_cannot_acknowledge(db, login):
    job_id = permanently_failed(db)
    for role in (READER, WORKER):
        assert refused(login(role), "SELECT pggit.acknowledge_failure(%s, 'x')", (job_id,)).pgcode == "42501"


def test_target_status_names_the_newest_verified_backup_the_last_failure_and_the_last_drill(db, login):
    reader = login(READER)
    old = make(db, ago(timedelta(days=2)))
    newest = make(db, ago(timedelta(hours=3)))
    make(db, ago(timedelta(hours=1)), verified=False)  # unverified: never the newest verified
    failed = permanently_failed(db, "pg_dump: out of disk")
    force(
        db,
        "UPDATE pggit.backups SET restore_tested_at = now() - interval '1 hour', restore_test_result = 'passed'"
        " WHERE backup_id = %s",
        (old,),
    )

    row = query(reader, """SELECT * FROM pggit.backup_target_status('{"tool": "pg_dump"}')""")[0]
    assert row["target"] == {"tool": "pg_dump", "database": scalar(db, "SELECT current_database()")}
    assert str(row["newest_verified_id"]) == str(newest) and row["verified_backups"] == 2
    assert 3 * 3600 - 60 < row["newest_verified_seconds"] < 3 * 3600 + 60
    assert (str(row["last_failure_job_id"]), row["last_failure_state"], row["last_failure_error"]) == (
        failed,
        "permanently_failed",
        "pg_dump: out of disk",
    )
    assert (str(row["last_drill_backup_id"]), row["last_drill_result"]) == (str(old), "passed")


def test_a_target_that_never_had_a_backup_has_no_age_not_zero(login):
    row = query(
        login(READER), """SELECT * FROM pggit.backup_target_status('{"tool": "pgbackrest", "stanza": "s9"}')"""
    )[0]
    assert row["backups"] == 0 and row["newest_verified_id"] is None
    assert row["newest_verified_seconds"] is None and row["newest_verified_at"] is None


def test_target_status_refuses_a_bad_target_naming_the_key(login):
    error = refused(login(READER), """SELECT * FROM pggit.backup_target_status('{"tool": "rsync"}')""")
    assert error.pgcode == "22023" and error.diag.column_name == "p_target.tool"


def test_queue_statistics_count_by_state_and_age_the_oldest_ready_job(db, login):
    reader = login(READER)
    assert query(reader, "SELECT * FROM pggit.backup_queue_statistics")[0]["oldest_ready_seconds"] is None
    _, waiting = schedule_dump(db)
    force(db, "UPDATE pggit.backup_jobs SET created_at = now() - interval '1 hour' WHERE job_id = %s", (waiting,))
    permanently_failed(db)

    row = query(reader, "SELECT * FROM pggit.backup_queue_statistics")[0]
    assert (row["ready"], row["permanently_failed_24h"], row["in_progress"]) == (1, 1, 0)
    assert 3590 < row["oldest_ready_seconds"] < 3700


def test_the_readmes_bulk_acknowledgement_after_an_upgrade_runs_as_written(db, login):
    operator = login(OPERATOR)
    permanently_failed(db)
    permanently_failed(db)

    query(
        operator,
        "SELECT pggit.acknowledge_failure(job_id, 'before monitoring') FROM pggit.backup_permanent_failures"
        " WHERE NOT acknowledged",
    )
    assert scalar(db, "SELECT count(*) FILTER (WHERE NOT acknowledged) FROM pggit.backup_permanent_failures") == 0
    assert scalar(db, "SELECT count(*) FROM pggit.backup_failure_acknowledgements") == 2


def test_a_hosts_rows_of_workers_gone_for_a_week_go_when_it_records_again(db, login):
    worker, other = login(WORKER), login(WORKER)
    for worker_id in ("host-a/1", "host-a/2", "host-a/3"):
        record(worker, worker_id)
    record(other, "host-b/1")
    force(db, "UPDATE pggit.backup_workers SET last_seen_at = now() - interval '8 days' WHERE worker_id <> 'host-a/2'")
    force(db, "UPDATE pggit.backup_workers SET last_seen_at = now() - interval '6 days' WHERE worker_id = 'host-a/2'")

    record(worker, "host-a/1")
    rows = query(db, "SELECT worker_id FROM pggit.backup_worker_status ORDER BY worker_id")
    assert [row["worker_id"] for row in rows] == ["host-a/1", "host-a/2", "host-b/1"], "only its own host's old rows"
