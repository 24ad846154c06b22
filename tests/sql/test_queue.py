"""The queue's state machine and its guards, as the SQL functions implement them."""

import hashlib
import re
import select

import psycopg2
import pytest

from helpers.db import query, scalar
from helpers.queue import backup, claim, force, job, schedule_dump, schedule_stanza


def test_claim_marks_running_with_lease_token_and_attempt(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db, "worker-01/1", lease=60)
    assert claimed["job_id"] == job_id and claimed["attempts"] == 1
    assert re.fullmatch("[0-9a-f]{64}", claimed["claim_token"]), "a 256-bit secret, as hex"
    stored = query(db, "SELECT claim_token, claimed_by, claim_secret_sha256 FROM pggit.backup_jobs")[0]
    assert stored["claim_token"] == 1, "the claim counter"
    assert stored["claimed_by"] == scalar(db, "SELECT session_user")
    assert bytes(stored["claim_secret_sha256"]) == hashlib.sha256(claimed["claim_token"].encode()).digest(), (
        "only the token's hash is kept"
    )
    assert claimed["spec"]["tool"] == "pg_dump" and claimed["database_name"] == scalar(db, "SELECT current_database()")
    row = job(db, job_id)
    assert row["job_state"] == "in_progress" and row["worker_id"] == "worker-01/1"
    assert 55 <= scalar(db, "SELECT extract(epoch FROM lease_expires_at - now()) FROM pggit.backup_jobs") <= 60
    assert backup(db, backup_id)["started_at"] is not None
    assert claim(db, "worker-01/2") is None, "one job, claimed once"


def test_claim_order_is_priority_then_fresh_before_retry_then_age(db):
    _, retry_job = schedule_stanza(db, "s-retry")
    claimed = claim(db)
    assert (
        scalar(
            db,
            "SELECT pggit.fail_claimed_backup_job(%s, %s, 'x', true, 0, 0)",
            (claimed["job_id"], claimed["claim_token"]),
        )
        == "will_retry"
    )
    _, old = schedule_stanza(db, "s-old")
    _, new = schedule_stanza(db, "s-new")
    _, urgent = schedule_stanza(db, "s-urgent", '{"priority": 1}')
    order = [claim(db)["job_id"] for _ in range(4)]
    assert order == [urgent, old, new, retry_job]


def test_claim_takes_only_the_tools_the_worker_has(db):
    schedule_stanza(db, "main")
    _, dump_job = schedule_dump(db)
    assert claim(db, tools=["barman"]) is None
    assert claim(db, tools=["pg_dump", "custom"])["job_id"] == dump_job


def test_jobs_of_one_target_never_run_at_once(db):
    _, first = schedule_stanza(db, "main")
    _, second = schedule_stanza(db, "main")
    _, other = schedule_stanza(db, "other")
    assert claim(db)["job_id"] == first
    assert claim(db)["job_id"] == other, "the second job of stanza main waits"
    assert claim(db) is None
    db.cursor().execute("SET pggit.queue_internal = 'on'")  # as the owner, past the hand-edit rule
    with pytest.raises(psycopg2.errors.UniqueViolation):
        db.cursor().execute(
            """UPDATE pggit.backup_jobs SET status = 'running', locked_by = 'x',
                               lease_expires_at = now() WHERE job_id = %s""",
            (second,),
        )


def test_target_frees_when_its_job_ends(db):
    _, first = schedule_stanza(db, "main")
    _, second = schedule_stanza(db, "main")
    claimed = claim(db)
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (first, claimed["claim_token"])) is True
    assert claim(db)["job_id"] == second


