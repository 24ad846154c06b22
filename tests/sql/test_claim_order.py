"""The claim reads jobs in its own order from an index and stops at the first it can take (024):
its cost does not grow with the number of waiting or permanently failed jobs."""

from helpers.db import query, scalar
from helpers.queue import claim, force, schedule_stanza


def _index_reads(db) -> tuple[int, int]:
    scalar(db, "SELECT pg_stat_force_next_flush()")
    [row] = query(
        db,
        "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes"
        " WHERE schemaname = 'pggit' AND indexrelname = 'backup_jobs_claim_order_idx'",
    )
    return row["idx_scan"], row["idx_tup_read"]


def test_a_claim_reads_a_few_index_entries_whatever_the_queue_holds(db):
    for i in range(200):
        schedule_stanza(db, f"done-{i}")
    # 200 jobs failed for good (they keep status 'failed' for ever) and 200 ready ones
    force(db, "UPDATE pggit.backup_jobs SET status = 'failed', attempts = max_attempts, completed_at = now()")
    for i in range(200):
        schedule_stanza(db, f"ready-{i}")
    with db.cursor() as cur:
        cur.execute("VACUUM pggit.backup_jobs")  # the old versions' index entries, as autovacuum would
    scans, reads = _index_reads(db)
    claimed = claim(db)
    assert claimed is not None
    scans_after, reads_after = _index_reads(db)
    assert scans_after > scans  # the candidate search used the index ...
    assert reads_after - reads <= 5  # ... and stopped at the first job instead of reading 200 or 400


def test_permanently_failed_jobs_are_outside_the_index(db):
    _, failed = schedule_stanza(db, "gone")
    force(db, "UPDATE pggit.backup_jobs SET status = 'failed', attempts = max_attempts WHERE job_id = %s", (failed,))
    assert claim(db) is None


def test_a_due_retry_of_a_higher_priority_goes_before_a_fresh_job_and_an_undue_one_waits(db):
    _, fresh = schedule_stanza(db, "fresh", '{"priority": 5}')
    _, due = schedule_stanza(db, "due", '{"priority": 1}')
    _, later = schedule_stanza(db, "later", '{"priority": 1}')
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = 1,"
        " next_retry_at = CASE WHEN job_id = %s THEN now() - interval '1 s' ELSE now() + interval '1 h' END"
        " WHERE job_id IN (%s, %s)",
        (due, due, later),
    )
    assert [claim(db)["job_id"], claim(db)["job_id"], claim(db)] == [due, fresh, None]
