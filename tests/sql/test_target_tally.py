"""schema/026: each target's figures are kept in pggit.backup_target_tally as backups change, and
status and the metrics summary read them there. The rows must be exactly what the backups say
after any change, however it is made:

- the oracles are the old answers computed from every backup: 023's per-target status query and
  022's summary query, as they were (OLD_STATUS here, OLD_SUMMARY in test_target_sets.py), and
  each row recomputed from its backups (_tally_group, which a rebuild uses);
- the changes are the ones that make a row lose its newest (expiry, deletion, a retry putting a
  failed backup back in progress, a job deleted so the backup loses its target, a backup type
  changed, a newer and an older drill), several backups of one group in one statement, TRUNCATE,
  and two sessions changing one group at once in both orders."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

from helpers.db import query, refused, scalar
from helpers.queue import claim, force
from helpers.retention import make
from helpers.target_population import OLD_SUMMARY, drill, expire, old_statuses, population

KEPT = "SELECT * FROM pggit.backup_target_tally WHERE members > 0 ORDER BY target::text, backup_type"
RECOMPUTED = """SELECT c.* FROM (SELECT DISTINCT i.target, b.backup_type FROM pggit.backup_target_identity i
                                 JOIN pggit.backups b ON b.backup_id = i.backup_id) g
                 CROSS JOIN LATERAL pggit._tally_group(g.target, g.backup_type, NULL) c
                 ORDER BY c.target::text, c.backup_type"""
ORDER = " ORDER BY target::text, backup_type"


def targets_of(db) -> list[dict]:
    """Every target with a backup, and one with none."""
    keys = [row["target"] for row in query(db, "SELECT DISTINCT target FROM pggit.backup_target_identity")]
    return keys + [{"tool": "pgbackrest", "stanza": "never"}]


def assert_exact(db, targets: list[dict] | None = None) -> list[dict]:
    """The kept rows are the recomputed ones, emptied groups hold nothing, and status and the
    summary read from them give the old answers. Returns the statuses."""
    assert query(db, KEPT) == query(db, RECOMPUTED)
    assert (
        scalar(
            db,
            """SELECT count(*) FROM pggit.backup_target_tally WHERE members = 0
                  AND (live, available, completed, failed, cancelled) IS DISTINCT FROM (0, 0, 0, 0, 0)
                   OR members = 0 AND num_nonnulls(newest_available, newest_completed, newest_timed, last_failed,
                                                   drill, failure) > 0""",
        )
        == 0
    )
    assert query(db, "SELECT * FROM pggit.backup_target_summary" + ORDER) == query(
        db, f"SELECT * FROM ({OLD_SUMMARY}) s" + ORDER
    )
    targets = targets if targets is not None else targets_of(db)
    db.cursor().execute("BEGIN")  # one now() for both: newest_verified_seconds is measured from it
    try:
        statuses = query(db, "SELECT * FROM pggit.backup_target_statuses(%s)", (json.dumps(targets),))
        old = old_statuses(db, [row["target"] for row in statuses])
        one = [query(db, "SELECT * FROM pggit.backup_target_status(%s)", (json.dumps(t),))[0] for t in targets]
    finally:
        db.cursor().execute("ROLLBACK")
    assert statuses == old == one
    return statuses


def group(db, target: dict, backup_type: str) -> dict:
    """One group's row, its newests as dicts (recency, id, at, backup_id)."""
    return scalar(
        db,
        "SELECT to_jsonb(t) FROM pggit.backup_target_tally t WHERE target = %s AND backup_type = %s",
        (json.dumps(target), backup_type),
    )


S1 = {"tool": "pgbackrest", "stanza": "s1"}
S2 = {"tool": "pgbackrest", "stanza": "s2"}
S3 = {"tool": "pgbackrest", "stanza": "s3"}


def test_the_kept_rows_are_the_old_answers_on_the_mixed_population(db):
    population(db)
    statuses = assert_exact(db)
    by_stanza = {row["target"].get("stanza"): row for row in statuses}
    assert by_stanza["s1"]["verified_backups"] == 7
    assert by_stanza["s2"]["last_failure_state"] == "will_retry"
    assert by_stanza["never"]["backups"] == 0
    assert scalar(db, "SELECT count(*) FROM pggit.backup_target_tally") >= 8


