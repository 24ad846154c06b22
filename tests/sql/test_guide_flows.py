"""Flows of the original implementation's users, called as the guide's API reference allows
(issue 13): the original listener completing a backup after its job, complete_backup on a backup
that is not in progress, register_backup with the guide's defaults, and pg_dump's backup type.

The listener's calls run as a real login IN ROLE pggit_backup_worker, as the guide's listener
does; registering and completing by hand run as a login IN ROLE pggit_backup_admin.
"""

from __future__ import annotations

import psycopg2
import pytest

from helpers.db import ADMIN, WORKER, query, refused, scalar
from helpers.queue import backup, claim, schedule_dump, schedule_stanza
from helpers.release_0_1_0 import install_0_1_0
from pggit_supervisor import schema


def sizes(conn, backup_id):
    row = backup(conn, backup_id)
    return row["status"], row["backup_size"], row["compressed_size"], row["compression_type"]


# --- 1. the original listener: complete the job, then record sizes on its backup -----------------


def test_listener_completes_the_job_then_records_the_backups_sizes(db, login):
    backup_id, job_id = schedule_stanza(db, "main")
    listener = login(WORKER)
    job = query(listener, "SELECT * FROM pggit.get_next_backup_job('listener-1')")[0]
    assert (job["job_id"], job["backup_id"]) == (job_id, backup_id)
    assert scalar(listener, "SELECT pggit.complete_backup_job(%s, 'ok')", (job["job_id"],)) is True
    assert scalar(listener, "SELECT pggit.complete_backup(%s, 1000000, 500000, 'gzip')", (job["backup_id"],)) is True
    assert sizes(db, backup_id) == ("completed", 1000000, 500000, "gzip")


def test_sizes_recorded_after_the_job_are_not_rewritten_by_a_second_call(db, login):
    backup_id, _ = schedule_stanza(db, "main")
    listener = login(WORKER)
    job = query(listener, "SELECT * FROM pggit.get_next_backup_job('listener-1')")[0]
    assert scalar(listener, "SELECT pggit.complete_backup_job(%s, 'ok')", (job["job_id"],)) is True
    assert scalar(listener, "SELECT pggit.complete_backup(%s, 1000000, 500000, 'gzip')", (backup_id,)) is True
    error = refused(listener, "SELECT pggit.complete_backup(%s, 1, 1, 'zstd')", (backup_id,))
    assert error.pgcode == "55000" and str(backup_id) in error.diag.message_primary
    assert "already recorded" in error.diag.message_primary and error.diag.message_hint
    assert sizes(db, backup_id) == ("completed", 1000000, 500000, "gzip")


def test_sizes_the_supervisor_recorded_are_not_rewritten_by_complete_backup(db, login):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    assert (
        scalar(
            db,
            'SELECT pggit.finish_backup_job(%s, %s, \'ok\', \'{"backup_size": 4096, "compression_type": "zstd"}\')',
            (job_id, claimed["claim_token"]),
        )
        is True
    )
    error = refused(login(ADMIN), "SELECT pggit.complete_backup(%s, 1, 1, 'gzip')", (backup_id,))
    assert error.pgcode == "55000" and "already recorded" in error.diag.message_primary
    assert sizes(db, backup_id) == ("completed", 4096, None, "zstd")


@pytest.mark.parametrize("state", ["ready", "in_progress", "will_retry"])
def test_complete_backup_leaves_a_backup_whose_job_has_not_ended_to_its_job(db, login, state):
    backup_id, job_id = schedule_stanza(db, "main")
    if state != "ready":
        claimed = claim(db)
    if state == "will_retry":
        assert (
            scalar(
                db,
                "SELECT pggit.fail_claimed_backup_job(%s, %s, 'connection refused')",
                (job_id, claimed["claim_token"]),
            )
            == "will_retry"
        )
    for conn in (login(WORKER), login(ADMIN)):
        error = refused(conn, "SELECT pggit.complete_backup(%s, 1000000, 500000, 'gzip')", (backup_id,))
        assert error.pgcode == "55000", error.pgerror
        assert str(backup_id) in error.diag.message_primary and str(job_id) in error.diag.message_primary
        assert "pggit.finish_backup_job" in error.diag.message_hint
    assert sizes(db, backup_id) == ("in_progress", None, None, None)
    assert scalar(db, "SELECT job_state FROM pggit.backup_job_queue WHERE job_id = %s", (job_id,)) == state


# --- 2. complete_backup on a backup that is not in progress ------------------------------------


def test_complete_backup_of_an_unknown_backup_raises_naming_it(login):
    admin = login(ADMIN)
    unknown = "00000000-0000-0000-0000-0000000000a1"
    error = refused(admin, "SELECT pggit.complete_backup(%s)", (unknown,))
    assert error.pgcode == "22023" and unknown in error.diag.message_primary
    assert error.diag.column_name == "p_backup_id" and "list_backups" in error.diag.message_hint


