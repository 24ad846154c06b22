"""Attacks on backup rows and jobs made behind the queue's back (issue 8 §4).

Each test logs in as a real LOGIN role made for it (IN ROLE pggit_backup_worker or _admin) and
tries what such a login could do against 0.1.0: complete or fail a backup while its job is still
queued or running, mark a backup completed and verified with an UPDATE, insert a job that is
already completed, rewrite a queued job's spec, forge claim columns, or delete a running job so
that a second backup of the same stanza starts beside it. Every one of them worked on 0.1.0.
"""

from __future__ import annotations

import secrets

import psycopg2
import psycopg2.extras
import pytest
from psycopg2 import sql

from helpers.db import ADMIN, WORKER, query, refused, scalar
from helpers.queue import backup, claim, force, job, schedule_dump, schedule_stanza
from helpers.release_0_1_0 import install_0_1_0
from pggit_supervisor import schema


def row_of(conn, table, key, value):
    return query(conn, f"SELECT * FROM {table} WHERE {key} = %s", (value,))[0]


def fail_for_good(conn, job_id, token):
    assert (
        scalar(conn, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'tool exited 1', false)", (job_id, token))
        == "permanently_failed"
    )


def test_worker_completing_a_backup_whose_job_is_queued_is_refused(db, login_as):
    backup_id, job_id = schedule_dump(db)
    attacker, _ = login_as(WORKER)
    error = refused(attacker, "SELECT pggit.complete_backup(%s, 1000, 500, 'gzip')", (backup_id,))
    assert error.pgcode == "55000" and str(backup_id) in error.diag.message_primary
    assert "job" in error.diag.message_hint
    assert backup(db, backup_id)["status"] == "in_progress"
    # the job then fails for good: the backup must say so, not "completed"
    fail_for_good(db, job_id, claim(db)["claim_token"])
    row = backup(db, backup_id)
    assert (row["status"], row["backup_size"]) == ("failed", None)


def test_worker_failing_a_backup_while_its_job_runs_is_refused(db, login_as):
    backup_id, job_id = schedule_dump(db)
    held = claim(db, "host-a")
    attacker, _ = login_as(WORKER)
    error = refused(attacker, "SELECT pggit.fail_backup(%s, 'disk full')", (backup_id,))
    assert error.pgcode == "42501", "fail_backup is the admin's, for backups registered by hand"
    assert backup(db, backup_id)["status"] == "in_progress"
    assert (
        scalar(
            db, "SELECT pggit.finish_backup_job(%s, %s, 'ok', '{\"backup_size\": 42}')", (job_id, held["claim_token"])
        )
        is True
    )
    row = backup(db, backup_id)
    assert (row["status"], row["backup_size"]) == ("completed", 42), "the real result is recorded"


def test_admin_fails_a_backup_while_its_job_runs_is_refused_too(db, login_as):
    backup_id, _ = schedule_dump(db)
    claim(db, "host-a")
    admin, _ = login_as(ADMIN)
    error = refused(admin, "SELECT pggit.fail_backup(%s, 'disk full')", (backup_id,))
    assert error.pgcode == "55000" and "cancelled" in error.diag.message_hint
    assert backup(db, backup_id)["status"] == "in_progress"


@pytest.mark.parametrize(
    "assignment",
    [
        "status = 'completed', verified_at = now()",
        "verified_at = now()",
        "checksum = 'sha256:00'",
        "backup_size = 1, compressed_size = 1",
        "location = 'file:--role=postgres'",
        "restore_tested_at = now(), restore_test_result = 'passed'",
        "status = 'failed', error_message = 'forged'",
        "metadata = metadata || '{\"row_counts\": {}}'",
    ],
)
def test_admin_updating_a_backups_facts_by_hand_is_refused(db, login_as, assignment):
    backup_id, _ = schedule_dump(db)
    before = backup(db, backup_id)
    admin, _ = login_as(ADMIN)
    # the admin may UPDATE only backup_name (011); the table's owner meets the trigger's refusal
    error = refused(admin, f"UPDATE pggit.backups SET {assignment} WHERE backup_id = %s", (backup_id,))
    assert error.pgcode == "42501"
    error = refused(db, f"UPDATE pggit.backups SET {assignment} WHERE backup_id = %s", (backup_id,))
    assert error.pgcode == "55000"
    assert "pggit.backup_jobs" in error.diag.message_hint, "a backup with a job changes through its job"
    assert backup(db, backup_id) == before