def test_losing_a_newest_finds_the_next_one(db):
    population(db)
    s1 = group(db, S1, "full")
    newest = s1["newest_available"]
    # the newest verified backup expires: the next one is the newest, one fewer available
    expire(db, newest["id"])
    after = group(db, S1, "full")
    assert after["newest_available"]["id"] != newest["id"] and after["available"] == s1["available"] - 1
    assert after["newest_available"]["at"] < newest["at"]
    assert_exact(db)
    # the newest completed one is deleted (the newest completed counts expired backups too)
    newest_completed = after["newest_completed"]["id"]
    db.cursor().execute("DELETE FROM pggit.backups WHERE backup_id = %s", (newest_completed,))
    assert group(db, S1, "full")["newest_completed"]["id"] != newest_completed
    assert_exact(db)
    # the newest drill of s2 is on a backup that expires; then a newer drill, then an older one
    s2 = group(db, S2, "full")
    drilled = s2["drill"]["id"]
    expire(db, drilled)
    assert group(db, S2, "full")["drill"]["id"] != drilled
    assert_exact(db)
    other = scalar(
        db,
        "SELECT i.backup_id FROM pggit.backup_target_identity i JOIN pggit.backups b USING (backup_id)"
        " WHERE i.target = %s AND b.restore_tested_at IS NULL AND b.status = 'completed' LIMIT 1",
        (json.dumps(S2),),
    )
    now = scalar(db, "SELECT now()")
    drill(db, other, now, "passed")
    assert group(db, S2, "full")["drill"]["id"] == other
    drill(db, other, now - timedelta(days=30), "failed")  # moved back: another drill is newer now
    assert group(db, S2, "full")["drill"]["id"] != other
    assert_exact(db)


def test_a_retry_takes_a_failure_out_and_a_new_failure_in(db):
    population(db)
    s2 = group(db, S2, "full")
    failed = s2["failure"]
    job = query(db, "SELECT * FROM pggit.backup_jobs WHERE job_id = %s", (failed["id"],))[0]
    assert job["status"] == "failed" and job["attempts"] < job["max_attempts"]
    # the job that will retry (its backup in progress meanwhile, 012) is claimed again: it is no
    # longer a failure, the one before it is the newest
    force(db, "UPDATE pggit.backup_jobs SET next_retry_at = now() - interval '1 s' WHERE job_id = %s", (job["job_id"],))
    row = claim(db, "w/1", ["pgbackrest"])  # the population's pg_dump jobs are still queued
    assert row is not None and str(row["job_id"]) == str(job["job_id"])
    after = group(db, S2, "full")
    assert after["failure"]["id"] != failed["id"] and after["failed"] == s2["failed"]
    assert after["last_failed"]["id"] != failed["backup_id"]
    assert_exact(db)
    # and fails again, for good: it is the newest failure again
    assert scalar(
        db,
        "SELECT pggit.fail_claimed_backup_job(%s, %s, 'pgbackrest: exit 99', false)",
        (row["job_id"], row["claim_token"]),
    )
    again = group(db, S2, "full")
    assert again["failure"]["id"] == failed["id"] and again["last_failed"]["id"] == failed["backup_id"]
    assert again["failed"] == s2["failed"] + 1
    statuses = assert_exact(db)
    s2_status = next(s for s in statuses if s["target"] == S2)
    assert (s2_status["last_failure_error"], s2_status["last_failure_state"]) == (
        "pgbackrest: exit 99",
        "permanently_failed",
    )


def test_a_backup_leaves_with_its_target_and_moves_with_its_type(db):
    population(db)
    s1 = group(db, S1, "full")
    newest = s1["newest_available"]["id"]
    # its only job is deleted: the backup has no target any more (023), and leaves the group
    db.cursor().execute("DELETE FROM pggit.backup_jobs WHERE backup_id = %s", (newest,))
    assert scalar(db, "SELECT count(*) FROM pggit.backup_target_identity WHERE backup_id = %s", (newest,)) == 0
    after = group(db, S1, "full")
    assert after["members"] == s1["members"] - 1 and after["newest_available"]["id"] != newest
    assert_exact(db)
    # a backup recorded as another type than asked (pgBackRest's incr made as a full) moves group
    incr = group(db, S1, "incremental")
    moved = incr["newest_completed"]["id"]
    force(db, "UPDATE pggit.backups SET backup_type = 'full' WHERE backup_id = %s", (moved,))
    assert group(db, S1, "incremental")["members"] == incr["members"] - 1
    assert group(db, S1, "full")["members"] == after["members"] + 1
    assert_exact(db)


