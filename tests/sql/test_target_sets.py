"""schema/025: the targets' status (status --check) and summary (the metrics file) computed in one
pass give exactly what the per-target answer (023's _target_status) and 022's summary query gave,
on a mixed population: several tools and backup types, verified, unverified and failed backups,
failed jobs (will retry, permanently failed), drills passed and failed, expired backups, a tie
on completed_at, and targets with no backup at all. Also its indexed queue figures (019's
backup_queue_statistics, the metrics file's job states) against the full reads they replace."""

from __future__ import annotations

import json
from datetime import timedelta

from helpers.db import query, scalar
from helpers.queue import claim, force, schedule_dump
from helpers.retention import make

# 022's view as it was (over 023's backup_target_of), to compare the new one with
OLD_SUMMARY = """
WITH placed AS (
    SELECT t.target, b.backup_type, b.status, b.completed_at, b.started_at, b.backup_size, b.metadata,
           b.status = 'completed' AND b.verified_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id) AS available
      FROM pggit.backup_target_of t JOIN pggit.backups b ON b.backup_id = t.backup_id
)
SELECT p.target, p.target ->> 'tool' AS tool, p.backup_type,
       max(p.completed_at) FILTER (WHERE p.status = 'completed') AS last_success_at,
       max(p.completed_at) FILTER (WHERE p.status = 'failed') AS last_failure_at,
       max(p.completed_at) FILTER (WHERE p.available) AS newest_verified_at,
       count(*) FILTER (WHERE p.available) AS verified_available,
       count(*) FILTER (WHERE p.status = 'completed') AS completed,
       count(*) FILTER (WHERE p.status = 'failed') AS failed,
       count(*) FILTER (WHERE p.status = 'cancelled') AS cancelled,
       (array_agg(extract(epoch FROM p.completed_at - p.started_at) ORDER BY p.completed_at DESC)
            FILTER (WHERE p.status = 'completed' AND p.started_at IS NOT NULL))[1] AS last_duration_seconds,
       (array_agg(p.backup_size ORDER BY p.completed_at DESC)
            FILTER (WHERE p.status = 'completed'))[1] AS last_size_bytes,
       (array_agg(p.metadata ->> 'repo' ORDER BY p.completed_at DESC)
            FILTER (WHERE p.status = 'completed'))[1] AS repo_key
  FROM placed p
 GROUP BY p.target, p.backup_type"""

PER_TARGET = """SELECT s.* FROM jsonb_array_elements(%s) WITH ORDINALITY t(value, n)
                  CROSS JOIN LATERAL pggit._target_status(pggit._require_retention_target(t.value)) s ORDER BY t.n"""


def expire(db, backup_id: str) -> None:
    force(
        db,
        "INSERT INTO pggit.backup_expirations (backup_id, target, rule_set, reasons, expired_by)"
        " VALUES (%s, '{}', '{}', '{test}', 'test')",
        (backup_id,),
    )


def failed_job(db, backup_id: str, at, attempts: int, error: str) -> None:
    """The backup's job failed at `at`: permanently (attempts = max_attempts) or to be retried."""
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = %s, max_attempts = 3, completed_at = %s,"
        " last_error = %s WHERE backup_id = %s",
        (attempts, at, error, backup_id),
    )


def drill(db, backup_id: str, at, result: str) -> None:
    force(
        db,
        "UPDATE pggit.backups SET restore_tested_at = %s, restore_test_result = %s WHERE backup_id = %s",
        (at, result, backup_id),
    )


def timed(db, backup_id: str, minutes: int, size: int, repo: str | None = None) -> None:
    force(
        db,
        "UPDATE pggit.backups SET started_at = completed_at - make_interval(mins => %s), backup_size = %s,"
        " metadata = metadata || jsonb_strip_nulls(jsonb_build_object('repo', %s::text)) WHERE backup_id = %s",
        (minutes, size, repo, backup_id),
    )


