"""A mixed population of backups for the targets' status and summary (schema/025, 026): several
tools and backup types, verified, unverified and failed backups, failed jobs (will retry,
permanently failed), drills passed and failed, expired backups, a tie on completed_at, targets
with no backup; and 022's summary query as it was, the oracle of the summary."""

from __future__ import annotations

import json
from datetime import timedelta

from helpers.db import query, scalar
from helpers.queue import force
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


# 023's _target_status, as it was: one target's status from every one of its backups
OLD_STATUS = """
WITH mine AS (
    SELECT b.* FROM pggit.backup_target_identity i JOIN pggit.backups b ON b.backup_id = i.backup_id
     WHERE i.target = %(t)s::jsonb
       AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id)),
newest AS (
    SELECT m.backup_id, m.backup_name, m.completed_at FROM mine m
     WHERE m.status = 'completed' AND m.verified_at IS NOT NULL AND m.completed_at IS NOT NULL
     ORDER BY m.completed_at DESC, m.backup_id LIMIT 1),
failure AS (
    SELECT j.job_id, coalesce(j.completed_at, j.updated_at) AS at,
           pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS state, j.last_error
      FROM pggit.backup_jobs j JOIN mine m ON m.backup_id = j.backup_id
     WHERE j.status = 'failed' AND j.tool = %(t)s::jsonb ->> 'tool'
     ORDER BY coalesce(j.completed_at, j.updated_at) DESC, j.job_id LIMIT 1),
drill AS (
    SELECT m.backup_id, m.restore_tested_at, m.restore_test_result FROM mine m
     WHERE m.restore_tested_at IS NOT NULL
     ORDER BY m.restore_tested_at DESC, m.backup_id LIMIT 1)
SELECT %(t)s::jsonb AS target,
       (SELECT count(*) FROM mine) AS backups,
       (SELECT count(*) FROM mine m WHERE m.status = 'completed' AND m.verified_at IS NOT NULL) AS verified_backups,
       n.backup_id AS newest_verified_id, n.backup_name AS newest_verified_name, n.completed_at AS newest_verified_at,
       extract(epoch FROM now() - n.completed_at)::double precision AS newest_verified_seconds,
       f.job_id AS last_failure_job_id, f.at AS last_failure_at, f.state AS last_failure_state,
       f.last_error AS last_failure_error,
       d.backup_id AS last_drill_backup_id, d.restore_tested_at AS last_drill_at,
       d.restore_test_result AS last_drill_result
  FROM (SELECT 1) one LEFT JOIN newest n ON true LEFT JOIN failure f ON true LEFT JOIN drill d ON true"""


def old_statuses(db, keys: list[dict]) -> list[dict]:
    """023's answer for each normalised target, in order."""
    return [query(db, OLD_STATUS, {"t": json.dumps(key)})[0] for key in keys]
