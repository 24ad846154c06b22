"""Attacks on retention (schema/015) by the rows other logins can write: what a backup belongs to
cannot be moved by the worker that finishes it, a backup registered by hand is not retention's
to expire, and an expired backup cannot be reset back to life (its data is about to go)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta

import psycopg2
import pytest

from helpers.db import query, scalar
from helpers.queue import claim, force, schedule_stanza
from helpers.retention import make as make_at

WORKER, OPERATOR, ADMIN = "pggit_backup_worker", "pggit_backup_operator", "pggit_backup_admin"
S1 = {"tool": "pgbackrest", "stanza": "s1"}
DUMPS = {"tool": "pg_dump"}


def now(db):
    return scalar(db, "SELECT now()")


def plan_ids(conn, target: dict, rules: dict) -> set[str]:
    rows = query(
        conn, "SELECT backup_id::text FROM pggit.retention_plan(%s, %s)", (json.dumps(target), json.dumps(rules))
    )
    return {row["backup_id"] for row in rows}


def test_the_worker_finishing_a_backup_cannot_move_it_to_another_target(db, login):
    """finish_backup_job merges the worker's metadata into the backup's: a hostile worker that
    writes {"params": {"stanza": "s1"}} into its stanza-s2 backup must not make it s1's newest
    verified backup (pushing s1's real backups out of keep_last)."""
    real = [make_at(db, now(db) - timedelta(days=day), backup_type="full", stanza="s1") for day in (1, 2)]
    worker = login(WORKER)
    _, job_id = schedule_stanza(db, "s2")
    held = claim(worker, "host-x/1", ["pgbackrest"])
    assert held["job_id"] == job_id
    forged = json.dumps({"verified": True, "metadata": {"params": {"stanza": "s1"}}})
    assert scalar(worker, "SELECT pggit.finish_backup_job(%s, %s, 'done', %s)", (job_id, held["claim_token"], forged))

    assert plan_ids(db, S1, {"keep_last": 1}) == set(real), "s2's backup is not s1's"
    expired = query(
        worker, "SELECT * FROM pggit.expire_backups('host-x/1', %s, %s)", (json.dumps(S1), '{"keep_last": 1}')
    )
    assert {row["backup_id"] for row in expired} == {real[1]}, "only s1's older backup goes, the newest s1 stays"


def test_a_backup_registered_by_hand_is_not_retentions_to_expire(db, login):
    """A DBA's backup registered and completed by hand is never verified (no job read it back), so
    under the rules it would be 'unverified, never counted' and go after the grace period: step 2
    would then remove a backup this service never made."""
    make_at(db, now(db) - timedelta(days=1))
    admin = login(ADMIN)
    by_hand = scalar(
        admin,
        "SELECT pggit.register_backup('dba-copy', 'full', 'pg_dump', 'file:///srv/dba/copy.dump', NULL, 'main',"
        " false, '{\"params\": {}}')",
    )
    scalar(admin, "SELECT pggit.complete_backup(%s, 100, 50, 'gzip')", (by_hand,))
    force(db, "UPDATE pggit.backups SET created_at = now() - interval '30 days' WHERE backup_id = %s", (by_hand,))

    assert by_hand not in plan_ids(db, DUMPS, {"grace_seconds": 0})
    worker = login(WORKER)
    query(worker, "SELECT * FROM pggit.expire_backups('h/1', %s, %s)", (json.dumps(DUMPS), '{"grace_seconds": 0}'))
    assert scalar(db, "SELECT count(*) FROM pggit.backup_expirations WHERE backup_id = %s", (by_hand,)) == 0


def test_an_expired_backup_cannot_be_reset_back_to_life(db, login):
    """A cancelled backup goes after the grace period; the operator's reset of its job would put it
    back in progress and, once it completes, a good backup would sit marked expired (counted for
    nothing, its data removed by step 2). The reset is refused, naming the expiry."""
    make_at(db, now(db) - timedelta(hours=1))
    dead = make_at(db, now(db) - timedelta(days=3), status="cancelled", verified=False)
    worker = login(WORKER)
    expired = query(
        worker, "SELECT * FROM pggit.expire_backups('h/1', %s, %s)", (json.dumps(DUMPS), '{"grace_seconds": 0}')
    )
    assert {row["backup_id"] for row in expired} == {dead}

    operator = login(OPERATOR)
    job_id = scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (dead,))
    with pytest.raises(psycopg2.Error) as refused:
        query(
            operator,
            "UPDATE pggit.backup_jobs SET status = 'queued', attempts = 0, next_retry_at = NULL WHERE job_id = %s",
            (job_id,),
        )
    assert refused.value.pgcode == "55000" and "expired" in refused.value.diag.message_primary
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (dead,)) == "cancelled"


