"""Adversarial review of issue 11's monitoring and outbox (schema/018-021): ways to make status
say OK when nothing happened, or to lose a notification. A WAL archive read once as keeping up
must not stay "0 seconds behind" once the readings stop or fail (a dead checking worker, a claim
another host holds for a day, a tool that errors every time); a drill slot decided for one target
is not another's; the last 24 hours' failures count by when they ended; another host's login
cannot drop a live host's endpoints; a reading's failure count is a count."""

from __future__ import annotations

import json

from helpers.db import query, refused, scalar
from helpers.queue import force, schedule_dump

WORKER = "pggit_backup_worker"
STANZA = {"tool": "pgbackrest", "stanza": "main"}
SEG = "0000000100000000000000{:02X}"
TWO_HOURS = 7200


def record(conn, reading: dict, worker="host-a/1"):
    return query(
        conn, "SELECT * FROM pggit.record_archive_status(%s, %s, %s)", (worker, json.dumps(STANZA), json.dumps(reading))
    )[0]


def wal_age(db):
    return scalar(db, "SELECT wal_age_seconds FROM pggit.archive_freshness WHERE target = %s", (json.dumps(STANZA),))


def time_passes(db, seconds: int) -> None:
    """Every time the row keeps moves back, as if its readings were made `seconds` ago."""
    columns = [
        row["column_name"]
        for row in query(
            db,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'pggit'"
            " AND table_name = 'archive_status' AND data_type = 'timestamp with time zone'",
        )
    ]
    moves = ", ".join(f"{c} = {c} - make_interval(secs => {int(seconds)})" for c in columns)
    force(db, f"UPDATE pggit.archive_status SET {moves}")


def test_an_archive_read_once_as_keeping_up_ages_when_no_reading_follows(db, login):
    worker = login(WORKER)
    record(worker, {"archive_max": SEG.format(4), "server_segment": SEG.format(5)})
    assert wal_age(db) < 60
    time_passes(db, TWO_HOURS)
    assert wal_age(db) >= TWO_HOURS, "two hours without a reading is not an archive known to keep up"


def test_readings_that_fail_every_time_do_not_keep_the_archive_fresh(db, login):
    worker = login(WORKER)
    record(worker, {"archive_max": SEG.format(4), "server_segment": SEG.format(5)})
    time_passes(db, TWO_HOURS)
    record(worker, {"error": "pgbackrest info failed: exit 41"})
    assert wal_age(db) >= TWO_HOURS, "a failed reading says nothing about the archive keeping up"


def test_another_host_holding_the_check_for_a_day_shows_as_an_ageing_archive(db, login):
    first, second = login(WORKER), login(WORKER)
    claim = "SELECT pggit.claim_archive_check(%s, %s, %s)"
    assert scalar(first, claim, ("host-a/1", json.dumps(STANZA), 60))
    record(first, {"archive_max": SEG.format(4), "server_segment": SEG.format(5)})
    force(db, "UPDATE pggit.archive_status SET next_check_at = now()")
    assert scalar(second, claim, ("host-b/1", json.dumps(STANZA), 86400)), "the hostile host takes the check"
    time_passes(db, TWO_HOURS)
    assert not scalar(first, claim, ("host-a/1", json.dumps(STANZA), 60)), "and holds it for a day"
    assert wal_age(db) >= TWO_HOURS, "an archive nobody read for two hours is not 0 seconds behind"


def test_an_archive_that_keeps_up_and_is_read_stays_fresh(db, login):
    worker = login(WORKER)
    record(worker, {"archive_max": SEG.format(4), "server_segment": SEG.format(5)})
    time_passes(db, TWO_HOURS)
    record(worker, {"archive_max": SEG.format(9), "server_segment": SEG.format(10)})
    assert wal_age(db) < 60


def drill_target(db, tool="pg_dump"):
    return {"tool": tool, "database": scalar(db, "SELECT current_database()")}


