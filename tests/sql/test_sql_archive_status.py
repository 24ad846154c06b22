"""WAL archiving freshness in SQL (schema/020; issue 11): one reading per target and interval
whichever worker asks, and the database deciding how stale an archive is from the readings:
behind since a completed segment was first seen missing, fresh again once it is archived, the
newest segment's last change when the server's position is unknown; bad readings refused."""

from __future__ import annotations

import json

import pytest

from helpers.db import query, refused, scalar
from helpers.queue import force

WORKER, READER = "pggit_backup_worker", "pggit_backup_reader"
STANZA = {"tool": "pgbackrest", "stanza": "main"}
SEG = "0000000100000000000000{:02X}"


def record(conn, reading: dict, target=STANZA, worker="host-a/1"):
    return query(
        conn, "SELECT * FROM pggit.record_archive_status(%s, %s, %s)", (worker, json.dumps(target), json.dumps(reading))
    )[0]


def fresh(db, target=STANZA):
    rows = query(db, "SELECT * FROM pggit.archive_freshness WHERE target = %s", (json.dumps(target),))
    return rows[0] if rows else None


def age_back(db, seconds: int) -> None:
    force(
        db,
        "UPDATE pggit.archive_status SET behind_since = behind_since - make_interval(secs => %s),"
        " changed_at = changed_at - make_interval(secs => %s)",
        (seconds, seconds),
    )


def test_one_worker_reads_a_target_per_interval_whichever_host_asks(db, login):
    first, second = login(WORKER), login(WORKER)
    claim = "SELECT pggit.claim_archive_check(%s, %s, 60)"
    assert scalar(first, claim, ("host-a/1", json.dumps(STANZA)))
    assert not scalar(second, claim, ("host-b/1", json.dumps(STANZA))), "the other host waits for the interval"
    assert scalar(second, claim, ("host-b/1", json.dumps({"tool": "barman", "server": "pg"}))), "another target"
    force(db, "UPDATE pggit.archive_status SET next_check_at = now() - interval '1 second'")
    assert scalar(second, claim, ("host-b/1", json.dumps(STANZA))), "due again"


def test_an_archive_that_keeps_up_is_fresh_and_one_falling_behind_ages_until_it_catches_up(db, login):
    worker = login(WORKER)
    row = record(worker, {"archive_max": SEG.format(4), "server_segment": SEG.format(5)})
    assert row["behind_since"] is None and row["changed_at"] is not None
    assert fresh(db)["wal_age_seconds"] < 60 and fresh(db)["server_position_known"]

    record(worker, {"archive_max": SEG.format(4), "server_segment": SEG.format(7), "failed_count": 3})
    age_back(db, 600)
    record(worker, {"archive_max": SEG.format(5), "server_segment": SEG.format(8), "failed_count": 4})
    shown = fresh(db)
    assert 600 <= shown["wal_age_seconds"] < 700, "behind since the first reading that saw a missing segment"
    assert shown["failed_count"] == 4

    record(worker, {"archive_max": SEG.format(7), "server_segment": SEG.format(8)})
    assert fresh(db)["wal_age_seconds"] < 60 and fresh(db)["behind_since"] is None


def test_without_the_servers_position_the_age_is_how_long_the_newest_segment_has_not_changed(db, login):
    worker = login(WORKER)
    record(worker, {"archive_max": SEG.format(4)})
    age_back(db, 900)
    record(worker, {"archive_max": SEG.format(4)})
    shown = fresh(db)
    assert not shown["server_position_known"] and 900 <= shown["wal_age_seconds"] < 1000
    record(worker, {"archive_max": SEG.format(6)})
    assert fresh(db)["wal_age_seconds"] < 60


def test_a_failed_reading_keeps_what_was_known_and_says_why(db, login):
    worker = login(WORKER)
    record(worker, {"archive_max": SEG.format(4), "server_segment": SEG.format(9)})
    age_back(db, 300)
    record(worker, {"error": "pgbackrest info failed: exit 41"})
    shown = fresh(db)
    assert shown["error"] == "pgbackrest info failed: exit 41" and shown["archive_max"] == SEG.format(4)
    assert shown["wal_age_seconds"] >= 300, "a failed reading does not make a stale archive fresh"


def test_no_reading_yet_has_no_age_never_zero(db, login):
    worker = login(WORKER)
    record(worker, {"error": "the archive holds no WAL yet"})
    assert fresh(db)["wal_age_seconds"] is None


@pytest.mark.parametrize(
    ("reading", "param"),
    [
        ({"archive_max": "nope"}, "p_reading.archive_max"),
        ({"server_segment": "00000001000000000000000g"}, "p_reading.server_segment"),
        ({"surprise": 1}, "p_reading"),
        ({"failed_count": "many"}, "p_reading"),
        ("[]", "p_reading"),
    ],
)
def test_bad_readings_are_refused_naming_the_key_and_write_nothing(db, login, reading, param):
    worker = login(WORKER)
    text = reading if isinstance(reading, str) else json.dumps(reading)
    error = refused(worker, "SELECT pggit.record_archive_status('h/1', %s, %s)", (json.dumps(STANZA), text))
    assert error.pgcode == "22023" and param in error.pgerror
    assert query(db, "SELECT * FROM pggit.archive_status") == []


def test_only_archives_have_freshness_and_only_workers_record_it(db, login):
    worker, reader = login(WORKER), login(READER)
    dumps = json.dumps({"tool": "pg_dump"})
    assert "p_target.tool" in refused(worker, "SELECT pggit.claim_archive_check('h/1', %s, 60)", (dumps,)).pgerror
    assert refused(reader, "SELECT pggit.claim_archive_check('h/1', %s, 60)", (json.dumps(STANZA),)).pgcode == "42501"
    assert refused(reader, "SELECT * FROM pggit.archive_status").pgcode == "42501"
    record(worker, {"archive_max": SEG.format(1)})
    assert len(query(reader, "SELECT * FROM pggit.archive_freshness")) == 1