def test_finish_completes_job_and_backup_together_with_facts(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    facts = (
        '{"backup_size": 1234, "compressed_size": 456, "compression_type": "gzip", "checksum": "sha256:ab", '
        '"location": "file:///backups/x.dump", "metadata": {"tables": 3}}'
    )
    assert (
        scalar(
            db,
            "SELECT pggit.finish_backup_job(%s, %s, 'ok', %s, '{\"exit_code\": 0}')",
            (job_id, claimed["claim_token"], facts),
        )
        is True
    )
    row = backup(db, backup_id)
    assert (row["status"], row["backup_size"], row["compressed_size"], row["checksum"], row["location"]) == (
        "completed",
        1234,
        456,
        "sha256:ab",
        "file:///backups/x.dump",
    )
    assert row["metadata"]["tables"] == 3 and row["completed_at"] is not None
    assert job(db, job_id)["job_state"] == "completed"


def test_late_calls_with_a_stale_token_change_nothing(db):
    backup_id, job_id = schedule_dump(db)
    stale = claim(db)
    db.cursor().execute("SELECT pggit.release_backup_job(%s, %s, 'shutdown')", (job_id, stale["claim_token"]))
    fresh = claim(db, "w2")
    assert fresh["claim_token"] != stale["claim_token"]
    assert scalar(db, "SELECT claim_token FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) == 2
    token = stale["claim_token"]
    assert scalar(db, "SELECT pggit.heartbeat_backup_job(%s, %s)", (job_id, token)) is False
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, token)) is False
    assert scalar(db, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'late')", (job_id, token)) is None
    assert scalar(db, "SELECT pggit.release_backup_job(%s, %s)", (job_id, token)) is False
    row = job(db, job_id)
    assert row["job_state"] == "in_progress" and row["worker_id"] == "w2" and row["last_error"] is None
    assert backup(db, backup_id)["status"] == "in_progress"


def test_failure_of_a_completed_job_never_flips_its_backup(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"])) is True
    assert scalar(db, "SELECT pggit.fail_backup_job(%s, 'late error')", (job_id,)) is False
    assert (
        scalar(db, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'late', false)", (job_id, claimed["claim_token"]))
        is None
    )
    assert backup(db, backup_id)["status"] == "completed"
    assert job(db, job_id)["job_state"] == "completed"


def test_guide_calls_without_a_token_never_touch_a_workers_claim(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db, "worker-new")
    assert scalar(db, "SELECT pggit.complete_backup_job(%s, 'late output')", (job_id,)) is False
    assert scalar(db, "SELECT pggit.fail_backup_job(%s, 'late error')", (job_id,)) is False
    with pytest.raises(psycopg2.Error) as exc:
        scalar(db, "SELECT pggit.fail_claimed_backup_job(%s, NULL, 'x', false)", (job_id,))
    assert exc.value.pgcode == "22023" and "p_claim_token" in str(exc.value)
    assert job(db, job_id)["job_state"] == "in_progress" and backup(db, backup_id)["status"] == "in_progress"
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"])) is True


def test_completing_a_registered_backup_by_hand_is_final(db):
    backup_id = scalar(db, "SELECT pggit.register_backup('b', 'full', 'custom', '/x', p_branch_name := 'main')")
    assert scalar(db, "SELECT pggit.complete_backup(%s)", (backup_id,)) is True
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute("SELECT pggit.enqueue_backup_job(%s, '/bin/true', 'custom')", (backup_id,))
    assert exc.value.pgcode == "22023" and "already completed" in str(exc.value)
    assert scalar(db, "SELECT pggit.fail_backup(%s, 'boom')", (backup_id,)) is False
    assert backup(db, backup_id)["status"] == "completed", "nothing reopens or fails a completed backup"


def test_a_backup_with_a_job_is_not_completed_by_hand(db):
    backup_id, job_id = schedule_dump(db)
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute("SELECT pggit.complete_backup(%s)", (backup_id,))
    assert exc.value.pgcode == "55000" and str(job_id) in exc.value.diag.message_primary
    claimed = claim(db)
    db.cursor().execute("SELECT pggit.fail_claimed_backup_job(%s, %s, 'boom', false)", (job_id, claimed["claim_token"]))
    assert backup(db, backup_id)["status"] == "failed", "its job decided the outcome"


def test_retry_delay_doubles_per_attempt_and_is_capped(db):
    _, job_id = schedule_dump(db, options='{"max_attempts": 5}')
    delays = []
    for _ in range(4):
        force(db, "UPDATE pggit.backup_jobs SET next_retry_at = now() WHERE job_id = %s", (job_id,))
        claimed = claim(db)
        assert claimed["job_id"] == job_id
        state = scalar(
            db, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'boom', true, 100, 500)", (job_id, claimed["claim_token"])
        )
        assert state == "will_retry"
        delays.append(round(scalar(db, "SELECT extract(epoch FROM next_retry_at - now()) FROM pggit.backup_jobs")))
    assert delays == [100, 200, 400, 500]