def test_admin_marking_a_hand_registered_backup_completed_by_update_is_refused(db, login_as):
    admin, _ = login_as(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('by-hand', 'full', 'custom', 's3://b/x', NULL, 'main')")
    error = refused(
        admin, "UPDATE pggit.backups SET status = 'completed', verified_at = now() WHERE backup_id = %s", (backup_id,)
    )
    assert error.pgcode == "42501"
    error = refused(
        db, "UPDATE pggit.backups SET status = 'completed', verified_at = now() WHERE backup_id = %s", (backup_id,)
    )
    assert error.pgcode == "55000" and "pggit.complete_backup" in error.diag.message_hint
    assert backup(db, backup_id)["status"] == "in_progress"


def test_table_owner_updating_a_backups_facts_without_the_queue_marker_is_refused(db):
    backup_id, _ = schedule_dump(db)
    error = refused(
        db, "UPDATE pggit.backups SET status = 'completed', verified_at = now() WHERE backup_id = %s", (backup_id,)
    )
    assert error.pgcode == "55000"
    assert backup(db, backup_id)["status"] == "in_progress"


def test_admin_inserting_a_backup_that_is_already_completed_and_verified_is_refused(db, login_as):
    admin, _ = login_as(ADMIN)
    forged = """
        INSERT INTO pggit.backups (backup_name, backup_type, backup_tool, location, branch_name, status,
                                   verified_at, completed_at, backup_size, checksum)
        VALUES ('forged', 'full', 'pg_dump', 'file:///backups/forged.dump', 'main', 'completed',
                now(), now(), 1000, 'sha256:00')"""
    assert refused(admin, forged).pgcode == "42501"  # 011: register_backup is the way
    error = refused(db, forged)  # the table's owner meets the trigger
    assert error.pgcode == "55000" and "pggit.register_backup" in error.diag.message_hint
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 0


@pytest.mark.parametrize(
    "columns, values",
    [
        ("status, completed_at", "'completed', now()"),
        ("status, locked_by, lease_expires_at", "'running', 'w1', now() + interval '1 hour'"),
        ("attempts", "3"),
        ("claimed_via", "'guide'"),
    ],
)
def test_admin_inserting_a_job_that_is_not_freshly_queued_is_refused(db, login_as, columns, values):
    admin, _ = login_as(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('custom-1', 'full', 'custom', 's3://b/x', NULL, 'main')")
    forged = f"""
        INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, {columns})
        VALUES (%s, 'custom', '/bin/true', '{{"tool": "custom", "params": {{"command": "/bin/true"}}}}', {values})"""
    error = refused(admin, forged, (backup_id,))
    assert error.pgcode == "42501"  # 011: no hand INSERT at all
    error = refused(db, forged, (backup_id,))  # the table's owner without the marker meets the same checks
    assert error.pgcode == "55000" and "enqueue_backup_job" in error.diag.message_hint
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 0
    assert backup(db, backup_id)["status"] == "in_progress"


def test_admin_inserting_a_second_job_for_a_backup_is_refused(db, login_as):
    backup_id, _ = schedule_dump(db)
    admin, _ = login_as(ADMIN)
    second = """
        INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec)
        VALUES (%s, 'custom', '/bin/true', '{"tool": "custom", "params": {"command": "/bin/true"}}')"""
    assert refused(admin, second, (backup_id,)).pgcode == "42501"
    error = refused(db, second, (backup_id,))
    assert error.pgcode == "55000" and "already has a job" in error.diag.message_primary
    # past every trigger (the owner with the marker): the unique index still holds
    with pytest.raises(psycopg2.errors.UniqueViolation):
        force(db, second, (backup_id,))
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)) == 1