def test_second_completion_of_a_backup_registered_by_hand_raises_naming_its_state(db, login):
    admin = login(ADMIN)
    backup_id = scalar(
        admin,
        "SELECT pggit.register_backup('custom-backup-001', 'full', 'custom', 's3://bucket/custom-001', "
        "(SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'))",
    )
    assert scalar(admin, "SELECT pggit.complete_backup(%s, 1000, 400, 'zstd')", (backup_id,)) is True
    error = refused(admin, "SELECT pggit.complete_backup(%s, 2000)", (backup_id,))
    assert error.pgcode == "55000"
    assert f"backup {backup_id} is completed, not in progress" in error.diag.message_primary
    assert error.diag.message_hint
    assert sizes(db, backup_id) == ("completed", 1000, 400, "zstd")


def test_complete_backup_of_a_failed_backup_raises_naming_its_state(db, login):
    admin = login(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('custom-2', 'full', 'custom', 's3://b/2', NULL, 'main')")
    assert scalar(admin, "SELECT pggit.fail_backup(%s, 'disk full')", (backup_id,)) is True
    error = refused(admin, "SELECT pggit.complete_backup(%s)", (backup_id,))
    assert error.pgcode == "55000" and "is failed, not in progress" in error.diag.message_primary
    assert backup(db, backup_id)["status"] == "failed"


def test_a_backup_registered_by_hand_is_completed_or_failed_by_the_admin_only(db, login):
    admin, worker = login(ADMIN), login(WORKER)
    backup_id = scalar(admin, "SELECT pggit.register_backup('custom-3', 'full', 'custom', 's3://b/3', NULL, 'main')")
    assert refused(worker, "SELECT pggit.complete_backup(%s, 10)", (backup_id,)).pgcode == "42501"
    assert refused(worker, "SELECT pggit.fail_backup(%s, 'x')", (backup_id,)).pgcode == "42501"
    assert sizes(db, backup_id) == ("in_progress", None, None, None)
    assert scalar(admin, "SELECT pggit.complete_backup(%s, 10)", (backup_id,)) is True
    assert sizes(db, backup_id) == ("completed", 10, None, None)


# --- 3. register_backup with the guide's defaults ----------------------------------------------


def test_register_backup_without_commit_or_branch_links_to_mains_head_with_a_notice(db, login):
    admin = login(ADMIN)
    backup_id = scalar(
        admin, "SELECT pggit.register_backup('nightly-001', 'full', 'custom', 's3://bucket/nightly-001')"
    )
    row = backup(db, backup_id)
    head = scalar(db, "SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'")
    assert (row["commit_hash"], row["branch_name"]) == (head, "main")
    assert any("head commit of main" in notice for notice in admin.notices), admin.notices


def test_register_backup_without_commit_or_branch_raises_when_main_has_no_head(db, login):
    db.cursor().execute("UPDATE pggit.branches SET head_commit_hash = NULL WHERE name = 'main'")
    admin = login(ADMIN)
    error = refused(admin, "SELECT pggit.register_backup('nightly-002', 'full', 'custom', 's3://bucket/nightly-002')")
    assert error.pgcode == "22023" and error.diag.column_name == "p_commit_hash"
    assert "main has no head commit" in error.diag.message_primary and error.diag.message_hint
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 0


# --- 5. pg_dump backups are snapshots, as the original recorded them ---------------------------


def test_pg_dump_backup_is_recorded_as_a_snapshot_and_counted_like_any_backup(db):
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    assert backup(db, backup_id)["backup_type"] == "snapshot"
    listed = query(db, "SELECT backup_id, backup_type FROM pggit.list_backups(p_limit := 20, p_offset := 0)")
    assert listed == [{"backup_id": backup_id, "backup_type": "snapshot"}]
    job_id = scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))
    claimed = claim(db)
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"])) is True
    assert backup(db, backup_id)["backup_type"] == "snapshot", "the worker reports no other type for a dump"
    # the guide's "backups by branch" monitoring counts it whatever its type
    assert (
        scalar(
            db,
            """SELECT COUNT(*) FROM pggit.backups bk JOIN pggit.commits c ON bk.commit_hash = c.hash
                          JOIN pggit.branches b ON c.branch_id = b.id WHERE b.name = 'main'""",
        )
        == 1
    )


def test_upgrading_from_0_1_0_records_its_pg_dump_backups_as_snapshots(empty_db, tmp_path):
    install_0_1_0(empty_db, tmp_path / "0.1.0")
    conn = psycopg2.connect(empty_db)
    conn.autocommit = True
    try:
        dumped = scalar(conn, "SELECT pggit.backup_pg_dump('main')")
        registered = scalar(
            conn, "SELECT pggit.register_backup('by-hand', 'full', 'pg_dump', '/backups/x.dump', NULL, 'main')"
        )
        assert scalar(conn, "SELECT backup_type FROM pggit.backups WHERE backup_id = %s", (dumped,)) == "full"
        assert [m.version for m in schema.install(empty_db, log=lambda *_: None)] == [
            m.version for m in schema.migrations() if m.version > 8
        ]
        types = {
            r["backup_id"]: r["backup_type"] for r in query(conn, "SELECT backup_id, backup_type FROM pggit.backups")
        }
        assert types == {dumped: "snapshot", registered: "full"}, "a type registered by hand is what its user said"
    finally:
        conn.close()