def test_guide_fail_backup_job_uses_base_delay_times_two_to_attempts_minus_one(db):
    _, job_id = schedule_dump(db)
    db.cursor().execute("SELECT * FROM pggit.get_next_backup_job('psql-user')")
    assert scalar(db, "SELECT pggit.fail_backup_job(%s, 'disk full')", (job_id,)) is True
    row = job(db, job_id)
    assert row["job_state"] == "will_retry" and row["status"] == "failed" and row["last_error"] == "disk full"
    assert round(scalar(db, "SELECT extract(epoch FROM next_retry_at - now()) FROM pggit.backup_jobs")) == 300
    assert claim(db) is None, "not before next_retry_at"


def test_exhausted_attempts_fail_the_job_and_its_backup_for_good(db):
    backup_id, job_id = schedule_dump(db, options='{"max_attempts": 2}')
    for expected in ("will_retry", "permanently_failed"):
        force(db, "UPDATE pggit.backup_jobs SET next_retry_at = now()")
        claimed = claim(db)
        assert (
            scalar(
                db, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'tool exited 1')", (job_id, claimed["claim_token"])
            )
            == expected
        )
    assert job(db, job_id)["job_state"] == "permanently_failed"
    row = backup(db, backup_id)
    assert row["status"] == "failed" and row["error_message"] == "tool exited 1"
    assert claim(db) is None


