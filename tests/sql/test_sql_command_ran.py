"""pggit.record_job_command and the view's command (schema/013): until a tool starts, the view
says its command is the requested one; once the worker records the argv that started, the view
shows that, and says so. Only the claim's own login with its token can record, and only while
the job runs; a refused call changes nothing."""

from __future__ import annotations

import psycopg2
import pytest

from helpers.db import query, scalar
from helpers.queue import claim, job, schedule_dump
from pggit_supervisor.queue import MAX_COMMAND_BYTES

WORKER = "pggit_backup_worker"
RAN = "/usr/lib/postgresql/16/bin/pg_dump --format=custom '--file=/backups/.pggit-x.partial' --snapshot=00000003-1"


def job_row(db, job_id):
    return query(db, "SELECT * FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))[0]


def record(conn, job_id, token, command):
    return scalar(conn, "SELECT pggit.record_job_command(%s, %s, %s)", (job_id, token, command))


def test_before_a_tool_starts_the_view_says_its_command_is_the_requested_one(db):
    _, job_id = schedule_dump(db)
    row = job(db, job_id)
    assert row["command_source"] == "requested"
    assert (
        row["command"]
        == row["requested_command"]
        == scalar(db, "SELECT command FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))
    )
    assert row["command"].startswith("pg_dump ")


def test_the_claimer_records_the_command_that_ran_and_the_view_shows_it(db, login_as):
    _, job_id = schedule_dump(db)
    worker, _ = login_as(WORKER)
    requested = job(db, job_id)["command"]
    held = claim(worker, "w1", ["pg_dump"])
    assert record(worker, job_id, held["claim_token"], RAN) is True
    row = job(db, job_id)
    assert (row["command"], row["command_source"], row["requested_command"]) == (RAN, "ran", requested)
    stored = job_row(db, job_id)
    assert stored["command"] == requested, "the job's own command (what was asked) never changes"
    assert stored["ran_command"] == RAN and stored["ran_command_at"] is not None
    info = query(db, "SELECT jobs FROM pggit.get_backup_info(%s)", (row["backup_id"],))[0]["jobs"]
    assert [(j["command"], j["command_source"]) for j in info] == [(RAN, "ran")], "get_backup_info says the same"
    # the finished job keeps showing what ran
    assert scalar(worker, "SELECT pggit.finish_backup_job(%s, %s, 'done')", (job_id, held["claim_token"])) is True
    assert job(db, job_id)["command_source"] == "ran"


def test_another_login_or_a_wrong_token_or_an_ended_claim_records_nothing(db, login_as):
    _, job_id = schedule_dump(db)
    host_a, _ = login_as(WORKER)
    host_b, _ = login_as(WORKER)
    held = claim(host_a, "host-a/1", ["pg_dump"])
    before = job_row(db, job_id)
    assert record(host_b, job_id, held["claim_token"], "rm -rf /") is False, "B holds A's token but is not A"
    assert record(host_a, job_id, "0" * 64, "rm -rf /") is False
    assert job_row(db, job_id) == before
    assert scalar(host_a, "SELECT pggit.release_backup_job(%s, %s)", (job_id, held["claim_token"])) is True
    released = job_row(db, job_id)
    assert record(host_a, job_id, held["claim_token"], "rm -rf /") is False, "the claim ended with the release"
    assert job_row(db, job_id) == released and job(db, job_id)["command_source"] == "requested"


@pytest.mark.parametrize("command", ["", None, "x" * (MAX_COMMAND_BYTES + 1)])
def test_an_empty_or_oversized_command_is_refused_with_a_clear_error(db, login_as, command):
    _, job_id = schedule_dump(db)
    worker, _ = login_as(WORKER)
    held = claim(worker, "w1", ["pg_dump"])
    before = job_row(db, job_id)
    with pytest.raises(psycopg2.Error) as refused:
        record(worker, job_id, held["claim_token"], command)
    assert refused.value.pgcode == "22023" and "p_command" in str(refused.value)
    assert job_row(db, job_id) == before


def test_readers_see_the_ran_command_but_cannot_record_one(db, login_as):
    _, job_id = schedule_dump(db)
    worker, _ = login_as(WORKER)
    held = claim(worker, "w1", ["pg_dump"])
    assert record(worker, job_id, held["claim_token"], RAN) is True
    for role in ("pggit_backup_reader", "pggit_backup_operator"):
        conn, _ = login_as(role)
        assert scalar(conn, "SELECT ran_command FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) == RAN
        assert scalar(conn, "SELECT command FROM pggit.backup_job_queue WHERE job_id = %s", (job_id,)) == RAN
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            record(conn, job_id, held["claim_token"], "x")


def test_the_ran_command_cannot_be_written_by_hand(db, login_as):
    _, job_id = schedule_dump(db)
    admin, _ = login_as("pggit_backup_admin")
    with pytest.raises(psycopg2.Error) as refused:
        scalar(admin, "UPDATE pggit.backup_jobs SET ran_command = 'forged' WHERE job_id = %s RETURNING 1", (job_id,))
    assert refused.value.pgcode == "55000"
    assert job(db, job_id)["command_source"] == "requested"