def test_a_drill_slot_decided_for_one_target_is_not_returned_as_anothers(db, login):
    first, second = login(WORKER), login(WORKER)
    slot = scalar(db, "SELECT date_trunc('minute', now()) - interval '1 minute'")
    call = "SELECT * FROM pggit.record_drill_slot(%s, 'nightly', %s, %s)"
    other = {**drill_target(db), "schema": "elsewhere"}
    decided = query(second, call, ("host-b/1", slot, json.dumps(other)))[0]
    assert decided["outcome"] == "skipped" and decided["fresh"]
    mine = query(first, call, ("host-a/1", slot, json.dumps(drill_target(db, "pg_basebackup"))))[0]
    assert mine["fresh"], "this target's slot is decided for this target, not taken from another's"
    again = query(second, call, ("host-b/1", slot, json.dumps(other)))[0]
    assert again["outcome"] == "skipped" and not again["fresh"], "the same target gets the first decision"
    assert scalar(db, "SELECT count(*) FROM pggit.drill_slots") == 2


def test_a_job_queued_days_ago_that_failed_for_good_now_counts_in_the_last_24_hours(db, login):
    """status shows "completed, permanently failed and cancelled in the last 24 hours": a job
    that waited, retried or ran for days ended now, and must not read as 0 failures."""
    reader = login("pggit_backup_reader")
    _, failed = schedule_dump(db)
    _, done = schedule_dump(db)
    force(db, "UPDATE pggit.backup_jobs SET created_at = now() - interval '3 days'")
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = max_attempts,"
        " started_at = now() - interval '1 hour', completed_at = now(), last_error = 'refused'"
        " WHERE job_id = %s",
        (failed,),
    )
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'completed', started_at = now() - interval '1 hour',"
        " completed_at = now()"
        " WHERE job_id = %s",
        (done,),
    )
    row = query(reader, "SELECT * FROM pggit.backup_queue_statistics")[0]
    assert (row["permanently_failed_24h"], row["completed_24h"]) == (1, 1)
    force(
        db,
        "UPDATE pggit.backup_jobs SET completed_at = now() - interval '2 days', updated_at = now() - interval '2 days'",
    )
    row = query(reader, "SELECT * FROM pggit.backup_queue_statistics")[0]
    assert (row["permanently_failed_24h"], row["completed_24h"]) == (0, 0), "ended two days ago"


RECORD_WORKER = "SELECT pggit.record_worker(%s, 'machine-1', 4242, '0.1.0', 'db', ARRAY['pg_dump'], now(), NULL)"
REGISTER = "SELECT pggit.register_notification_endpoints(%s, %s)"
ONCALL = [{"name": "oncall", "url": "https://hooks.example.com/T/secret", "events": ["permanently_failed"]}]


def test_another_hosts_login_cannot_unregister_or_rewrite_a_live_hosts_endpoints(db, login):
    """A second host's worker login speaking as host-a would drop host-a's endpoints (or narrow
    their events), and every job ending until host-a registers again is owed nobody: lost."""
    host_a, host_b = login(WORKER), login(WORKER)
    query(host_a, RECORD_WORKER, ("host-a/1",))
    assert scalar(host_a, REGISTER, ("host-a", json.dumps(ONCALL))) == 1
    error = refused(host_b, REGISTER, ("host-a", "[]"))
    assert error.pgcode == "42501" and "host-a" in error.pgerror
    narrowed = [{**ONCALL[0], "events": ["cancelled"]}]
    error = refused(host_b, REGISTER, ("host-a", json.dumps(narrowed)))
    assert error.pgcode == "42501"
    rows = query(db, "SELECT endpoint_name, events, registered_by FROM pggit.notification_endpoints")
    assert rows == [{"endpoint_name": "oncall", "events": ["permanently_failed"], "registered_by": "host-a"}]


def test_a_reading_with_a_negative_failure_count_is_refused_naming_the_key(db, login):
    worker = login(WORKER)
    text = json.dumps({"archive_max": SEG.format(4), "failed_count": -3})
    error = refused(worker, "SELECT pggit.record_archive_status('h/1', %s, %s)", (json.dumps(STANZA), text))
    assert error.pgcode == "22023" and "p_reading.failed_count" in error.pgerror
    assert query(db, "SELECT * FROM pggit.archive_status") == []
