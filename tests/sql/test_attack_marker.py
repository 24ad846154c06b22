"""Attacks with the queue marker: any role may SET pggit.queue_internal = 'on', and the triggers
accept it whenever the code runs as the table's owner, which is the case in an FK cascade and in
every SECURITY DEFINER function. 011 leaves the marker on only in the queue functions (which
write rows as the queue) and takes the DELETE guard's bypass away. Each attack is made by a real
admin login with the marker set, against real worker logins; both worked before 011.
"""

from __future__ import annotations

import threading

import psycopg2
import pytest

from helpers.db import ADMIN, WORKER, query, scalar
from helpers.queue import job

OPERATOR = "pggit_backup_operator"

# The functions that write queue rows as the queue does, and the two triggers that keep a
# backup in step with its job: the only SECURITY DEFINER functions with the marker on.
QUEUE_FUNCTIONS = {
    "pggit._backup_jobs_after_change()",
    "pggit._backup_jobs_after_delete()",
    "pggit.claim_backup_job(text,text[],integer)",
    "pggit.get_next_backup_job(text)",
    "pggit.heartbeat_backup_job(uuid,text,integer)",
    "pggit.record_job_command(uuid,text,text)",
    "pggit.finish_backup_job(uuid,text,text,jsonb,jsonb)",
    "pggit.fail_backup_job(uuid,text,integer)",
    "pggit.fail_claimed_backup_job(uuid,text,text,boolean,integer,integer,jsonb)",
    "pggit.complete_backup_job(uuid,text)",
    "pggit.release_backup_job(uuid,text,text)",
    "pggit.abandon_backup_job(uuid,text)",
    "pggit.release_worker_backup_jobs(text,text)",
    "pggit.rescue_expired_backup_jobs()",
    "pggit.complete_backup(uuid,bigint,bigint,text)",
    "pggit.fail_backup(uuid,text)",
}


def claim_as(conn, worker_id):
    rows = query(conn, "SELECT * FROM pggit.claim_backup_job(%s, ARRAY['pgbackrest'], 600)", (worker_id,))
    return rows[0] if rows else None


def test_admin_with_the_marker_cannot_delete_a_running_jobs_backup_to_free_its_stanza(db, login):
    operator, admin = login(OPERATOR), login(ADMIN)
    host_a, host_b = login(WORKER), login(WORKER)
    first = scalar(operator, "SELECT pggit.backup_pgbackrest('full', 'main', 'shared', '{\"priority\": 0}')")
    scalar(operator, "SELECT pggit.backup_pgbackrest('full', 'main', 'shared', '{\"priority\": 0}')")
    running = claim_as(host_a, "host-a")
    assert running["backup_id"] == first

    admin.cursor().execute("SET pggit.queue_internal = 'on'")
    with pytest.raises(psycopg2.Error) as caught:
        admin.cursor().execute("DELETE FROM pggit.backups WHERE backup_id = %s", (first,))
    assert caught.value.pgcode == "55000" and "cannot be deleted now" in caught.value.diag.message_primary
    assert claim_as(host_b, "host-b") is None, "pgBackRest is still backing up stanza shared on host-a"
    assert job(db, running["job_id"])["job_state"] == "in_progress"
    assert scalar(db, "SELECT count(*) FROM pggit.backups WHERE backup_id = %s", (first,)) == 1


def test_two_admin_sessions_with_the_marker_cannot_enqueue_two_jobs_for_one_backup(db, login):
    first, second = login(ADMIN), login(ADMIN)
    backup_id = scalar(first, "SELECT pggit.register_backup('race-1', 'full', 'custom', '/backups/x')")
    for conn in (first, second):
        conn.cursor().execute("SET pggit.queue_internal = 'on'")
    first.autocommit = False
    scalar(first, "SELECT pggit.enqueue_backup_job(%s, 'my-script --a', 'custom')", (backup_id,))
    outcome: dict[str, object] = {}

    def enqueue_second():
        try:
            outcome["job"] = scalar(
                second, "SELECT pggit.enqueue_backup_job(%s, 'other-script --b', 'custom')", (backup_id,)
            )
        except psycopg2.Error as exc:
            outcome["error"] = exc

    racer = threading.Thread(target=enqueue_second)
    racer.start()
    racer.join(1.0)  # the second waits on the backup row the first has locked
    first.commit()
    racer.join(30)
    assert not racer.is_alive()
    assert "job" not in outcome, "a second job for one backup would race the first to decide its outcome"
    assert outcome["error"].pgcode in ("55000", "22023", "23505")
    assert [
        r["command"] for r in query(db, "SELECT command FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))
    ] == ["my-script --a"]


def test_admin_with_the_marker_still_meets_the_backup_rows_checks_inside_register_backup(db, login):
    """A guard rather than an attack (register_backup validated its own row before 011 too)."""
    admin = login(ADMIN)
    admin.cursor().execute("SET pggit.queue_internal = 'on'")
    backup_id = scalar(admin, "SELECT pggit.register_backup('by-hand', 'full', 'custom', '/backups/x')")
    # inside register_backup the marker is off: the row went through the INSERT checks
    row = query(db, "SELECT status, created_by FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]
    assert row == {"status": "in_progress", "created_by": scalar(admin, "SELECT session_user::text")}
    assert scalar(admin, "SELECT current_setting('pggit.queue_internal')") == "on", (
        "the caller's own setting is untouched"
    )


def test_only_the_queue_functions_run_with_the_marker_on_and_every_other_security_definer_has_it_off(db):
    rows = query(
        db,
        """
        SELECT p.oid::regprocedure::text AS fn,
               (SELECT split_part(c, '=', 2) FROM unnest(p.proconfig) c
                 WHERE c LIKE 'pggit.queue_internal=%%') AS marker
          FROM pg_proc p WHERE p.pronamespace = 'pggit'::regnamespace AND p.prosecdef""",
    )
    on = {r["fn"] for r in rows if r["marker"] == "on"}
    assert on == QUEUE_FUNCTIONS, "a new queue function belongs in QUEUE_FUNCTIONS; anything else gets the marker off"
    assert [r["fn"] for r in rows if r["marker"] not in ("on", "off")] == []
    assert {r["fn"] for r in rows if r["marker"] == "off"} >= {
        "pggit.register_backup(text,text,text,text,text,text,boolean,jsonb)",
        "pggit.enqueue_backup_job(uuid,text,text,integer,jsonb)",
        "pggit.schedule_restore_test(uuid,jsonb)",
        "pggit.backup_pgbackrest(text,text,text,jsonb)",
    }
