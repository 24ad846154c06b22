"""Drill slots in SQL (schema/021; issue 11): each slot of a drill schedule is decided once,
whoever asks: the target's newest completed, verified, unexpired backup never drilled gets a
restore drill, or the slot says why not; bad input is refused before anything is written."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from helpers.db import query, refused, scalar
from helpers.queue import force
from helpers.retention import make

WORKER, READER = "pggit_backup_worker", "pggit_backup_reader"
DUMPS = json.dumps({"tool": "pg_dump"})


def slot(db, minutes_ago=0):
    return scalar(db, "SELECT date_trunc('minute', now()) - make_interval(mins => %s)", (minutes_ago,))


def record(conn, at, name="weekly-drill", target=DUMPS, worker="host-a/1"):
    return query(conn, "SELECT * FROM pggit.record_drill_slot(%s, %s, %s, %s)", (worker, name, at, target))[0]


def drills(db):
    return query(db, "SELECT backup_id::text, status FROM pggit.backup_jobs WHERE tool = 'restore_test'")


def test_a_slot_drills_the_newest_verified_backup_never_drilled_once_whoever_asks(db, login):
    now = scalar(db, "SELECT now()")
    older = make(db, now - timedelta(days=2))
    newest = make(db, now - timedelta(days=1))
    make(db, now - timedelta(hours=1), verified=False)  # never counts
    first, second = login(WORKER), login(WORKER)

    decided = record(first, slot(db, 1))
    assert (decided["outcome"], decided["backup_id"], decided["fresh"]) == ("enqueued", newest, True)
    again = record(second, slot(db, 1), worker="host-b/1")
    assert (again["outcome"], again["job_id"], again["fresh"]) == ("enqueued", decided["job_id"], False)
    assert drills(db) == [{"backup_id": newest, "status": "queued"}]

    later = record(second, slot(db), worker="host-b/1")
    assert (later["outcome"], later["backup_id"]) == ("enqueued", older), "the newest has its drill already"
    assert record(first, slot(db) + timedelta(minutes=1))["outcome"] == "skipped"
    (row,) = query(db, "SELECT detail FROM pggit.drill_slots ORDER BY slot_time DESC LIMIT 1")
    assert row["detail"] == "every verified backup of the target was drilled already (or its drill is queued)"


def test_no_verified_backup_is_a_recorded_skip_and_an_expired_one_is_never_drilled(db, login):
    worker = login(WORKER)
    done = make(db, scalar(db, "SELECT now()") - timedelta(days=1))
    force(
        db,
        "INSERT INTO pggit.backup_expirations (backup_id, target, rule_set, reasons, expired_by)"
        " VALUES (%s, '{}', '{}', '{test}', 'test')",
        (done,),
    )
    skipped = record(worker, slot(db))
    assert (skipped["outcome"], skipped["detail"]) == (
        "skipped",
        "no completed, verified backup of the target to drill",
    )
    assert drills(db) == []


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (("h/1", "weekly-drill", "2026-01-01 00:00:30+00", DUMPS), "p_slot"),
        (("h/1", "weekly-drill", "2999-01-01 00:00+00", DUMPS), "p_slot"),
        (("h/1", "bad name!", "2026-01-01 00:00+00", DUMPS), "p_schedule"),
        (("h/1", "weekly-drill", "2026-01-01 00:00+00", '{"tool": "pgbackrest", "stanza": "s"}'), "p_target.tool"),
    ],
)
def test_bad_input_is_refused_naming_the_parameter_and_writes_nothing(db, login, args, param):
    error = refused(login(WORKER), "SELECT * FROM pggit.record_drill_slot(%s, %s, %s, %s)", args)
    assert error.pgcode == "22023" and param in error.pgerror
    assert query(db, "SELECT * FROM pggit.drill_slots") == []


def test_readers_see_slots_and_drill_results_but_cannot_record(db, login):
    reader = login(READER)
    assert refused(reader, "SELECT * FROM pggit.record_drill_slot('h/1', 'd', now(), %s)", (DUMPS,)).pgcode == "42501"
    backup = make(db, scalar(db, "SELECT now()") - timedelta(days=1))
    force(
        db,
        "UPDATE pggit.backups SET restore_tested_at = now(), restore_test_result = 'passed',"
        ' metadata = metadata || \'{"restore_test": {"restore_seconds": 12.5}}\' WHERE backup_id = %s',
        (backup,),
    )
    (row,) = query(reader, "SELECT * FROM pggit.restore_drill_status")
    assert (row["backup_id"], row["restore_test_result"], float(row["restore_seconds"])) == (backup, "passed", 12.5)
    assert row["target"]["tool"] == "pg_dump" and row["target"]["database"]
    assert query(reader, "SELECT * FROM pggit.drill_slots") == []
