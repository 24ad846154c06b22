"""Who may do what: PUBLIC gets nothing; reader, operator, worker and admin get their own rights.

Each test logs in as a throwaway LOGIN role (granted one of the four roles, or none) so the
checks run exactly as a real login would; the roles are dropped again after the test.
"""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from helpers.db import ADMIN, WORKER, query, scalar
from helpers.queue import force

READER = "pggit_backup_reader"
OPERATOR = "pggit_backup_operator"

SCHEDULE_CALLS = {
    "pgbackrest": "SELECT pggit.backup_pgbackrest('full', 'main', 'main')",
    "barman": "SELECT pggit.backup_barman('pg-main')",
    "pg_dump": "SELECT pggit.backup_pg_dump()",
    "pg_basebackup": "SELECT pggit.backup_pg_basebackup()",
}
CUSTOM_CALLS = {
    "enqueue_backup_job": "SELECT pggit.enqueue_backup_job(gen_random_uuid(), 'run.sh', 'custom')",
    "register_backup": "SELECT pggit.register_backup('x-001', 'full', 'custom', 's3://b/x', NULL, 'main')",
}
# a well-formed claim token that matches no claim
NO_TOKEN = "0" * 64
# Every API entry point, called with arguments valid enough to reach the privilege check.
API_CALLS = {
    **SCHEDULE_CALLS,
    **CUSTOM_CALLS,
    "get_next_backup_job": "SELECT * FROM pggit.get_next_backup_job('w1')",
    "claim_backup_job": "SELECT * FROM pggit.claim_backup_job('w1')",
    "heartbeat_backup_job": f"SELECT pggit.heartbeat_backup_job(gen_random_uuid(), '{NO_TOKEN}')",
    "record_job_command": f"SELECT pggit.record_job_command(gen_random_uuid(), '{NO_TOKEN}', 'x')",
    "finish_backup_job": f"SELECT pggit.finish_backup_job(gen_random_uuid(), '{NO_TOKEN}')",
    "fail_claimed_backup_job": f"SELECT pggit.fail_claimed_backup_job(gen_random_uuid(), '{NO_TOKEN}', 'x')",
    "complete_backup_job": "SELECT pggit.complete_backup_job(gen_random_uuid(), 'ok')",
    "fail_backup_job": "SELECT pggit.fail_backup_job(gen_random_uuid(), 'x')",
    "release_backup_job": f"SELECT pggit.release_backup_job(gen_random_uuid(), '{NO_TOKEN}')",
    "rescue_expired_backup_jobs": "SELECT * FROM pggit.rescue_expired_backup_jobs()",
    "release_worker_backup_jobs": "SELECT * FROM pggit.release_worker_backup_jobs('w1')",
    "abandon_backup_job": f"SELECT pggit.abandon_backup_job(gen_random_uuid(), '{NO_TOKEN}')",
    "claimed_job_status": f"SELECT pggit.claimed_job_status(gen_random_uuid(), '{NO_TOKEN}')",
    "complete_backup": "SELECT pggit.complete_backup(gen_random_uuid())",
    "fail_backup": "SELECT pggit.fail_backup(gen_random_uuid(), 'x')",
    "list_backups": "SELECT * FROM pggit.list_backups()",
    "get_backup_info": "SELECT * FROM pggit.get_backup_info(gen_random_uuid())",
}
QUEUE_RELATIONS = ["pggit.backups", "pggit.backup_jobs", "pggit.backup_job_queue"]


def run(conn, statement, params=None):
    """Executes a statement; returns its rows (if any) or its row count."""
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else cur.rowcount


def outcome(conn, statement, params=None) -> str:
    """'ok', or the SQLSTATE the statement failed with."""
    try:
        run(conn, statement, params)
    except psycopg2.Error as exc:
        return exc.pgcode
    return "ok"


def outcomes(conn, calls: dict[str, str]) -> dict[str, str]:
    return {name: outcome(conn, statement) for name, statement in calls.items()}


def all_denied(calls) -> dict[str, str]:
    return {name: "42501" for name in calls}


def counts(conn):
    return scalar(conn, "SELECT ARRAY[(SELECT count(*) FROM pggit.backups), (SELECT count(*) FROM pggit.backup_jobs)]")