@pytest.mark.parametrize(
    "assignment",
    [
        """spec = '{"tool": "custom", "params": {"command": "/bin/sh -c id"}}'""",
        "command = 'rm -rf /'",
        "tool = 'custom'",
        "target = NULL",
        "backup_id = (SELECT backup_id FROM pggit.backups ORDER BY created_at LIMIT 1)",
        """metadata = '{"webhook_url": "https://attacker.example/"}'""",
    ],
)
def test_admin_rewriting_a_queued_jobs_spec_command_tool_or_target_is_refused(db, login_as, assignment):
    schedule_dump(db)
    _, job_id = schedule_dump(db, schema="public")
    before = row_of(db, "pggit.backup_jobs", "job_id", job_id)
    admin, _ = login_as(ADMIN)
    error = refused(admin, f"UPDATE pggit.backup_jobs SET {assignment} WHERE job_id = %s", (job_id,))
    assert error.pgcode == "55000" and "cannot change after it is enqueued" in error.diag.message_primary
    assert row_of(db, "pggit.backup_jobs", "job_id", job_id) == before


@pytest.mark.parametrize(
    "assignment",
    [
        "claim_token = claim_token + 1",
        "claimed_by = session_user",
        "claim_secret_sha256 = sha256('x')",
        "claimed_via = 'guide'",
        "locked_by = 'host-b'",
        "lease_expires_at = now() + interval '1 day'",
        "heartbeat_at = now()",
        "started_at = now() - interval '1 day'",
        "completed_at = now()",
        "output = 'forged'",
        """result = '{"exit_code": 0}'""",
        "last_error = 'forged'",
    ],
)
def test_admin_forging_a_running_jobs_claim_columns_is_refused(db, login_as, assignment):
    _, job_id = schedule_dump(db)
    claim(db, "host-a")
    before = row_of(db, "pggit.backup_jobs", "job_id", job_id)
    admin, _ = login_as(ADMIN)
    error = refused(admin, f"UPDATE pggit.backup_jobs SET {assignment} WHERE job_id = %s", (job_id,))
    assert error.pgcode == "55000" and "queue functions" in error.diag.message_primary
    assert row_of(db, "pggit.backup_jobs", "job_id", job_id) == before


def test_admin_turning_a_workers_claim_into_a_guide_claim_to_complete_it_tokenless_is_refused(db, login_as):
    backup_id, job_id = schedule_dump(db)
    claim(db, "host-a")
    admin, _ = login_as(ADMIN)
    refused(admin, "UPDATE pggit.backup_jobs SET claimed_via = 'guide' WHERE job_id = %s", (job_id,))
    assert scalar(admin, "SELECT pggit.complete_backup_job(%s, 'forged')", (job_id,)) is False
    assert (job(db, job_id)["job_state"], backup(db, backup_id)["status"]) == ("in_progress", "in_progress")


def test_admin_lowering_max_attempts_of_a_job_waiting_for_retry_is_refused(db, login_as):
    backup_id, job_id = schedule_dump(db)
    assert (
        scalar(
            db, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'connection refused')", (job_id, claim(db)["claim_token"])
        )
        == "will_retry"
    )
    admin, _ = login_as(ADMIN)
    error = refused(admin, "UPDATE pggit.backup_jobs SET max_attempts = 1 WHERE job_id = %s", (job_id,))
    assert error.pgcode == "55000" and "max_attempts" in error.diag.message_primary
    # otherwise the job would be permanently failed while its backup stays in progress for ever
    assert (job(db, job_id)["job_state"], backup(db, backup_id)["status"]) == ("will_retry", "in_progress")


def test_admin_deleting_a_running_job_to_start_a_second_backup_of_its_stanza_is_refused(db, login_as):
    _, first = schedule_stanza(db, "shared")
    _, second = schedule_stanza(db, "shared")
    assert claim(db, "host-a")["job_id"] == first
    admin, _ = login_as(ADMIN)
    error = refused(admin, "DELETE FROM pggit.backup_jobs WHERE job_id = %s", (first,))
    assert error.pgcode == "55000" and "status = 'cancelled'" in error.diag.message_hint
    assert claim(db, "host-b") is None, "pgBackRest is still backing up that stanza"
    assert job(db, first)["job_state"] == "in_progress"
    assert job(db, second)["job_state"] == "ready"


def test_admin_deleting_the_backup_of_a_running_job_is_refused(db, login_as):
    backup_id, job_id = schedule_stanza(db, "shared")
    schedule_stanza(db, "shared")
    claim(db, "host-a")
    admin, _ = login_as(ADMIN)
    error = refused(admin, "DELETE FROM pggit.backups WHERE backup_id = %s", (backup_id,))
    assert error.pgcode == "55000" and str(backup_id) in error.diag.message_primary
    assert claim(db, "host-b") is None
    assert job(db, job_id)["job_state"] == "in_progress"


