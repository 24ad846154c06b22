"""Claims from several connections at once: no job is claimed twice, and a target never has two
running jobs, even when the claims race."""

import threading
from collections import Counter

from helpers.db import scalar
from helpers.queue import claim, schedule_stanza


def _run_claimers(connect, count, work):
    barrier = threading.Barrier(count)
    errors = []

    def body(index):
        conn = connect()
        try:
            barrier.wait()
            work(index, conn)
        except Exception as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def _claim_at_once(connect, count):
    """Claims one job from each of `count` connections at once; returns the rows that got one."""
    winners = []
    lock = threading.Lock()

    def race(index, conn):
        row = claim(conn, f"w/{index}")
        if row is not None:
            with lock:
                winners.append(row)

    _run_claimers(connect, count, race)
    return winners


def test_many_jobs_drained_by_eight_connections_are_each_claimed_once(connect, db):
    jobs = {schedule_stanza(db, f"stanza-{i}")[1] for i in range(200)}
    claimed = []
    lock = threading.Lock()

    def drain(index, conn):
        while (row := claim(conn, f"w/{index}")) is not None:
            with lock:
                claimed.append(row["job_id"])
            assert scalar(conn, "SELECT pggit.finish_backup_job(%s, %s)", (row["job_id"], row["claim_token"]))

    _run_claimers(connect, 8, drain)
    counts = Counter(claimed)
    assert set(counts) == jobs and max(counts.values()) == 1
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE status = 'completed'") == 200


def test_racing_claims_of_one_target_start_exactly_one_job(connect, db):
    for _ in range(20):
        schedule_stanza(db, "shared")
    for _round in range(5):
        winners = _claim_at_once(connect, 6)
        assert len(winners) == 1, f"round {_round}: {len(winners)} jobs of one stanza started"
        assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE status = 'running'") == 1
        winner = winners[0]
        assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (winner["job_id"], winner["claim_token"]))


def test_concurrent_rescues_return_each_expired_job_once(connect, db):
    for i in range(30):
        schedule_stanza(db, f"s{i}")
    while claim(db, "gone", lease=1) is not None:
        pass
    db.cursor().execute("SELECT pg_sleep(1.1)")
    rescued = []
    lock = threading.Lock()

    def rescue(index, conn):
        rows = conn.cursor()
        rows.execute("SELECT job_id FROM pggit.rescue_expired_backup_jobs()")
        with lock:
            rescued.extend(r[0] for r in rows.fetchall())

    _run_claimers(connect, 4, rescue)
    assert len(rescued) == 30 and len(set(rescued)) == 30
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE attempts = 1 AND status = 'failed'") == 30