def kept_by(conn, rules: dict) -> set[str]:
    rows = query(
        conn, "SELECT backup_id::text, keep FROM pggit.retention_plan(%s, %s)", (json.dumps(DUMPS), json.dumps(rules))
    )
    return {row["backup_id"] for row in rows if row["keep"]}


def _expire(conn, rules: dict):
    return query(conn, "SELECT * FROM pggit.expire_backups('h/1', %s, %s)", (json.dumps(DUMPS), json.dumps(rules)))


def test_two_rule_sets_expiring_at_once_hold_the_floor_one_after_the_other(db, dsn, login_as):
    """Host A keeps the 3 newest, host B (another rule set for the same target) the newest of 4
    weeks: each alone holds min_verified 3, but planned on the same rows they would together
    leave one. B waits for A's lock, then plans on what A left, so 3 stay."""
    backups = [make_at(db, now(db) - timedelta(days=day)) for day in (0, 1, 2, 8, 15, 22)]
    assert len(kept_by(db, {"keep_weekly": 4, "min_verified": 3}) - set(backups[:3])) >= 2, "B alone keeps old ones"
    _, name_a = login_as(WORKER)
    _, name_b = login_as(WORKER)
    host_a, host_b = psycopg2.connect(dsn, user=name_a), psycopg2.connect(dsn, user=name_b)
    try:
        first = _expire(host_a, {"keep_last": 3, "min_verified": 3})  # A's transaction stays open
        assert {row["backup_id"] for row in first} == set(backups[3:])
        pool = ThreadPoolExecutor(1)
        second = pool.submit(_expire, host_b, {"keep_weekly": 4, "min_verified": 3})
        with pytest.raises(FutureTimeout):
            second.result(timeout=1)  # waiting for the target's lock
        host_a.commit()
        assert second.result(timeout=20) == [], "B sees A's expiries: the 3 left are its floor"
        host_b.commit()
        pool.shutdown()
    finally:
        host_a.close()
        host_b.close()
    assert kept_by(db, {"min_verified": 3}) == set(backups[:3])


def test_expiry_in_a_repeatable_read_transaction_is_refused(db, dsn, login_as):
    """Under REPEATABLE READ the snapshot predates the lock: the wait above would plan on rows
    from before A's expiries, and the floor's re-check would read them too."""
    make_at(db, now(db) - timedelta(days=1))
    _, name = login_as(WORKER)
    conn = psycopg2.connect(dsn, user=name)
    try:
        conn.set_session(isolation_level="REPEATABLE READ")
        with pytest.raises(psycopg2.Error) as refused:
            _expire(conn, {})
        assert refused.value.pgcode == "25000"
    finally:
        conn.close()


def test_a_kept_incremental_keeps_every_backup_it_references_not_only_its_full(db):
    """pgBackRest's incremental after a differential reads files of both: its info lists them in
    `reference` (and `prior`). Letting the differential go would break the kept incremental (and
    `pgbackrest expire --set` of the differential takes its dependants with it)."""
    old = make_at(db, now(db) - timedelta(days=9), backup_type="full", label="20260101-000000F")
    full = make_at(db, now(db) - timedelta(days=3), backup_type="full", label="20260107-000000F")
    diff = make_at(db, now(db) - timedelta(days=2), backup_type="diff", label="20260107-000000F_20260108-000000D")
    incr = make_at(db, now(db) - timedelta(days=1), backup_type="incr", label="20260107-000000F_20260109-000000I")
    for backup_id, prior, reference in (
        (diff, "20260107-000000F", ["20260107-000000F"]),
        (incr, "20260107-000000F_20260108-000000D", ["20260107-000000F", "20260107-000000F_20260108-000000D"]),
    ):
        force(
            db,
            "UPDATE pggit.backups SET metadata = metadata || %s WHERE backup_id = %s",
            (json.dumps({"prior": prior, "reference": reference}), backup_id),
        )
    rows = query(
        db,
        "SELECT backup_id::text, keep, reasons FROM pggit.retention_plan(%s, %s)",
        (json.dumps(S1), '{"keep_last": 1}'),
    )
    found = {row["backup_id"]: (row["keep"], row["reasons"]) for row in rows}
    assert found[incr] == (True, ["newest verified", "keep_last"])
    assert found[diff] == (True, ["base of a kept incremental"])
    assert found[full] == (True, ["base of a kept incremental"])
    assert found[old] == (False, [])