def test_worker_recording_sizes_on_a_backup_whose_job_another_login_claimed_is_refused(db, login_as):
    backup_id, job_id = schedule_dump(db)
    host_a, name_a = login_as(WORKER)
    host_b, _ = login_as(WORKER)
    assert query(host_a, "SELECT * FROM pggit.get_next_backup_job('host-a')")[0]["job_id"] == job_id
    force(db, "UPDATE pggit.backup_jobs SET claimed_by = %s WHERE job_id = %s", (name_a, job_id))  # as 009 records it
    assert scalar(host_a, "SELECT pggit.complete_backup_job(%s, 'ok')", (job_id,)) is True
    error = refused(host_b, "SELECT pggit.complete_backup(%s, 1, 1, 'gzip')", (backup_id,))
    assert error.pgcode == "42501"
    assert backup(db, backup_id)["backup_size"] is None
    assert scalar(host_a, "SELECT pggit.complete_backup(%s, 1000000, 500000, 'gzip')", (backup_id,)) is True


# --- 011: hand INSERTs of jobs, hand writes to backups, pre-009 claims, numbers in a spec ---------


def claim_stanza(conn, worker_id):
    rows = query(conn, "SELECT * FROM pggit.claim_backup_job(%s, ARRAY['pgbackrest'], 600)", (worker_id,))
    return rows[0] if rows else None


def test_admin_inserting_a_pgbackrest_job_without_its_target_cannot_run_it_beside_another_on_the_stanza(db, login_as):
    schedule_stanza(db, "ins")
    host_a, _ = login_as(WORKER)
    host_b, _ = login_as(WORKER)
    assert claim_stanza(host_a, "host-a") is not None
    admin, _ = login_as(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('handmade-ins', 'full', 'pgbackrest', 'pgbackrest://ins')")
    error = refused(
        admin,
        """
        INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, target, priority)
        VALUES (%s, 'pgbackrest', 'pgbackrest --stanza=ins --type=full --start-fast backup',
                '{"tool": "pgbackrest", "params": {"stanza": "ins", "type": "full"}}', NULL, 0)""",
        (backup_id,),
    )
    assert error.pgcode == "42501"
    assert claim_stanza(host_b, "host-b") is None, "pgBackRest is already backing up stanza ins on host-a"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)) == 0


@pytest.mark.parametrize("forgery", ["restore_test of another backup", "custom whose command differs from its spec"])
def test_admin_inserting_a_job_whose_spec_disagrees_with_its_row_is_refused(db, login_as, forgery):
    admin, _ = login_as(ADMIN)
    if forgery.startswith("restore_test"):
        tested = scalar(admin, "SELECT pggit.register_backup('tested', 'snapshot', 'pg_dump', '/backups/t.dump')")
        other = scalar(admin, "SELECT pggit.register_backup('other', 'snapshot', 'pg_dump', '/backups/o.dump')")
        for backup_id in (tested, other):
            assert scalar(admin, "SELECT pggit.complete_backup(%s, 1, 1, 'gzip')", (backup_id,)) is True
        statement = """INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, target)
                       VALUES (%s, 'restore_test', 'pggit-supervisor restore-test x',
                               jsonb_build_object('tool', 'restore_test', 'params', jsonb_build_object(
                                   'backup_id', %s::text, 'backup_tool', 'pg_dump', 'location', '/backups/o.dump')),
                               'restore_test:' || %s)"""
        params = (tested, other, tested)
    else:
        tested = scalar(admin, "SELECT pggit.register_backup('custom-x', 'full', 'custom', 's3://b/x')")
        statement = """INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec)
                       VALUES (%s, 'custom', 'nightly-backup --to s3://b/x',
                               '{"tool": "custom", "params": {"command": "exfiltrate --all"}}')"""
        params = (tested,)
    assert refused(admin, statement, params).pgcode == "42501"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 0
    assert backup(db, tested)["restore_tested_at"] is None