def schedule_dump(conn):
    """Queues a pg_dump backup as `conn`; returns (backup_id, job_id)."""
    backup_id = scalar(conn, "SELECT pggit.backup_pg_dump()")
    return backup_id, scalar(conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def schedule_stanza(conn, stanza):
    backup_id = scalar(conn, "SELECT pggit.backup_pgbackrest('full', 'main', %s)", (stanza,))
    return backup_id, scalar(conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def job_status(conn, job_id):
    return scalar(conn, "SELECT status FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))


def fail_for_good(conn, job_id):
    """Claims the (only queued) job as a superuser and fails it with no retry left."""
    claimed = query(conn, "SELECT * FROM pggit.claim_backup_job('w1')")[0]
    assert claimed["job_id"] == job_id
    assert (
        scalar(conn, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'boom', false)", (job_id, claimed["claim_token"]))
        == "permanently_failed"
    )


# --- PUBLIC: a login with no pggit role --------------------------------------------------------


def test_login_without_a_pggit_role_cannot_read_queue_relations(login_as):
    conn, _ = login_as(None)
    reads = {relation: f"SELECT count(*) FROM {relation}" for relation in QUEUE_RELATIONS}
    assert outcomes(conn, reads) == all_denied(reads)


def test_login_without_a_pggit_role_cannot_call_any_api_function(db, login_as):
    conn, _ = login_as(None)
    assert outcomes(conn, API_CALLS) == all_denied(API_CALLS)
    assert counts(db) == [0, 0]


def test_login_without_a_pggit_role_has_no_usage_on_schema_pggit(db, login_as):
    _, name = login_as(None)
    assert scalar(db, "SELECT has_schema_privilege(%s, 'pggit', 'USAGE')", (name,)) is False
    assert scalar(db, "SELECT has_schema_privilege(%s, 'pggit', 'CREATE')", (name,)) is False


def test_functions_stay_closed_even_to_a_login_with_schema_usage(db, login_as):
    # proves the per-function REVOKE, not only the schema's
    conn, name = login_as(None)
    run(db, sql.SQL("GRANT USAGE ON SCHEMA pggit TO {}").format(sql.Identifier(name)))
    assert outcomes(conn, API_CALLS) == all_denied(API_CALLS)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="permission denied for function"):
        run(conn, API_CALLS["pg_dump"])
    assert counts(db) == [0, 0]


def test_no_function_in_pggit_is_executable_by_public(db):
    # NULL proacl means the default ACL, which grants EXECUTE to PUBLIC (grantee 0)
    rows = query(
        db,
        """
        SELECT p.oid::regprocedure::text AS fn
          FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
         WHERE p.pronamespace = 'pggit'::regnamespace AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'
         ORDER BY 1""",
    )
    assert scalar(db, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pggit'::regnamespace") >= 20
    assert [r["fn"] for r in rows] == []


def test_no_table_view_or_sequence_in_pggit_grants_public_anything(db):
    rows = query(
        db,
        """
        SELECT c.oid::regclass::text AS rel, a.privilege_type
          FROM pg_class c,
               aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                                        c.relowner))) a
         WHERE c.relnamespace = 'pggit'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           AND a.grantee = 0
         ORDER BY 1, 2""",
    )
    assert rows == []
    schema_rows = query(
        db,
        """
        SELECT a.privilege_type FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
         WHERE n.nspname = 'pggit' AND a.grantee = 0""",
    )
    assert schema_rows == []


def test_the_four_roles_exist_and_cannot_log_in(db):
    rows = query(
        db,
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY (%s) ORDER BY rolname",
        ([READER, OPERATOR, WORKER, ADMIN],),
    )
    assert {r["rolname"]: r["rolcanlogin"] for r in rows} == {
        ADMIN: False,
        OPERATOR: False,
        READER: False,
        WORKER: False,
    }


def test_every_security_definer_function_pins_its_search_path(db):
    rows = query(
        db,
        """
        SELECT p.oid::regprocedure::text AS fn, p.proconfig
          FROM pg_proc p WHERE p.pronamespace = 'pggit'::regnamespace AND p.prosecdef ORDER BY 1""",
    )
    assert rows, "the write functions are SECURITY DEFINER"
    unpinned = [
        r["fn"] for r in rows if not any(setting.startswith("search_path=") for setting in (r["proconfig"] or []))
    ]
    assert unpinned == []


def test_security_definer_search_paths_put_pg_temp_last(db):
    # otherwise a caller's temporary objects could shadow what the function resolves
    rows = query(
        db,
        """
        SELECT p.oid::regprocedure::text AS fn, s.setting
          FROM pg_proc p, unnest(p.proconfig) s (setting)
         WHERE p.pronamespace = 'pggit'::regnamespace AND p.prosecdef AND s.setting LIKE 'search_path=%'""",
    )
    assert rows
    assert [r["fn"] for r in rows if not r["setting"].replace(" ", "").endswith(",pg_temp")] == []


# --- reader ----------------------------------------------------------------------------------------


def test_reader_can_read_tables_and_the_queue_view(db, login_as):
    schedule_dump(db)
    conn, _ = login_as(READER)
    relations = QUEUE_RELATIONS + ["pggit.branches", "pggit.commits"]
    assert {r: scalar(conn, f"SELECT count(*) FROM {r}") for r in relations} == {r: 1 for r in relations}


def test_reader_can_list_backups_and_get_backup_info(db, login_as):
    backup_id, job_id = schedule_dump(db)
    conn, _ = login_as(READER)
    listed = query(conn, "SELECT * FROM pggit.list_backups(p_limit := 20, p_offset := 0)")
    assert [r["backup_id"] for r in listed] == [backup_id]
    info = query(conn, "SELECT * FROM pggit.get_backup_info(%s)", (backup_id,))
    assert len(info) == 1 and [j["job_id"] for j in info[0]["jobs"]] == [job_id]


def test_reader_cannot_schedule_backups_or_queue_work(db, login_as):
    conn, _ = login_as(READER)
    calls = {name: API_CALLS[name] for name in [*SCHEDULE_CALLS, *CUSTOM_CALLS, "claim_backup_job"]}
    assert outcomes(conn, calls) == all_denied(calls)
    assert counts(db) == [0, 0]


def test_reader_cannot_select_the_claim_counter_or_the_claims_token_hash(db, login_as):
    schedule_dump(db)
    query(db, "SELECT * FROM pggit.claim_backup_job('w1')")
    conn, _ = login_as(READER)
    reads = {column: f"SELECT {column} FROM pggit.backup_jobs" for column in ["claim_token", "claim_secret_sha256"]}
    assert outcomes(conn, reads) == all_denied(reads)
    assert run(conn, "SELECT claimed_by, locked_by FROM pggit.backup_jobs") == [
        (scalar(db, "SELECT session_user"), "w1")
    ], "who holds a job stays visible"


def test_reader_cannot_update_backup_jobs(db, login_as):
    _, job_id = schedule_dump(db)
    conn, _ = login_as(READER)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        run(conn, "UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    assert job_status(db, job_id) == "queued"


# --- operator ------------------------------------------------------------------------------------


def test_operator_can_schedule_each_built_in_backup(db, login_as):
    conn, _ = login_as(OPERATOR)
    scheduled = {tool: scalar(conn, call) for tool, call in SCHEDULE_CALLS.items()}
    jobs = {r["backup_id"]: (r["tool"], r["status"]) for r in query(db, "SELECT * FROM pggit.backup_jobs")}
    assert jobs == {backup_id: (tool, "queued") for tool, backup_id in scheduled.items()}


def test_operator_can_cancel_a_job_with_the_guides_update(db, login_as):
    backup_id, job_id = schedule_dump(db)
    conn, _ = login_as(OPERATOR)
    assert run(conn, "UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,)) == 1
    assert job_status(db, job_id) == "cancelled"
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "cancelled"


def test_operator_can_reset_a_failed_job_with_the_guides_update(db, login_as):
    backup_id, job_id = schedule_dump(db)
    fail_for_good(db, job_id)
    conn, _ = login_as(OPERATOR)
    assert (
        run(
            conn,
            """UPDATE pggit.backup_jobs SET status = 'queued', next_retry_at = NULL, attempts = 0
                         WHERE job_id = %s""",
            (job_id,),
        )
        == 1
    )
    row = query(db, "SELECT status, attempts, next_retry_at FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))[0]
    assert row == {"status": "queued", "attempts": 0, "next_retry_at": None}
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "in_progress"


def test_operator_cannot_queue_custom_commands_register_backups_or_claim(db, login_as):
    schedule_dump(db)
    conn, _ = login_as(OPERATOR)
    calls = {name: API_CALLS[name] for name in [*CUSTOM_CALLS, "claim_backup_job", "get_next_backup_job"]}
    assert outcomes(conn, calls) == all_denied(calls)
    assert scalar(db, "SELECT array_agg(status) FROM pggit.backup_jobs") == ["queued"]


def test_operator_cannot_delete_backups_or_jobs(db, login_as):
    schedule_dump(db)
    conn, _ = login_as(OPERATOR)
    deletes = {table: f"DELETE FROM {table}" for table in ["pggit.backups", "pggit.backup_jobs"]}
    assert outcomes(conn, deletes) == all_denied(deletes)
    assert counts(db) == [1, 1]


def test_operator_cannot_rewrite_other_job_columns(db, login_as):
    _, job_id = schedule_dump(db)
    before = query(db, "SELECT * FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))
    conn, _ = login_as(OPERATOR)
    assignments = [
        "command = 'rm -rf /'",
        """spec = '{"tool": "custom", "params": {"command": "sh"}}'""",
        "tool = 'custom'",
        "target = NULL",
        "max_attempts = 100",
        "locked_by = 'w1'",
    ]
    updates = {a: f"UPDATE pggit.backup_jobs SET {a} WHERE job_id = '{job_id}'" for a in assignments}
    assert outcomes(conn, updates) == all_denied(updates)
    assert query(db, "SELECT * FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) == before


def test_operator_cannot_complete_or_start_a_job_by_hand(db, login_as):
    _, job_id = schedule_dump(db)
    conn, _ = login_as(OPERATOR)
    updates = {
        status: f"UPDATE pggit.backup_jobs SET status = '{status}' WHERE job_id = '{job_id}'"
        for status in ["completed", "running", "failed"]
    }
    assert outcomes(conn, updates) == {status: "55000" for status in updates}
    assert job_status(db, job_id) == "queued"


def test_operator_cannot_bypass_the_manual_transition_rule_with_the_queue_internal_setting(db, login_as):
    backup_id, job_id = schedule_dump(db)
    conn, _ = login_as(OPERATOR)
    run(conn, "SET pggit.queue_internal = 'on'")
    try:
        run(conn, "UPDATE pggit.backup_jobs SET status = 'completed' WHERE job_id = %s", (job_id,))
        sqlstate = None
    except psycopg2.Error as exc:
        sqlstate = exc.pgcode
    outcome = (
        sqlstate,
        job_status(db, job_id),
        scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup_id,)),
    )
    # SCHEMA BUG (schema/002_backups.sql, pggit._backup_jobs_before_update): the trigger function is
    # SECURITY DEFINER, so its `current_user = table owner` test is always true and the setting,
    # which any login may SET, is the only guard. Fix: make that trigger function SECURITY INVOKER.
    assert outcome == ("55000", "queued", "in_progress"), (
        f"an operator who sets pggit.queue_internal marked a never-run job completed by hand "
        f"(sqlstate, job status, backup status) = {outcome}"
    )


# --- worker --------------------------------------------------------------------------------------


def test_worker_can_claim_heartbeat_and_finish_a_job(db, login_as):
    backup_id, job_id = schedule_dump(db)
    conn, _ = login_as(WORKER)
    claimed = query(conn, "SELECT * FROM pggit.claim_backup_job('w1', ARRAY['pg_dump'], 60)")
    assert [c["job_id"] for c in claimed] == [job_id]
    token = claimed[0]["claim_token"]
    assert scalar(conn, "SELECT pggit.heartbeat_backup_job(%s, %s, 60)", (job_id, token)) is True
    assert (
        scalar(conn, "SELECT pggit.finish_backup_job(%s, %s, 'done', '{\"backup_size\": 10}')", (job_id, token)) is True
    )
    assert job_status(db, job_id) == "completed"
    assert scalar(db, "SELECT backup_size FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == 10


def test_worker_can_fail_and_release_claimed_jobs(db, login_as):
    _, failing = schedule_stanza(db, "s-fail")
    _, released = schedule_stanza(db, "s-release")
    conn, _ = login_as(WORKER)
    first = query(conn, "SELECT * FROM pggit.claim_backup_job('w1')")[0]
    second = query(conn, "SELECT * FROM pggit.claim_backup_job('w1')")[0]
    assert {first["job_id"], second["job_id"]} == {failing, released}
    by_job = {c["job_id"]: c["claim_token"] for c in (first, second)}
    assert (
        scalar(conn, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'tool exited 1')", (failing, by_job[failing]))
        == "will_retry"
    )
    assert scalar(conn, "SELECT pggit.release_backup_job(%s, %s)", (released, by_job[released])) is True
    assert (job_status(db, failing), job_status(db, released)) == ("failed", "queued")


def test_worker_can_rescue_expired_leases_and_release_a_dead_workers_jobs(db, login_as):
    _, expired = schedule_stanza(db, "s-expired")
    _, orphaned = schedule_stanza(db, "s-orphaned")
    assert len(query(db, "SELECT * FROM pggit.claim_backup_job('w-old')")) == 1
    conn, _ = login_as(WORKER)
    # a dead worker's jobs are released by its successor, which logs in as the same login
    assert len(query(conn, "SELECT * FROM pggit.claim_backup_job('w-dead')")) == 1
    force(db, "UPDATE pggit.backup_jobs SET lease_expires_at = now() - interval '1 minute' WHERE locked_by = 'w-old'")
    rescued = query(conn, "SELECT * FROM pggit.rescue_expired_backup_jobs()")
    assert [(r["job_id"], r["job_state"]) for r in rescued] == [(expired, "will_retry")]
    released = query(conn, "SELECT * FROM pggit.release_worker_backup_jobs('w-dead')")
    assert [(r["job_id"], r["job_state"]) for r in released] == [(orphaned, "will_retry")]


def test_worker_can_use_the_guides_get_next_complete_and_fail(db, login_as):
    _, done = schedule_stanza(db, "s-done")
    _, broken = schedule_stanza(db, "s-broken")
    conn, _ = login_as(WORKER)
    first = query(conn, "SELECT * FROM pggit.get_next_backup_job('w1')")[0]
    second = query(conn, "SELECT * FROM pggit.get_next_backup_job('w1')")[0]
    assert {first["job_id"], second["job_id"]} == {done, broken}
    assert scalar(conn, "SELECT pggit.complete_backup_job(%s, 'ok')", (done,)) is True
    assert scalar(conn, "SELECT pggit.fail_backup_job(%s, 'disk full')", (broken,)) is True
    assert (job_status(db, done), job_status(db, broken)) == ("completed", "failed")


def test_worker_cannot_schedule_backups_or_queue_custom_commands(db, login_as):
    conn, _ = login_as(WORKER)
    calls = {**SCHEDULE_CALLS, **CUSTOM_CALLS}
    assert outcomes(conn, calls) == all_denied(calls)
    assert counts(db) == [0, 0]


def test_worker_cannot_update_jobs_except_through_the_queue_functions(db, login_as):
    _, job_id = schedule_dump(db)
    conn, _ = login_as(WORKER)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        run(conn, "UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    assert job_status(db, job_id) == "queued"


# --- admin ---------------------------------------------------------------------------------------


def test_admin_can_release_a_dead_workers_jobs_whichever_login_claimed_them(db, login_as):
    _, job_id = schedule_dump(db)
    worker, _ = login_as(WORKER)
    assert len(query(worker, "SELECT * FROM pggit.claim_backup_job('host-a/1')")) == 1
    other, _ = login_as(WORKER)
    assert query(other, "SELECT * FROM pggit.release_worker_backup_jobs('host-a/1')") == []
    admin, _ = login_as(ADMIN)
    assert query(admin, "SELECT * FROM pggit.release_worker_backup_jobs('host-a/1')") == [
        {"job_id": job_id, "job_state": "will_retry"}
    ]
    assert job_status(db, job_id) == "failed"


def test_admin_can_register_a_backup_and_queue_the_guides_custom_command(db, login_as):
    conn, _ = login_as(ADMIN)
    backup_id = scalar(
        conn,
        """
        SELECT pggit.register_backup('custom-backup-001', 'full', 'custom', 's3://bucket/custom-001',
                                     (SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'))""",
    )
    job_id = scalar(
        conn,
        """
        SELECT pggit.enqueue_backup_job(%s, 'my-custom-backup-script.sh --output /backups', 'custom', 5,
                                        '{"script": "custom", "notify": "admin@example.com"}'::jsonb)""",
        (backup_id,),
    )
    row = query(
        db,
        "SELECT backup_id, tool, command, max_attempts, status, metadata FROM pggit.backup_jobs WHERE job_id = %s",
        (job_id,),
    )[0]
    assert row == {
        "backup_id": backup_id,
        "tool": "custom",
        "command": "my-custom-backup-script.sh --output /backups",
        "max_attempts": 5,
        "status": "queued",
        "metadata": {"script": "custom", "notify": "admin@example.com"},
    }


def test_admin_can_delete_old_backups_with_the_guides_retention_query(db, login_as):
    old_id, old_job = schedule_dump(db)
    new_id, _ = schedule_stanza(db, "main")
    claimed = query(db, "SELECT * FROM pggit.claim_backup_job('w1', ARRAY['pg_dump'])")[0]
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (old_job, claimed["claim_token"])) is True
    force(db, "UPDATE pggit.backups SET created_at = now() - interval '40 days' WHERE backup_id = %s", (old_id,))
    conn, _ = login_as(ADMIN)
    assert (
        run(
            conn,
            """DELETE FROM pggit.backups
                         WHERE created_at < CURRENT_TIMESTAMP - INTERVAL '30 days'
                           AND status = 'completed'""",
        )
        == 1
    )
    assert scalar(db, "SELECT array_agg(backup_id::text) FROM pggit.backups") == [new_id]
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE backup_id = %s", (old_id,)) == 0


def test_admin_can_clear_old_completed_jobs_with_the_guides_cleanup(db, login_as):
    _, job_id = schedule_dump(db)
    claimed = query(db, "SELECT * FROM pggit.claim_backup_job('w1')")[0]
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"])) is True
    force(db, "UPDATE pggit.backup_jobs SET completed_at = now() - interval '8 days' WHERE job_id = %s", (job_id,))
    conn, _ = login_as(ADMIN)
    assert (
        run(
            conn,
            """DELETE FROM pggit.backup_jobs
                         WHERE status = 'completed'
                           AND completed_at < CURRENT_TIMESTAMP - INTERVAL '7 days'""",
        )
        == 1
    )


def test_admin_holds_operator_worker_and_reader_rights(db, login_as):
    conn, _ = login_as(ADMIN)
    _, job_id = schedule_dump(conn)
    _, cancelled = schedule_stanza(conn, "main")
    assert run(conn, "UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (cancelled,)) == 1
    claimed = query(conn, "SELECT * FROM pggit.claim_backup_job('admin-1')")
    assert [c["job_id"] for c in claimed] == [job_id]
    assert scalar(conn, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed[0]["claim_token"])) is True
    statuses = {r["job_id"]: r["status"] for r in query(conn, "SELECT job_id, status FROM pggit.backup_job_queue")}
    assert statuses == {job_id: "completed", cancelled: "cancelled"}


def test_a_reader_never_sees_a_webhook_url(db, login_as):
    backup_id = scalar(
        db,
        """SELECT pggit.backup_pgbackrest('full', 'main', 'main',
                                 '{"webhook_url": "https://hooks.example/T000/SECRET", "notify_on_success": true}')""",
    )
    conn, _ = login_as(READER)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        scalar(conn, "SELECT spec FROM pggit.backup_jobs LIMIT 1")
    conn.rollback()
    seen = scalar(
        conn,
        """SELECT (SELECT metadata::text FROM pggit.backups WHERE backup_id = %s)
                                  || (SELECT string_agg(metadata::text || command, '') FROM pggit.backup_jobs)""",
        (backup_id,),
    )
    assert "SECRET" not in seen and '"webhook_url": "(set)"' in seen
    assert "SECRET" in scalar(db, "SELECT spec::text FROM pggit.backup_jobs"), "the worker's spec keeps it"