def test_one_statement_changing_many_backups_of_a_group_counts_each_once(db):
    population(db)
    now = scalar(db, "SELECT now()")
    for h in range(6):
        make(db, now - timedelta(minutes=h), stanza="s4", backup_type="full")
    s4 = {"tool": "pgbackrest", "stanza": "s4"}
    # all expire at once: the first row's trigger finds the newest gone and looks again, while
    # the statement has already expired the rest
    force(
        db,
        """INSERT INTO pggit.backup_expirations (backup_id, target, rule_set, reasons, expired_by)
           SELECT i.backup_id, '{}', '{}', '{test}', 'test' FROM pggit.backup_target_identity i
            WHERE i.target = %s ORDER BY i.backup_id""",
        (json.dumps(s4),),
    )
    gone = group(db, s4, "full")
    assert (gone["members"], gone["live"], gone["available"], gone["newest_available"]) == (6, 0, 0, None)
    assert_exact(db)
    # their expiries go again at once, then the backups themselves
    db.cursor().execute(
        "DELETE FROM pggit.backup_expirations e USING pggit.backup_target_identity i"
        " WHERE i.backup_id = e.backup_id AND i.target = %s",
        (json.dumps(s4),),
    )
    back = group(db, s4, "full")
    assert (back["live"], back["available"]) == (6, 6) and back["newest_available"] is not None
    assert_exact(db)
    db.cursor().execute(
        "DELETE FROM pggit.backups b USING pggit.backup_target_identity i WHERE i.backup_id = b.backup_id"
        " AND i.target = %s",
        (json.dumps(s4),),
    )
    empty = group(db, s4, "full")
    assert (empty["members"], empty["live"], empty["completed"], empty["newest_completed"]) == (0, 0, 0, None)
    assert_exact(db)


def test_failed_backups_moving_and_times_cleared(db):
    population(db)
    # a backup whose job failed changes type and is expired and back: its failure moves with it
    s3 = group(db, S3, "differential")
    failed = s3["failure"]
    force(db, "UPDATE pggit.backups SET backup_type = 'full' WHERE backup_id = %s", (failed["backup_id"],))
    assert group(db, S3, "full")["failure"]["id"] == failed["id"]
    assert (group(db, S3, "differential")["failure"] or {}).get("id") != failed["id"]
    assert_exact(db)
    expire(db, failed["backup_id"])
    assert group(db, S3, "full")["failure"] is None
    force(db, "DELETE FROM pggit.backup_expirations WHERE backup_id = %s", (failed["backup_id"],))
    assert group(db, S3, "full")["failure"]["id"] == failed["id"]
    assert_exact(db)
    # a drill's time and a completion time cleared by hand: the newest is found again
    s2 = group(db, S2, "full")
    force(
        db,
        "UPDATE pggit.backups SET restore_tested_at = NULL, restore_test_result = NULL WHERE backup_id = %s",
        (s2["drill"]["id"],),
    )
    assert (group(db, S2, "full")["drill"] or {}).get("id") != s2["drill"]["id"]
    assert_exact(db)
    # (a completed backup without its time only the owner can make; 022's summary showed its size
    # first, DESC putting NULLs first; 026 passes over it: compared with the recomputation only)
    force(db, "UPDATE pggit.backups SET completed_at = NULL WHERE backup_id = %s", (s2["newest_completed"]["id"],))
    assert group(db, S2, "full")["newest_completed"]["id"] != s2["newest_completed"]["id"]
    assert query(db, KEPT) == query(db, RECOMPUTED)


def test_a_truncate_and_a_rebuild_leave_the_rows_right(db):
    population(db)
    kept = query(db, KEPT)
    assert scalar(db, "SELECT pggit._tally_rebuild()") == len(query(db, "SELECT * FROM pggit.backup_target_tally"))
    assert query(db, KEPT) == kept, "the rows kept change by change are the rebuilt ones"
    db.cursor().execute("TRUNCATE pggit.backup_expirations")
    assert_exact(db)
    db.cursor().execute("TRUNCATE pggit.backups CASCADE")
    assert scalar(db, "SELECT count(*) FROM pggit.backup_target_tally") == 0
    assert_exact(db)


def test_real_jobs_through_the_api_are_counted_as_they_end(db):
    for stanza in ("a", "a", "b"):
        scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main', %s)", (stanza,))
    verified = {"backup_size": 7, "verified": True}
    for outcome in ("verified", "unverified", "failed"):
        row = claim(db, "w/1")
        if outcome == "failed":
            scalar(
                db, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'boom', false)", (row["job_id"], row["claim_token"])
            )
            continue
        backup = verified if outcome == "verified" else {"backup_size": 3}
        assert scalar(
            db,
            "SELECT pggit.finish_backup_job(%s, %s, 'ok', %s, '{}')",
            (row["job_id"], row["claim_token"], json.dumps(backup)),
        )
    # a finish with another's claim is refused for a bad value before the claim is looked up
    # (011's order of checks), and answers false for a good one
    scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main', 'c')")
    row = claim(db, "w/1")
    bad = refused(
        db,
        "SELECT pggit.finish_backup_job(%s, %s, 'ok', %s, '{}')",
        (row["job_id"], "0" * 64, json.dumps({"checksum": "bad checksum!"})),
    )
    assert "p_backup.checksum" in str(bad)
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s, 'ok', '{}', '{}')", (row["job_id"], "0" * 64)) is False
    a = group(db, {"tool": "pgbackrest", "stanza": "a"}, "full")
    assert (a["members"], a["completed"], a["available"]) == (2, 2, 1)
    statuses = assert_exact(db)
    b = next(s for s in statuses if s["target"] == {"tool": "pgbackrest", "stanza": "b"})
    assert b["last_failure_error"] == "boom" and b["verified_backups"] == 0