@pytest.mark.parametrize(
    "name",
    ["x\nSTART TIMELINE: 9\n../../etc", "A" * (20 * 1024 * 1024), "../../etc/passwd"],
    ids=["newline", "20 MB", "path"],
)
def test_admin_renaming_a_backup_to_a_name_register_backup_refuses_is_refused(db, login_as, name):
    admin, _ = login_as(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('ok-name', 'snapshot', 'pg_dump', '/backups/x.dump')")
    error = refused(admin, "UPDATE pggit.backups SET backup_name = %s WHERE backup_id = %s", (name, backup_id))
    assert error.pgcode == "22023" and "backup_name" in error.diag.message_primary
    assert "letters, digits" in error.diag.message_hint
    assert backup(db, backup_id)["backup_name"] == "ok-name"


def test_admin_may_still_rename_a_backup_to_a_valid_name(db, login_as):
    admin, _ = login_as(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('ok-name', 'snapshot', 'pg_dump', '/backups/x.dump')")
    admin.cursor().execute(
        "UPDATE pggit.backups SET backup_name = 'nightly-2025.01.01' WHERE backup_id = %s", (backup_id,)
    )
    assert backup(db, backup_id)["backup_name"] == "nightly-2025.01.01"


def test_admin_inserting_a_backup_with_a_bad_name_unknown_branch_relative_location_and_20_mb_metadata_is_refused(
    db, login_as
):
    admin, _ = login_as(ADMIN)
    error = refused(
        admin,
        """
        INSERT INTO pggit.backups (backup_name, backup_type, backup_tool, location, commit_hash, branch_name, metadata)
        VALUES (E'evil\\nname', 'snapshot', 'pg_dump', 'file:--role=postgres',
                (SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'), 'no-such-branch',
                jsonb_build_object('row_counts', '{}'::jsonb, 'pad', repeat('x', 20 * 1024 * 1024)))""",
    )
    assert error.pgcode == "42501"
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 0


def test_admin_rewriting_a_number_in_a_queued_jobs_spec_in_another_notation_is_refused(db, login_as):
    _, job_id = schedule_dump(db, options='{"compression_level": 9}')
    before = row_of(db, "pggit.backup_jobs", "job_id", job_id)
    assert before["spec"]["params"]["compression_level"] == 9
    admin, _ = login_as(ADMIN)
    error = refused(
        admin,
        """UPDATE pggit.backup_jobs SET spec = jsonb_set(spec, '{params,compression_level}', '9.000')
                              WHERE job_id = %s""",
        (job_id,),
    )
    assert error.pgcode == "55000" and "spec" in error.diag.message_primary
    assert scalar(db, "SELECT spec::text FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) == scalar(
        db, "SELECT %s::jsonb::text", (psycopg2.extras.Json(before["spec"]),)
    )


def test_after_an_upgrade_from_0_1_0_no_worker_records_sizes_of_a_guide_job_claimed_before_009(empty_db, tmp_path):
    """0.1.0 did not record which login claimed a job: only an admin may record its sizes."""
    install_0_1_0(empty_db, tmp_path / "0.1.0")
    owner = psycopg2.connect(empty_db)
    owner.autocommit = True
    names = [f"pggit_atk_{secrets.token_hex(6)}" for _ in range(3)]
    try:
        for name, role in zip(names, (WORKER, WORKER, ADMIN), strict=True):
            owner.cursor().execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(name), sql.Identifier(role))
            )
        host_a, host_b, admin = (psycopg2.connect(empty_db, user=name) for name in names)
        for conn in (host_a, host_b, admin):
            conn.autocommit = True
        backup_id = scalar(owner, "SELECT pggit.backup_pg_dump('main')")
        job_id = query(host_a, "SELECT * FROM pggit.get_next_backup_job('host-a')")[0]["job_id"]
        assert scalar(host_a, "SELECT pggit.complete_backup_job(%s, 'ok')", (job_id,)) is True
        schema.install(empty_db, log=lambda *_: None)

        error = refused(host_b, "SELECT pggit.complete_backup(%s, 1000, 10, 'gzip')", (backup_id,))
        assert error.pgcode == "42501"
        assert backup(owner, backup_id)["backup_size"] is None
        assert scalar(admin, "SELECT pggit.complete_backup(%s, 1000, 10, 'gzip')", (backup_id,)) is True
        assert backup(owner, backup_id)["backup_size"] == 1000
        for conn in (host_a, host_b, admin):
            conn.close()
    finally:
        for name in names:
            owner.cursor().execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            owner.cursor().execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        owner.close()
