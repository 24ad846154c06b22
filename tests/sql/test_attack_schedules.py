"""Attacks on schedules (schema/014) and the recorded command (013) by a hostile worker login: it
cannot speak for another login's host (take over its definition, hide a conflict, record slots
in its name), nor put terminal escapes or line breaks into what a DBA reads (a schedule's cron
or timezone, a slot's detail, the command that ran)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from helpers.db import query, scalar
from helpers.queue import claim, schedule_dump

WORKER = "pggit_backup_worker"
UTC = timezone.utc
T0 = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
DUMP = {"cron": "*/5 * * * *", "timezone": "UTC", "tool": "pg_dump", "args": {"output_path": "/backups"}}
OTHER = {**DUMP, "args": {"output_path": "/elsewhere"}}


def touch(conn, host, name, definition):
    return query(
        conn,
        "SELECT * FROM pggit.touch_backup_schedule(%s, %s, %s, %s)",
        (host, name, json.dumps(definition), T0 - timedelta(days=1)),
    )[0]


def record(conn, host, name, slot, definition, decision="enqueue", detail=None):
    return query(
        conn,
        "SELECT * FROM pggit.record_backup_schedule_slot(%s, %s, %s, %s, %s, %s)",
        (host, name, slot, json.dumps(definition), decision, detail),
    )[0]


def hosts(db, name):
    rows = query(
        db, "SELECT host, fingerprint, login FROM pggit.backup_schedule_hosts WHERE schedule_name = %s", (name,)
    )
    return {row["host"]: (row["fingerprint"], row["login"]) for row in rows}


def test_a_login_cannot_speak_for_another_logins_host(db, login_as):
    host_a, login_a = login_as(WORKER)
    host_b, login_b = login_as(WORKER)
    fingerprint = touch(host_a, "worker-a/1", "dumps", DUMP)["fingerprint"]
    touch(host_b, "worker-b/1", "dumps", OTHER)  # B's own host: a conflict, in B's name
    before = hosts(db, "dumps")
    assert before["worker-a"] == (fingerprint, login_a)

    # B, passing A's worker id, would replace A's definition with its own and the conflict would
    # vanish (or A's slots be recorded with B's args, in A's name)
    for attempt in (
        lambda: touch(host_b, "worker-a/2", "dumps", OTHER),
        lambda: record(host_b, "worker-a/2", "dumps", T0, OTHER),
    ):
        with pytest.raises(psycopg2.Error) as refused:
            attempt()
        assert refused.value.pgcode == "42501" and login_a in refused.value.diag.message_primary
    assert hosts(db, "dumps") == before
    assert scalar(db, "SELECT count(*) FROM pggit.backup_schedule_slots") == 0

    # A itself goes on as before; the slot says which login recorded it
    touch(host_a, "worker-a/1", "dumps", DUMP)
    query(db, "DELETE FROM pggit.backup_schedule_hosts WHERE host = 'worker-b'")
    assert record(host_a, "worker-a/1", "dumps", T0, DUMP)["outcome"] == "enqueued"
    assert scalar(db, "SELECT recorded_login FROM pggit.backup_schedule_slots") == login_a


def test_a_host_silent_for_longer_than_alive_may_be_carried_by_another_login(db, login_as):
    """A host moved to a new login (credentials rotated) takes its name back once the old one is gone."""
    old, _ = login_as(WORKER)
    new, login_new = login_as(WORKER)
    touch(old, "worker-a/1", "dumps", DUMP)
    query(db, "UPDATE pggit.backup_schedule_hosts SET seen_at = now() - interval '1 hour'")
    touch(new, "worker-a/1", "dumps", DUMP)
    assert hosts(db, "dumps")["worker-a"][1] == login_new


@pytest.mark.parametrize(
    "definition, column",
    [
        ({**DUMP, "cron": "*/5 * * * *\x1b[2J"}, "p_definition.cron"),
        ({**DUMP, "timezone": "UTC\nFAKE LOG LINE"}, "p_definition.timezone"),
        ({**DUMP, "cron": "\u009b31m0 2 * * *"}, "p_definition.cron"),
        ({**DUMP, "args": {"output_path": "/backups\r"}}, "p_definition.args.output_path"),
        ({**DUMP, "cron": 5}, "p_definition.cron"),
    ],
)
def test_a_definition_with_control_characters_is_refused(db, login, definition, column):
    worker = login(WORKER)
    with pytest.raises(psycopg2.Error) as refused:
        touch(worker, "worker-a/1", "dumps", definition)
    assert refused.value.pgcode == "22023" and refused.value.diag.column_name == column
    assert scalar(db, "SELECT count(*) FROM pggit.backup_schedules") == 0


def test_a_slot_detail_with_control_characters_is_refused(db, login):
    worker = login(WORKER)
    touch(worker, "worker-a/1", "dumps", DUMP)
    with pytest.raises(psycopg2.Error) as refused:
        record(worker, "worker-a/1", "dumps", T0, DUMP, "missed", "late\x1b]0;owned\x07")
    assert refused.value.pgcode == "22023" and refused.value.diag.column_name == "p_detail"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_schedule_slots") == 0


def test_the_command_that_ran_cannot_carry_control_characters(db, login):
    worker = login(WORKER)
    _, job_id = schedule_dump(db)
    held = claim(worker, "worker-a/1")
    for forged in ("pg_dump mydb\nrm -rf /  # looks like a second line", "pg_dump \x1b[8mhidden", "pg_dump \u009b2J"):
        with pytest.raises(psycopg2.Error) as refused:
            scalar(worker, "SELECT pggit.record_job_command(%s, %s, %s)", (job_id, held["claim_token"], forged))
        assert refused.value.pgcode == "22023" and refused.value.diag.column_name == "p_command"
    assert scalar(db, "SELECT ran_command FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) is None
    shown = "/usr/bin/pg_dump $'a\\nb'"
    assert scalar(worker, "SELECT pggit.record_job_command(%s, %s, %s)", (job_id, held["claim_token"], shown))
