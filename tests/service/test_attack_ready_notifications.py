"""An attack on a running worker, as any login could make it: a burst of spoofed "job ready"
notifications must not turn into a burst of claims (moved here from sql/test_attack_claims.py,
since it needs a real supervisor)."""

from __future__ import annotations

import math
import time

from psycopg2 import sql

from helpers.db import query, scalar
from helpers.processes import wait_until
from helpers.queue import schedule_dump
from helpers.service import Service

# the worker's coalescing window (pggit_supervisor.worker.NOTIFY_MIN_GAP); 0.1.0 has none
NOTIFY_MIN_GAP = 0.5


def claim_calls(db) -> int:
    return scalar(
        db,
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
        "WHERE schemaname = 'pggit' AND funcname = 'claim_backup_job'",
    )


def worker_idle_after_a_claim(db) -> bool:
    """The worker waits: its last call was its claim, the record of itself that follows the first
    claim (pggit.record_worker, presence.py), or (idle) the outbox's claim (schema/018)."""
    return (
        scalar(
            db,
            """SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND application_name LIKE 'pggit-supervisor %%'
                            AND state = 'idle'
                            AND (query LIKE '%%claim_backup_job%%' OR query LIKE '%%record_worker%%'
                                 OR query LIKE '%%claim_notification_deliveries%%')""",
        )
        == 1
    )


def test_a_burst_of_spoofed_ready_notifications_costs_at_most_one_claim_per_wake_up(db, dsn, login_as, tmp_path):
    # count every claim the worker makes (its session starts after this); a backend's counts
    # are flushed for certain when it exits, so they are read after the service stopped
    dbname = scalar(db, "SELECT current_database()")
    db.cursor().execute(sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(sql.Identifier(dbname)))
    schedule_dump(db)  # a job the service has no tool for: it must stay exactly as it is
    before = query(db, "SELECT * FROM pggit.backup_jobs ORDER BY job_id")
    attacker, _ = login_as()  # no pggit role at all: PUBLIC may connect and NOTIFY
    service = Service(tmp_path, dsn, workers=1, poll_interval=600).start()
    try:
        wait_until(lambda: worker_idle_after_a_claim(db), 20, "the worker's first claim")
        started = time.monotonic()
        for _ in range(1000):
            attacker.cursor().execute("NOTIFY pggit_backup_job_ready, 'custom'")
        burst = time.monotonic() - started
        time.sleep(NOTIFY_MIN_GAP + 1.5)
        assert service.stop() == 0
    finally:
        service.cleanup()
    spent = claim_calls(db) - 1  # the claim it made on starting
    # the first NOTIFY wakes the worker at once (pickup latency); every later claim waits the gap
    bound = math.ceil(burst / NOTIFY_MIN_GAP) + 2
    assert 1 <= spent <= bound, f"1000 NOTIFYs over {burst:.2f} s made {spent} claims (at most {bound} allowed)"
    assert query(db, "SELECT * FROM pggit.backup_jobs ORDER BY job_id") == before