def test_non_retryable_failure_is_permanent_at_once(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    assert (
        scalar(
            db,
            "SELECT pggit.fail_claimed_backup_job(%s, %s, 'invalid parameters: x', false)",
            (job_id, claimed["claim_token"]),
        )
        == "permanently_failed"
    )
    row = job(db, job_id)
    assert row["attempts"] >= row["max_attempts"] and row["next_retry_at"] is None
    assert backup(db, backup_id)["status"] == "failed"


def test_release_hands_the_job_back_without_spending_an_attempt(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    assert (
        scalar(db, "SELECT pggit.release_backup_job(%s, %s, 'supervisor stopping')", (job_id, claimed["claim_token"]))
        is True
    )
    row = job(db, job_id)
    assert row["job_state"] == "ready" and row["attempts"] == 0 and row["worker_id"] is None
    assert backup(db, backup_id)["status"] == "in_progress"


def test_rescue_returns_expired_leases_and_leaves_live_ones(db):
    _, expired = schedule_stanza(db, "a")
    _, live = schedule_stanza(db, "b")
    claim(db, "dead-worker", lease=1)
    claim(db, "live-worker", lease=600)
    force(
        db, "UPDATE pggit.backup_jobs SET lease_expires_at = now() - interval '1 second' WHERE job_id = %s", (expired,)
    )
    rescued = query(db, "SELECT * FROM pggit.rescue_expired_backup_jobs()")
    assert rescued == [{"job_id": expired, "worker_id": "dead-worker", "job_state": "will_retry"}]
    assert job(db, expired)["job_state"] == "will_retry" and "lease expired" in job(db, expired)["last_error"]
    assert job(db, live)["job_state"] == "in_progress"
    assert query(db, "SELECT * FROM pggit.rescue_expired_backup_jobs()") == [], "a second rescue finds nothing"
    assert claim(db)["job_id"] == expired, "a rescued job can be claimed again at once"


def test_rescue_of_the_last_attempt_fails_the_backup(db):
    backup_id, job_id = schedule_dump(db, options='{"max_attempts": 1}')
    claim(db, lease=1)
    force(db, "UPDATE pggit.backup_jobs SET lease_expires_at = now() - interval '1 second'")
    assert query(db, "SELECT job_state FROM pggit.rescue_expired_backup_jobs()") == [
        {"job_state": "permanently_failed"}
    ]
    assert backup(db, backup_id)["status"] == "failed"


def test_release_worker_jobs_requeues_a_dead_workers_job_at_once(db):
    _, job_id = schedule_dump(db)
    claim(db, "host-a/1", lease=3600)
    assert query(db, "SELECT * FROM pggit.release_worker_backup_jobs('host-a/2')") == []
    assert query(db, "SELECT * FROM pggit.release_worker_backup_jobs('host-a/1')") == [
        {"job_id": job_id, "job_state": "will_retry"}
    ]
    again = claim(db, "host-a/1")
    assert again["job_id"] == job_id and again["attempts"] == 2


def test_guide_cancel_update_stops_a_running_job_at_its_next_heartbeat(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    assert scalar(db, "SELECT pggit.heartbeat_backup_job(%s, %s)", (job_id, claimed["claim_token"])) is False
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"])) is False
    assert job(db, job_id)["job_state"] == "cancelled"
    assert backup(db, backup_id)["status"] == "cancelled"


def test_guide_reset_update_makes_a_failed_job_ready_and_its_backup_in_progress(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    db.cursor().execute("SELECT pggit.fail_claimed_backup_job(%s, %s, 'bad', false)", (job_id, claimed["claim_token"]))
    assert backup(db, backup_id)["status"] == "failed"
    db.cursor().execute(
        """
        UPDATE pggit.backup_jobs
        SET status = 'queued',
            next_retry_at = NULL,
            attempts = 0
        WHERE job_id = %s""",
        (job_id,),
    )
    assert job(db, job_id)["job_state"] == "ready"
    assert backup(db, backup_id)["status"] == "in_progress"
    assert claim(db)["job_id"] == job_id


@pytest.mark.parametrize(
    "start,target",
    [
        ("queued", "running"),
        ("queued", "completed"),
        ("running", "completed"),
        ("running", "failed"),
        ("completed", "queued"),
        ("completed", "cancelled"),
    ],
)
def test_hand_made_transitions_other_than_cancel_and_reset_are_refused(db, start, target):
    backup_id, job_id = schedule_dump(db)
    if start in ("running", "completed"):
        claimed = claim(db)
    if start == "completed":
        db.cursor().execute("SELECT pggit.finish_backup_job(%s, %s)", (job_id, claimed["claim_token"]))
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute(
            "UPDATE pggit.backup_jobs SET status = %s, locked_by = 'me', lease_expires_at = now() WHERE job_id = %s",
            (target, job_id),
        )
    assert exc.value.pgcode == "55000" and "by hand" in str(exc.value)
    assert job(db, job_id)["status"] == start


def test_max_attempts_below_one_is_rejected_by_the_table_too(db):
    _, job_id = schedule_dump(db)
    with pytest.raises(psycopg2.errors.CheckViolation):
        db.cursor().execute("UPDATE pggit.backup_jobs SET max_attempts = 0 WHERE job_id = %s", (job_id,))


def test_a_ready_job_sends_notify_on_the_ready_channel(connect):
    listener, scheduler = connect(), connect()
    listener.cursor().execute("LISTEN pggit_backup_job_ready")
    schedule_dump(scheduler)
    assert select.select([listener], [], [], 5) != ([], [], [])
    listener.poll()
    assert [n.payload for n in listener.notifies] == ["pg_dump"]


def test_cancelling_a_running_job_notifies_the_cancel_channel(connect):
    listener, conn = connect(), connect()
    listener.cursor().execute("LISTEN pggit_backup_job_cancelled")
    _, job_id = schedule_dump(conn)
    claim(conn)
    conn.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    assert select.select([listener], [], [], 5) != ([], [], [])
    listener.poll()
    assert [n.payload for n in listener.notifies] == [str(job_id)]


def test_get_next_backup_job_claims_with_the_guides_columns(db):
    _, job_id = schedule_dump(db)
    rows = query(db, "SELECT * FROM pggit.get_next_backup_job('worker-01')")
    assert list(rows[0].keys()) == ["job_id", "backup_id", "command", "tool", "attempts", "metadata"]
    assert rows[0]["job_id"] == job_id and rows[0]["attempts"] == 1
    assert job(db, job_id)["worker_id"] == "worker-01"
    assert scalar(db, "SELECT pggit.complete_backup_job(%s, 'done')", (job_id,)) is True
    assert scalar(db, "SELECT pggit.complete_backup_job(%s, 'twice')", (job_id,)) is False


def test_operator_cannot_change_attempts_or_retry_time_without_a_reset(db):
    _, job_id = schedule_dump(db)
    for change in ("attempts = 2147483647", "attempts = 5", "next_retry_at = now() + interval '1 day'"):
        with pytest.raises(psycopg2.Error) as exc:
            db.cursor().execute(f"UPDATE pggit.backup_jobs SET {change} WHERE job_id = %s", (job_id,))
        assert exc.value.pgcode in ("55000", "23514"), change
    with pytest.raises(psycopg2.errors.CheckViolation):
        db.cursor().execute("UPDATE pggit.backup_jobs SET priority = -1 WHERE job_id = %s", (job_id,))
    db.cursor().execute("UPDATE pggit.backup_jobs SET priority = 1 WHERE job_id = %s", (job_id,))
    assert claim(db)["priority"] == 1, "reprioritising by hand works, and the queue still claims"


def test_a_cancelled_running_job_keeps_its_target_until_its_worker_stopped_the_tool(db):
    _, first = schedule_stanza(db, "shared")
    _, second = schedule_stanza(db, "shared")
    held = claim(db, "w-a")
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (first,))
    assert claim(db, "w-b") is None, "the cancelled tool may still be running"
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'queued' WHERE job_id = %s", (first,))
    assert exc.value.pgcode == "55000" and "still stopping" in str(exc.value)
    assert scalar(db, "SELECT pggit.heartbeat_backup_job(%s, %s)", (first, held["claim_token"])) is False
    assert scalar(db, "SELECT pggit.abandon_backup_job(%s, %s)", (first, held["claim_token"])) is True
    assert claim(db, "w-b")["job_id"] == second


def test_rescue_frees_the_target_of_a_cancelled_job_whose_worker_vanished(db):
    _, first = schedule_stanza(db, "shared")
    _, second = schedule_stanza(db, "shared")
    claim(db, "w-gone", lease=1)
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (first,))
    force(db, "UPDATE pggit.backup_jobs SET lease_expires_at = now() - interval '1 second' WHERE job_id = %s", (first,))
    db.cursor().execute("SELECT * FROM pggit.rescue_expired_backup_jobs()")
    assert claim(db, "w-b")["job_id"] == second


def test_deleting_a_queued_job_cancels_its_backup(db):
    backup_id, job_id = schedule_dump(db)
    db.cursor().execute("DELETE FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))
    row = backup(db, backup_id)
    assert (row["status"], row["error_message"]) == ("cancelled", "its job was deleted")


def test_a_running_job_is_deleted_only_after_it_was_cancelled_and_its_worker_let_go(db):
    backup_id, job_id = schedule_dump(db)
    held = claim(db)
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute("DELETE FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))
    assert exc.value.pgcode == "55000" and "status = 'cancelled'" in exc.value.diag.message_hint
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute("DELETE FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))
    assert exc.value.pgcode == "55000", "its worker is still stopping the tool"
    assert scalar(db, "SELECT pggit.abandon_backup_job(%s, %s)", (job_id, held["claim_token"])) is True
    db.cursor().execute("DELETE FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))
    assert backup(db, backup_id)["status"] == "cancelled"


def test_a_registered_backup_takes_one_custom_job(db):
    backup_id = scalar(db, "SELECT pggit.register_backup('b', 'full', 'custom', '/x', p_branch_name := 'main')")
    db.cursor().execute("SELECT pggit.enqueue_backup_job(%s, '/bin/true', 'custom')", (backup_id,))
    with pytest.raises(psycopg2.Error) as exc:
        db.cursor().execute("SELECT pggit.enqueue_backup_job(%s, '/bin/true', 'custom')", (backup_id,))
    assert exc.value.pgcode == "22023" and "already has a job" in str(exc.value)


def test_finish_checks_every_fact_before_writing(db):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    for facts in ('{"backup_size": "-5"}', '{"verified": "maybe"}', '{"location": "x\\ny"}', '{"metadata": [1]}'):
        with pytest.raises(psycopg2.Error) as exc:
            db.cursor().execute(
                "SELECT pggit.finish_backup_job(%s, %s, 'ok', %s)", (job_id, claimed["claim_token"], facts)
            )
        assert exc.value.pgcode == "22023", facts
    assert job(db, job_id)["job_state"] == "in_progress" and backup(db, backup_id)["status"] == "in_progress"


LIMIT_CALLS = {
    "p_output": "SELECT pggit.finish_backup_job(%(job)s, %(token)s, repeat('x', 65537))",
    "p_backup": """SELECT pggit.finish_backup_job(%(job)s, %(token)s, 'ok',
                       jsonb_build_object('metadata', jsonb_build_object('log', repeat('x', 262144))))""",
    "p_result": """SELECT pggit.finish_backup_job(%(job)s, %(token)s, 'ok', '{}',
                       jsonb_build_object('tail', repeat('x', 262144)))""",
    "p_error": "SELECT pggit.fail_claimed_backup_job(%(job)s, %(token)s, repeat('é', 32769))",
    "p_result of a failure": """SELECT pggit.fail_claimed_backup_job(%(job)s, %(token)s, 'boom', true, 300, 21600,
                                    jsonb_build_object('tail', repeat('x', 262144)))""",
}


@pytest.mark.parametrize("param", LIMIT_CALLS)
def test_results_over_the_size_limits_are_refused_with_22023_naming_the_parameter(db, param):
    backup_id, job_id = schedule_dump(db)
    claimed = claim(db)
    before = query(db, "SELECT * FROM pggit.backup_jobs")
    with pytest.raises(psycopg2.Error) as exc:
        scalar(db, LIMIT_CALLS[param], {"job": job_id, "token": claimed["claim_token"]})
    assert exc.value.pgcode == "22023"
    assert exc.value.diag.column_name == param.split()[0] and "limit of" in str(exc.value)
    assert query(db, "SELECT * FROM pggit.backup_jobs") == before
    assert backup(db, backup_id)["status"] == "in_progress"


def test_the_guides_completion_refuses_output_over_64_kib_and_accepts_64_kib(db):
    _, job_id = schedule_dump(db)
    query(db, "SELECT * FROM pggit.get_next_backup_job('w1')")
    with pytest.raises(psycopg2.Error) as exc:
        scalar(db, "SELECT pggit.complete_backup_job(%s, repeat('x', 65537))", (job_id,))
    assert exc.value.pgcode == "22023" and "p_output" in str(exc.value)
    assert scalar(db, "SELECT pggit.complete_backup_job(%s, repeat('x', 65536))", (job_id,)) is True
    assert scalar(db, "SELECT octet_length(output) FROM pggit.backup_jobs") == 65536


def test_a_workers_report_is_trimmed_to_what_the_queue_accepts(db):
    from pggit_supervisor.queue import MAX_TEXT_BYTES, Queue

    backup_id, job_id = schedule_dump(db)
    queue = Queue(db)
    held = queue.claim("w1", ["pg_dump"], 60)
    output = "a tool that prints NUL\x00 and é " * 20000 + "the end"
    facts = {"backup_size": 7, "metadata": {"listing": ["t" * 100] * 5000}}
    result = {"exit_code": 0, "stdout_tail": "\x00" * 4000, "stderr_tail": "é" * 300000}
    assert queue.finish(held, output, facts, result) is True
    row = query(db, "SELECT output, result FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))[0]
    assert len(row["output"].encode()) <= MAX_TEXT_BYTES and row["output"].endswith("the end")
    assert "\x00" not in row["output"] and row["result"]["exit_code"] == 0 and "tails_dropped" in row["result"]
    stored = backup(db, backup_id)
    assert stored["backup_size"] == 7 and "metadata_dropped" in stored["metadata"]
    assert queue.outcome_of(held) == "completed"


def test_retention_delete_of_a_completed_backup_takes_its_running_drill_along(db):
    backup_id, job_id = schedule_dump(db)
    assert scalar(db, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, claim(db)["claim_token"])) is True
    drill = scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,))
    held = claim(db, tools=["restore_test"])
    assert held["job_id"] == drill
    force(db, "UPDATE pggit.backups SET created_at = now() - interval '31 days' WHERE backup_id = %s", (backup_id,))
    with db.cursor() as cur:
        cur.execute("""DELETE FROM pggit.backups
                       WHERE created_at < CURRENT_TIMESTAMP - INTERVAL '30 days'
                         AND status = 'completed'""")
        assert cur.rowcount == 1
    assert scalar(db, "SELECT pggit.heartbeat_backup_job(%s, %s)", (drill, held["claim_token"])) is False, (
        "the drill's worker stops at its next heartbeat"
    )
