"""Every SQL snippet of the guide's monitoring, troubleshooting and retention sections runs
unchanged and means what the guide says."""

import pytest

from helpers.db import query, scalar
from helpers.queue import claim, force, schedule_dump, schedule_stanza


@pytest.fixture
def busy_queue(db):
    """One job in each state the guide talks about; returns {state: job_id}."""
    jobs = {}
    _, jobs["ready"] = schedule_stanza(db, "ready")
    _, jobs["in_progress"] = schedule_stanza(db, "running")
    _, jobs["will_retry"] = schedule_stanza(db, "retry")
    _, jobs["permanently_failed"] = schedule_stanza(db, "dead", '{"max_attempts": 1}')
    _, jobs["completed"] = schedule_stanza(db, "done")
    _, jobs["cancelled"] = schedule_stanza(db, "cancelled")
    claimed = {}
    while (row := claim(db, lease=600)) is not None:
        claimed[row["job_id"]] = row
    db.cursor().execute(
        "SELECT pggit.release_backup_job(%s, %s)", (jobs["ready"], claimed[jobs["ready"]]["claim_token"])
    )
    db.cursor().execute(
        "SELECT pggit.fail_claimed_backup_job(%s, %s, 'connection refused', true, 300, 21600)",
        (jobs["will_retry"], claimed[jobs["will_retry"]]["claim_token"]),
    )
    db.cursor().execute(
        "SELECT pggit.fail_claimed_backup_job(%s, %s, 'stanza missing')",
        (jobs["permanently_failed"], claimed[jobs["permanently_failed"]]["claim_token"]),
    )
    db.cursor().execute(
        "SELECT pggit.finish_backup_job(%s, %s)", (jobs["completed"], claimed[jobs["completed"]]["claim_token"])
    )
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (jobs["cancelled"],))
    return jobs


def test_job_queue_view_snippet_shows_each_state(db, busy_queue):
    rows = query(
        db,
        """
        -- View all jobs in queue
        SELECT
            job_id,
            backup_name,
            tool,
            status,
            job_state,
            attempts,
            created_at,
            started_at,
            last_error
        FROM pggit.backup_job_queue
        ORDER BY created_at DESC;""",
    )
    states = {r["job_id"]: r["job_state"] for r in rows}
    assert states == {job_id: state for state, job_id in busy_queue.items()}


def test_queue_statistics_snippet_counts_each_state(db, busy_queue):
    row = query(
        db,
        """
        -- Current queue state
        SELECT
            COUNT(*) FILTER (WHERE status = 'queued') as queued,
            COUNT(*) FILTER (WHERE status = 'running') as running,
            COUNT(*) FILTER (WHERE status = 'completed') as completed,
            COUNT(*) FILTER (WHERE status = 'failed' AND attempts < max_attempts) as retrying,
            COUNT(*) FILTER (WHERE status = 'failed' AND attempts >= max_attempts) as permanently_failed
        FROM pggit.backup_jobs
        WHERE created_at > CURRENT_TIMESTAMP - INTERVAL '24 hours';""",
    )[0]
    assert row == {"queued": 1, "running": 1, "completed": 1, "retrying": 1, "permanently_failed": 1}


def test_failed_jobs_snippet_lists_only_permanent_failures(db, busy_queue):
    rows = query(
        db,
        """
        -- Failed jobs
        SELECT
            job_id,
            backup_id,
            tool,
            attempts,
            max_attempts,
            last_error,
            created_at
        FROM pggit.backup_jobs
        WHERE status = 'failed'
          AND attempts >= max_attempts
        ORDER BY created_at DESC;""",
    )
    assert [(r["job_id"], r["last_error"]) for r in rows] == [(busy_queue["permanently_failed"], "stanza missing")]


def test_error_messages_snippet_shows_both_failures(db, busy_queue):
    rows = query(
        db,
        """
        -- View error messages
        SELECT job_id, tool, attempts, last_error
        FROM pggit.backup_jobs
        WHERE status = 'failed'
        ORDER BY created_at DESC
        LIMIT 5;""",
    )
    assert {r["job_id"] for r in rows} == {busy_queue["will_retry"], busy_queue["permanently_failed"]}