def population(db) -> list[dict]:
    """The mixed population; returns the targets to ask about (some twice, some with no backup)."""
    now = scalar(db, "SELECT now()")
    hours = [now - timedelta(hours=h) for h in range(40)]
    # s1: full and incremental, the newest verified one expired, durations, sizes and repos
    for h in (30, 20, 10, 5):
        timed(db, make(db, hours[h], stanza="s1", backup_type="full"), h, 1000 + h, f"repo{h % 2 + 1}")
    for h in (25, 15, 3):
        timed(db, make(db, hours[h], stanza="s1", backup_type="incr"), h + 1, 10 + h)
    newest_s1 = make(db, hours[1], stanza="s1", backup_type="full")
    timed(db, newest_s1, 7, 7777, "repo9")
    expire(db, newest_s1)
    make(db, hours[2], stanza="s1", backup_type="full", verified=False)
    # s2: two verified backups finished at the same moment (the least id is the newest), a failed
    # backup whose job failed for good, another whose job will retry, a passed and a failed drill
    tie = [make(db, hours[4], stanza="s2", backup_type="full") for _ in range(3)]
    for backup_id in tie:
        timed(db, backup_id, 12, 4242, "repo1")
    drill(db, tie[1], hours[2], "passed")
    old = make(db, hours[30], stanza="s2", backup_type="full")
    drill(db, old, hours[1], "failed")
    for h, attempts in ((6, 3), (3, 1)):
        failed = make(db, hours[h], stanza="s2", backup_type="full", status="failed")
        failed_job(db, failed, hours[h], attempts, f"pgbackrest: exit {h}")
    # s3: only failures, the newest of them expired; cancelled ones
    for h in (9, 8):
        failed = make(db, hours[h], stanza="s3", backup_type="diff", status="failed")
        failed_job(db, failed, hours[h], 3, f"disk full {h}")
    expire(db, failed)
    make(db, hours[7], stanza="s3", backup_type="diff", status="cancelled")
    # pg_dump of the database (two schemas), pg_basebackup, Barman: through the real functions
    for h in (12, 6):
        make(db, hours[h])
    db.cursor().execute("CREATE SCHEMA IF NOT EXISTS app")
    for h, verified in ((11, True), (2, False)):
        backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', 'app')")
        force(
            db,
            "UPDATE pggit.backups SET status = 'completed', completed_at = %s, verified_at = %s WHERE backup_id = %s",
            (hours[h], hours[h] if verified else None, backup_id),
        )
        drill(db, backup_id, hours[h - 1], "passed")
    basebackup = scalar(db, "SELECT pggit.backup_pg_basebackup('main')")
    force(
        db,
        "UPDATE pggit.backups SET status = 'completed', completed_at = %s, verified_at = %s WHERE backup_id = %s",
        (hours[14], hours[14], basebackup),
    )
    barman = scalar(db, "SELECT pggit.backup_barman('pg-main', 'main')")
    failed_job(db, barman, hours[13], 3, "barman: no WAL")
    force(db, "UPDATE pggit.backups SET status = 'failed', completed_at = %s WHERE backup_id = %s", (hours[13], barman))
    database = scalar(db, "SELECT current_database()")
    return [
        {"tool": "pgbackrest", "stanza": "s1"},
        {"tool": "pgbackrest", "stanza": "s2"},
        {"tool": "pgbackrest", "stanza": "s3"},
        {"tool": "pgbackrest", "stanza": "never"},
        {"tool": "pg_dump", "database": database},
        {"tool": "pg_dump", "database": database, "schema": "app"},
        {"tool": "pg_basebackup", "database": database},
        {"tool": "barman", "server": "pg-main"},
        {"tool": "pgbackrest", "stanza": "s2"},  # asked twice: answered twice, in its places
    ]


def test_the_one_pass_status_of_many_targets_is_the_per_target_answer(db):
    targets = population(db)
    assert scalar(db, "SELECT count(DISTINCT target) FROM pggit.backup_target_identity") >= 7
    db.cursor().execute("BEGIN")  # one now() for both: newest_verified_seconds is measured from it
    try:
        expected = query(db, PER_TARGET, (json.dumps(targets),))
        keys = [row["target"] for row in expected]
        direct = query(
            db,
            "SELECT * FROM pggit._target_statuses(%s::jsonb[]) ORDER BY n",
            ([json.dumps(key) for key in keys],),
        )
        assert [row.pop("n") for row in direct] == list(range(1, len(targets) + 1))
        assert direct == expected
        # past the few-targets path: more than 100 targets, padded with stanzas of no backup
        padded = targets + [{"tool": "pgbackrest", "stanza": f"none{i}"} for i in range(120)]
        many = query(db, "SELECT * FROM pggit.backup_target_statuses(%s)", (json.dumps(padded),))
        assert many == query(db, PER_TARGET, (json.dumps(padded),))
        few = query(db, "SELECT * FROM pggit.backup_target_statuses(%s)", (json.dumps(targets),))
        assert few == expected
    finally:
        db.cursor().execute("ROLLBACK")
    by_stanza = {row["target"].get("stanza"): row for row in expected}
    assert by_stanza["s1"]["verified_backups"] == 7 and by_stanza["s1"]["newest_verified_name"]
    assert by_stanza["s2"]["last_failure_error"] == "pgbackrest: exit 3"
    assert by_stanza["s2"]["last_failure_state"] == "will_retry"
    assert by_stanza["s2"]["last_drill_result"] == "failed"
    assert by_stanza["s3"]["last_failure_error"] == "disk full 9", "the newest failure is expired"
    assert by_stanza["never"]["backups"] == 0 and by_stanza["never"]["newest_verified_id"] is None