def _in_thread(connect, sql: str, params) -> tuple[threading.Thread, list]:
    """Runs sql on a connection of its own in a thread (it may wait for a lock); errors kept."""
    errors: list = []

    def body():
        conn = connect()
        try:
            force(conn, sql, params)
        except Exception as exc:  # surfaced by the caller
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread, errors


def _waiting_for_a_lock(db) -> bool:
    return bool(
        scalar(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
    )


def _race(db, connect, first_sql: str, first_params, second_sql: str, second_params) -> None:
    """first runs in a transaction left open; second starts meanwhile on another session and
    must wait for first's lock on the group's row; first commits; second goes on."""
    holder = connect()
    holder.autocommit = False
    force(holder, first_sql, first_params)
    thread, errors = _in_thread(connect, second_sql, second_params)
    deadline = time.monotonic() + 10
    while not _waiting_for_a_lock(db):
        assert time.monotonic() < deadline, "the second session never waited for the first"
        assert thread.is_alive(), errors
        time.sleep(0.02)
    holder.commit()
    holder.close()
    thread.join(10)
    assert not thread.is_alive() and not errors, errors


def test_two_sessions_changing_one_group_at_once(db, connect):
    population(db)
    now = scalar(db, "SELECT now()")
    fresh = scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main', 's1')")
    newest = group(db, S1, "full")["newest_available"]["id"]
    # a new verified backup ends (the newest now) while another session expires the old newest:
    # the second looks again for a newest after the first committed, and finds the new one
    ends = "UPDATE pggit.backups SET status = 'completed', completed_at = %s, verified_at = %s WHERE backup_id = %s"
    _race(
        db,
        connect,
        ends,
        (now + timedelta(minutes=1), now + timedelta(minutes=1), fresh),
        "INSERT INTO pggit.backup_expirations (backup_id, target, rule_set, reasons, expired_by)"
        " VALUES (%s, '{}', '{}', '{test}', 'test')",
        (newest,),
    )
    assert group(db, S1, "full")["newest_available"]["id"] == fresh
    assert_exact(db)
    # the other order: the newest is deleted first, and a backup ends meanwhile
    late = scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main', 's1')")
    _race(
        db,
        connect,
        "DELETE FROM pggit.backups WHERE backup_id = %s",
        (fresh,),
        ends,
        (now - timedelta(days=400), now - timedelta(days=400), late),
    )
    s1 = group(db, S1, "full")
    assert s1["newest_available"]["id"] not in (fresh, late)
    assert_exact(db)
    # one backup changed by two sessions: it expires while its drill ends (each change of what a
    # backup adds holds the backup's row, so the drill's trigger reads the expiry)
    drilled = group(db, S1, "full")["newest_available"]["id"]
    _race(
        db,
        connect,
        "INSERT INTO pggit.backup_expirations (backup_id, target, rule_set, reasons, expired_by)"
        " VALUES (%s, '{}', '{}', '{test}', 'test')",
        (drilled,),
        "UPDATE pggit.backups SET restore_tested_at = now(), restore_test_result = 'passed' WHERE backup_id = %s",
        (drilled,),
    )
    after = group(db, S1, "full")
    assert drilled not in (after["newest_available"]["id"], (after["drill"] or {}).get("id"))
    assert_exact(db)
    # and a failure ends while a retry takes the newest failure of s2 out
    s2_failed = group(db, S2, "full")["failure"]
    other = make(db, now, stanza="s2", backup_type="full", status="failed")
    _race(
        db,
        connect,
        "UPDATE pggit.backup_jobs SET status = 'queued', attempts = 0 WHERE job_id = %s",
        (s2_failed["id"],),
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = 3, max_attempts = 3, completed_at = %s,"
        " last_error = 'late' WHERE backup_id = %s",
        (now + timedelta(minutes=5), other),
    )
    assert group(db, S2, "full")["failure"]["backup_id"] == other
    assert_exact(db)
