"""schema/025 and 026: the targets' status (status --check) and summary (the metrics file) computed in one
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
from helpers.target_population import OLD_SUMMARY, old_statuses, population

# the targets normalised, in order (what the status functions answer for)
KEYS = """SELECT pggit._require_retention_target(t.value) AS key
              FROM jsonb_array_elements(%s) WITH ORDINALITY t(value, n) ORDER BY t.n"""


def per_target(db, targets: list[dict]) -> list[dict]:
    """023's answer, from every backup, for each target as the config writes it."""
    return old_statuses(db, [row["key"] for row in query(db, KEYS, (json.dumps(targets),))])


def test_the_one_pass_status_of_many_targets_is_the_per_target_answer(db):
    targets = population(db)
    assert scalar(db, "SELECT count(DISTINCT target) FROM pggit.backup_target_identity") >= 7
    db.cursor().execute("BEGIN")  # one now() for both: newest_verified_seconds is measured from it
    try:
        expected = per_target(db, targets)
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
        assert many == per_target(db, padded)
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
        # schema/026's count of the unacknowledged permanent failures, against 019's view
        failures = "SELECT count(*) FROM pggit.backup_permanent_failures WHERE NOT acknowledged"
        assert scalar(db, failures) >= 2
        assert scalar(db, "SELECT n FROM pggit.backup_unacknowledged_failure_count") == scalar(db, failures)
        first = scalar(db, "SELECT job_id FROM pggit.backup_permanent_failures ORDER BY failed_at LIMIT 1")
        scalar(db, "SELECT pggit.acknowledge_failure(%s, 'seen')", (first,))
        assert scalar(db, "SELECT n FROM pggit.backup_unacknowledged_failure_count") == scalar(db, failures)
    finally:
        db.cursor().execute("ROLLBACK")