def test_the_one_pass_summary_is_022s(db):
    population(db)
    order = " ORDER BY target::text, backup_type"
    new = query(db, "SELECT * FROM pggit.backup_target_summary" + order)
    old = query(db, f"SELECT * FROM ({OLD_SUMMARY}) s" + order)
    assert len(new) == 8
    assert new == old
    s1_full = next(r for r in new if r["target"].get("stanza") == "s1" and r["backup_type"] == "full")
    assert (s1_full["last_size_bytes"], s1_full["repo_key"], float(s1_full["last_duration_seconds"])) == (
        7777,
        "repo9",
        420.0,
    ), "the newest completed backup, expired or not"


def test_a_reader_sees_the_summary_and_the_job_states(db, login):
    reader = login("pggit_backup_reader")
    assert query(reader, "SELECT * FROM pggit.backup_target_summary") == []
    schedule_dump(db)
    assert [row["job_state"] for row in query(reader, "SELECT * FROM pggit.backup_job_state_counts")] == ["ready"]


# 019's view as it was, and 022's snapshot's two reads of the job states
OLD_QUEUE_STATISTICS = """
SELECT count(*) FILTER (WHERE s.state = 'ready') AS ready,
       count(*) FILTER (WHERE s.state = 'in_progress') AS in_progress,
       count(*) FILTER (WHERE s.state = 'will_retry') AS will_retry,
       count(*) FILTER (WHERE s.state = 'completed' AND s.ended_at > now() - interval '24 hours') AS completed_24h,
       count(*) FILTER (WHERE s.state = 'permanently_failed' AND s.ended_at > now() - interval '24 hours')
           AS permanently_failed_24h,
       count(*) FILTER (WHERE s.state = 'cancelled' AND s.ended_at > now() - interval '24 hours') AS cancelled_24h,
       extract(epoch FROM now() - min(s.created_at) FILTER (WHERE s.state = 'ready'))::double precision
           AS oldest_ready_seconds
  FROM (SELECT pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS state, j.created_at,
               coalesce(j.completed_at, j.updated_at) AS ended_at
          FROM pggit.backup_jobs j) s"""
OLD_JOB_STATES = """
SELECT job_state, count(*) AS n, min(created_at) AS oldest_created_at, min(started_at) AS oldest_started_at
  FROM pggit.backup_job_queue GROUP BY job_state ORDER BY job_state"""


def test_the_indexed_queue_figures_are_019s_and_the_job_queues(db):
    population(db)
    now = scalar(db, "SELECT now()")
    for _ in range(3):
        schedule_dump(db)  # ready
    force(db, "UPDATE pggit.backup_jobs SET created_at = %s WHERE status = 'queued'", (now - timedelta(hours=2),))
    claim(db, "w1", ["pg_dump"])  # in progress
    old = make(db, now - timedelta(days=3))  # finished before the last day
    force(db, "UPDATE pggit.backup_jobs SET updated_at = %s WHERE backup_id = %s", (now - timedelta(days=3), old))
    states = {row["state"] for row in query(db, "SELECT DISTINCT pggit.backup_job_state(status, attempts, max_attempts)"
                                                 " AS state FROM pggit.backup_jobs")}  # fmt: skip
    assert states == {"ready", "in_progress", "will_retry", "completed", "permanently_failed", "cancelled"}
    db.cursor().execute("BEGIN")
    try:
        assert query(db, "SELECT * FROM pggit.backup_queue_statistics") == query(db, OLD_QUEUE_STATISTICS)
        assert query(db, "SELECT * FROM pggit.backup_job_state_counts ORDER BY job_state") == query(db, OLD_JOB_STATES)
    finally:
        db.cursor().execute("ROLLBACK")