def test_backoff_snippet_shows_seconds_until_retry(db, busy_queue):
    rows = query(
        db,
        """
        -- Verify retry schedule
        SELECT
            job_id,
            attempts,
            next_retry_at,
            EXTRACT(EPOCH FROM (next_retry_at - CURRENT_TIMESTAMP)) as seconds_until_retry
        FROM pggit.backup_jobs
        WHERE status = 'failed'
          AND attempts < max_attempts;""",
    )
    assert len(rows) == 1 and rows[0]["attempts"] == 1
    assert 295 <= rows[0]["seconds_until_retry"] <= 300, "delay = base_delay * 2^(attempts-1) = 300 * 2^0"


def test_cancel_reset_and_cleanup_snippets(db, busy_queue):
    db.cursor().execute(
        """
        -- Cancel a stuck job
        UPDATE pggit.backup_jobs
        SET status = 'cancelled'
        WHERE job_id = %s;""",
        (busy_queue["in_progress"],),
    )
    db.cursor().execute(
        """
        -- Reset a failed job to retry immediately
        UPDATE pggit.backup_jobs
        SET status = 'queued',
            next_retry_at = NULL,
            attempts = 0
        WHERE job_id = %s;""",
        (busy_queue["permanently_failed"],),
    )
    states = {r["job_id"]: r["job_state"] for r in query(db, "SELECT job_id, job_state FROM pggit.backup_job_queue")}
    assert states[busy_queue["in_progress"]] == "cancelled"
    assert states[busy_queue["permanently_failed"]] == "ready"

    force(
        db,
        "UPDATE pggit.backup_jobs SET completed_at = now() - interval '8 days' WHERE job_id = %s",
        (busy_queue["completed"],),
    )
    with db.cursor() as cur:
        cur.execute("""
            -- Clear old completed jobs (cleanup)
            DELETE FROM pggit.backup_jobs
            WHERE status = 'completed'
              AND completed_at < CURRENT_TIMESTAMP - INTERVAL '7 days';""")
        assert cur.rowcount == 1


def test_backups_by_branch_snippet(db):
    schedule_dump(db)
    schedule_dump(db, schema="public")
    rows = query(
        db,
        """
        -- Backups by branch
        SELECT
            b.name as branch,
            COUNT(*) as backup_count,
            MAX(bk.created_at) as latest_backup
        FROM pggit.backups bk
        JOIN pggit.commits c ON bk.commit_hash = c.hash
        JOIN pggit.branches b ON c.branch_id = b.id
        GROUP BY b.name;""",
    )
    assert [(r["branch"], r["backup_count"]) for r in rows] == [("main", 2)]


def test_retention_snippets_delete_old_backups_and_keep_five_per_commit(db):
    scheduled = [schedule_dump(db) for _ in range(8)]
    ids = [backup_id for backup_id, _ in scheduled]
    for _, job_id in scheduled[:2]:
        claimed = claim(db)
        assert claimed["job_id"] == job_id
        db.cursor().execute("SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"]))
    force(
        db,
        "UPDATE pggit.backups SET created_at = now() - interval '31 days' WHERE backup_id = ANY(%s::uuid[])",
        (ids[:3],),
    )
    with db.cursor() as cur:
        cur.execute("""
            -- Delete old backups (keep last 30 days)
            DELETE FROM pggit.backups
            WHERE created_at < CURRENT_TIMESTAMP - INTERVAL '30 days'
              AND status = 'completed';""")
        assert cur.rowcount == 2, "only completed backups older than 30 days"
    force(db, "UPDATE pggit.backups SET created_at = created_at + (random() * interval '1 second')")
    with db.cursor() as cur:
        cur.execute("""
            -- Keep minimum number of backups per branch
            WITH ranked_backups AS (
                SELECT
                    backup_id,
                    ROW_NUMBER() OVER (
                        PARTITION BY commit_hash
                        ORDER BY created_at DESC
                    ) as rn
                FROM pggit.backups
            )
            DELETE FROM pggit.backups
            WHERE backup_id IN (
                SELECT backup_id FROM ranked_backups WHERE rn > 5
            );""")
        assert cur.rowcount == 1, "six left on one commit: the oldest goes"
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 5
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 5, "a deleted backup takes its job along"
