"""Retention jobs (schema/017; issue 10): a target's retention runs as a queued job that exactly
one worker claims. Requests coalesce (one queued job per target), a schedule slot becomes one
job whoever asks, a claim is bound to the login and token that made it, a dead worker's job comes
back after its lease, and bad input is refused before anything is written."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from helpers.config_files import write_config
from helpers.db import query, refused, scalar
from helpers.processes import wait_until
from helpers.queue import force
from helpers.retention import make
from pggit_supervisor.config.loader import load_config
from pggit_supervisor.queue import Queue
from pggit_supervisor.retention_jobs import RetentionJobs, fit_summary

UTC = timezone.utc
WORKER, OPERATOR, READER = "pggit_backup_worker", "pggit_backup_operator", "pggit_backup_reader"
DUMPS = {"tool": "pg_dump"}
S1 = {"tool": "pgbackrest", "stanza": "s1"}


def enqueue(conn, target=DUMPS, reason="requested", slot=None):
    return scalar(conn, "SELECT pggit.enqueue_retention(%s, %s, %s)::text", (json.dumps(target), reason, slot))


def take(conn, worker="host-a/1", targets=(DUMPS,), lease=60):
    rows = query(
        conn,
        "SELECT job_id::text, kind, target, reason, attempts, claim_token, target_index"
        " FROM pggit.claim_maintenance_job(%s, %s, %s)",
        (worker, json.dumps(list(targets)), lease),
    )
    return rows[0] if rows else None


def jobs(db):
    return query(
        db,
        "SELECT job_id::text, status, reason, slot_time, attempts, error"
        " FROM pggit.maintenance_jobs ORDER BY enqueued_at",
    )


def whole_minute(db, minutes_ago=0):
    return scalar(db, "SELECT date_trunc('minute', now()) - make_interval(mins => %s)", (minutes_ago,))


def test_requests_for_a_target_coalesce_into_the_one_queued_job(db, login):
    worker = login(WORKER)
    first = enqueue(worker)
    assert enqueue(worker) == first and enqueue(login(OPERATOR)) == first
    assert enqueue(worker, S1) != first, "another target has a job of its own"

    held = take(worker)
    assert held["job_id"] == first and held["attempts"] == 1 and held["target"]["database"]
    again = enqueue(worker)
    assert again != first, "a backup finishing while the run is under way asks for one more run"
    assert take(worker, "host-b/1") is None, "not while the target's first job runs"
    assert [row["status"] for row in jobs(db)] == ["running", "queued", "queued"]


def test_a_schedule_slot_becomes_one_job_whichever_hosts_ask_and_however_often(db, login):
    worker = login(WORKER)
    slot = whole_minute(db, 1)
    made = enqueue(worker, DUMPS, "schedule", slot)
    assert enqueue(login(WORKER), DUMPS, "schedule", slot) == made
    take(worker)  # it runs; the slot still names that job
    assert enqueue(worker, DUMPS, "schedule", slot) == made, "a host ticking late does not run the slot again"
    assert len(jobs(db)) == 1


def test_a_slot_asked_for_while_a_job_is_queued_is_carried_by_that_job(db, login):
    worker = login(WORKER)
    queued = enqueue(worker)  # after a backup, say
    slot = whole_minute(db)
    assert enqueue(worker, DUMPS, "schedule", slot) == queued
    assert query(db, "SELECT slot_time FROM pggit.maintenance_jobs")[0]["slot_time"] == slot
    take(worker)
    assert enqueue(worker, DUMPS, "schedule", slot) == queued, "the slot was that job's"


def test_racing_hosts_enqueue_one_job_per_slot(db, login, dsn):
    slot = whole_minute(db, 2)
    logins = [login(WORKER) for _ in range(6)]
    start, found, errors = threading.Barrier(len(logins)), [], []

    def one(conn):
        start.wait()
        try:
            found.append(enqueue(conn, S1, "schedule", slot))
        except psycopg2.Error as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(conn,)) for conn in logins]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(set(found)) == 1 and None not in found
    assert len(jobs(db)) == 1


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (({"tool": "tar"}, "requested", None), "p_target.tool"),
        ((DUMPS, "whenever", None), "p_reason"),
        ((DUMPS, "schedule", None), "p_slot_time"),
        ((DUMPS, "requested", "2026-01-01 00:00:00+00"), "p_slot_time"),
        ((DUMPS, "schedule", "2026-01-01 00:00:30+00"), "p_slot_time"),
        ((DUMPS, "schedule", "2999-01-01 00:00:00+00"), "p_slot_time"),
    ],
)
def test_bad_requests_are_refused_naming_the_parameter_and_write_nothing(db, login, args, param):
    target, reason, slot = args
    error = refused(login(WORKER), "SELECT pggit.enqueue_retention(%s, %s, %s)", (json.dumps(target), reason, slot))
    assert error.pgcode == "22023" and param in error.pgerror
    assert jobs(db) == []


def test_only_workers_claim_and_only_workers_and_operators_enqueue(db, login):
    reader, operator = login(READER), login(OPERATOR)
    assert refused(reader, "SELECT pggit.enqueue_retention(%s)", (json.dumps(DUMPS),)).pgcode == "42501"
    enqueue(operator)
    error = refused(operator, "SELECT * FROM pggit.claim_maintenance_job('x/1', %s)", (json.dumps([DUMPS]),))
    assert error.pgcode == "42501"
    assert refused(reader, "SELECT * FROM pggit.maintenance_jobs").pgcode == "42501"
    shown = query(reader, "SELECT * FROM pggit.maintenance_job_queue")
    assert len(shown) == 1 and "claim_secret_sha256" not in shown[0]


def test_a_worker_claims_only_the_targets_it_retains_and_learns_which(db, login):
    worker = login(WORKER)
    enqueue(worker, S1)
    assert take(worker, targets=[DUMPS]) is None
    held = take(worker, targets=[DUMPS, {"stanza": "s1", "tool": "pgbackrest"}])
    assert held["target"] == S1 and held["target_index"] == 1


def test_a_claim_is_the_claiming_logins_with_its_token_alone(db, login):
    mine, other = login(WORKER), login(WORKER)
    enqueue(mine)
    held = take(mine)
    args = (held["job_id"], held["claim_token"])
    assert not scalar(other, "SELECT pggit.finish_maintenance_job(%s, %s, '{}')", args), "another login's token use"
    assert not scalar(other, "SELECT pggit.heartbeat_maintenance_job(%s, %s)", args)
    assert not scalar(mine, "SELECT pggit.finish_maintenance_job(%s, %s, '{}')", (held["job_id"], "0" * 64))
    assert refused(mine, "SELECT pggit.finish_maintenance_job(%s, 'nope', '{}')", (held["job_id"],)).pgcode == "22023"
    assert jobs(db)[0]["status"] == "running"
    assert scalar(mine, "SELECT pggit.heartbeat_maintenance_job(%s, %s)", args)
    assert scalar(mine, "SELECT pggit.finish_maintenance_job(%s, %s, '{\"removed\": []}')", args)
    assert not scalar(mine, "SELECT pggit.finish_maintenance_job(%s, %s, '{}')", args), "once"
    assert jobs(db)[0]["status"] == "completed"


def test_a_dead_workers_job_comes_back_after_its_lease_and_fails_after_five_losses(db, login):
    worker = login(WORKER)
    enqueue(worker)
    for attempt in range(1, 6):
        held = take(worker, f"host-{attempt}/1")
        assert held is not None and held["attempts"] == attempt
        assert take(worker, "host-x/1") is None, "not while its lease runs"
        force(db, "UPDATE pggit.maintenance_jobs SET lease_expires_at = now() - interval '1 second'")
    assert take(worker, "host-x/1") is None
    (row,) = jobs(db)
    assert row["status"] == "failed" and "lost 5 times" in row["error"]


def test_a_job_released_while_another_host_holds_the_target_waits_or_gives_way_to_a_newer_one(db, login):
    worker = login(WORKER)
    first = enqueue(worker)
    held = take(worker)
    assert scalar(
        worker, "SELECT pggit.release_maintenance_job(%s, %s, 'busy', 30)", (held["job_id"], held["claim_token"])
    )
    (row,) = jobs(db)
    assert (row["job_id"], row["status"], row["attempts"]) == (first, "queued", 0)
    assert take(worker) is None, "it waits its delay"

    force(db, "UPDATE pggit.maintenance_jobs SET run_after = now()")
    held = take(worker)
    newer = enqueue(worker)
    assert scalar(
        worker, "SELECT pggit.release_maintenance_job(%s, %s, 'stopping')", (held["job_id"], held["claim_token"])
    )
    states = {row["job_id"]: row["status"] for row in jobs(db)}
    assert states == {first: "completed", newer: "queued"}, "a target queues once: the released job gives way"


def test_a_completed_backup_of_a_retained_target_queues_its_run_and_no_other_does(db, login):
    worker = login(WORKER)
    backup = make(db, scalar(db, "SELECT now()") - timedelta(hours=1))
    job_id = scalar(db, "SELECT job_id::text FROM pggit.backup_jobs WHERE backup_id = %s", (backup,))
    other = scalar(db, "SELECT pggit.backup_pg_dump('main')")  # still queued: not completed
    other_job = scalar(db, "SELECT job_id::text FROM pggit.backup_jobs WHERE backup_id = %s", (other,))

    after = "SELECT pggit.enqueue_retention_after_backup(%s, %s)::text"
    assert scalar(worker, after, (job_id, json.dumps([S1]))) is None, "not a target of the caller's"
    assert scalar(worker, after, (other_job, json.dumps([DUMPS]))) is None, "its backup is not completed"
    queued = scalar(worker, after, (job_id, json.dumps([S1, DUMPS])))
    (row,) = query(db, "SELECT reason, backup_id::text, status FROM pggit.maintenance_jobs")
    assert (row["reason"], row["backup_id"], row["status"]) == ("backup", backup, "queued") and queued
    assert refused(worker, after, (job_id, '{"not": "an array"}')).pgcode == "22023"


def test_pruning_takes_old_finished_retention_jobs_and_leaves_the_rest(db, login):
    worker = login(WORKER)
    enqueue(worker)
    held = take(worker)
    scalar(worker, "SELECT pggit.finish_maintenance_job(%s, %s, '{}')", (held["job_id"], held["claim_token"]))
    enqueue(worker)
    force(db, "UPDATE pggit.maintenance_jobs SET finished_at = now() - interval '40 days' WHERE status = 'completed'")
    assert scalar(worker, "SELECT pggit.prune_finished_jobs(%s)", (30 * 86400,)) == 1
    assert [row["status"] for row in jobs(db)] == ["queued"]
    assert refused(worker, "SELECT pggit.prune_finished_jobs(10)").pgcode == "22023"


def test_a_request_coalesced_into_a_delayed_job_is_not_deferred_by_that_delay(db, login):
    """A worker login may release its claim with a delay of up to a day; a backup completing
    (or a slot falling) after that coalesces into the delayed job, and must not wait with it."""
    hostile = login(WORKER)
    first = enqueue(hostile)
    held = take(hostile)
    scalar(
        hostile, "SELECT pggit.release_maintenance_job(%s, %s, 'later', 86400)", (held["job_id"], held["claim_token"])
    )
    assert enqueue(login(WORKER)) == first, "the request is carried by the queued job"
    again = take(login(WORKER), "host-b/1")
    assert again is not None and again["job_id"] == first, "a request is served now, not after the delay"


def test_a_release_racing_a_new_request_gives_way_to_it_instead_of_failing(db, login, login_as):
    """The request is inserted (not committed yet) after release_maintenance_job looked for a
    queued job: its re-queue then meets that row in the one-queued index. It must give way
    (completed as superseded), not raise a unique violation at the worker."""
    worker, (other, _) = login(WORKER), login_as(WORKER)
    first = enqueue(worker)
    held = take(worker)
    pid = scalar(worker, "SELECT pg_backend_pid()")
    other.autocommit = False
    newer = enqueue(other)  # uncommitted: invisible to the release's check, but in the index
    outcome: list = []

    def release():
        try:
            outcome.append(
                scalar(
                    worker,
                    "SELECT pggit.release_maintenance_job(%s, %s, 'stopping')",
                    (held["job_id"], held["claim_token"]),
                )
            )
        except psycopg2.Error as exc:
            outcome.append(exc)

    thread = threading.Thread(target=release)
    thread.start()
    try:
        waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"
        wait_until(lambda: scalar(db, waiting, (pid,)), 10, "the release waits on the uncommitted request")
    finally:
        other.commit()
        thread.join(30)
    assert outcome == [True], outcome
    states = {row["job_id"]: row["status"] for row in jobs(db)}
    assert states == {first: "completed", newer: "queued"}


@pytest.mark.parametrize(
    ("targets", "param"),
    [
        ([{"tool": "tar"}], "p_targets[0].tool"),
        ([DUMPS, {"tool": "pgbackrest", "stanza": "--config=/tmp/x"}], "p_targets[1].stanza"),
        ([DUMPS, 5], "p_targets[1]"),
        ([S1, {"tool": "pg_dump", "database": "elsewhere"}], "p_targets[1].database"),
    ],
)
def test_a_bad_target_in_a_workers_list_is_refused_naming_its_place_and_writes_nothing(db, login, targets, param):
    """Each of a worker's targets is checked, before anything is written, and the error names
    its place in p_targets (not the p_target of another function). enqueue_retention_after_backup
    checks them all, also when the job is unknown or an earlier target matches."""
    worker = login(WORKER)
    enqueue(worker, DUMPS)
    force(db, "UPDATE pggit.maintenance_jobs SET run_after = now() - interval '1 minute'")
    before = jobs(db)
    claim = refused(worker, "SELECT * FROM pggit.claim_maintenance_job('host-a/1', %s)", (json.dumps(targets),))
    assert claim.pgcode == "22023" and claim.diag.column_name == param, claim.pgerror
    backup = make(db, scalar(db, "SELECT now()") - timedelta(hours=1))
    job_id = scalar(db, "SELECT job_id::text FROM pggit.backup_jobs WHERE backup_id = %s", (backup,))
    for job in (job_id, "00000000-0000-0000-0000-000000000000"):
        after = refused(
            worker, "SELECT pggit.enqueue_retention_after_backup(%s, %s)", (job, json.dumps([DUMPS, *targets]))
        )
        assert after.pgcode == "22023" and after.diag.column_name.startswith("p_targets["), after.pgerror
    assert jobs(db) == before


def test_a_finish_with_an_empty_error_and_a_request_naming_no_backup_are_refused(db, login):
    """A failed run says why (an empty error would show a failed job with no reason), and a
    request made for a backup names one that exists."""
    worker = login(WORKER)
    job = enqueue(worker)
    held = take(worker)
    error = refused(
        worker, "SELECT pggit.finish_maintenance_job(%s, %s, '{}', ' ')", (held["job_id"], held["claim_token"])
    )
    assert error.pgcode == "22023" and error.diag.column_name == "p_error"
    assert jobs(db)[0]["status"] == "running"
    unknown = "00000000-0000-0000-0000-000000000000"
    error = refused(worker, "SELECT pggit.enqueue_retention(%s, 'backup', NULL, %s)", (json.dumps(S1), unknown))
    assert error.pgcode == "22023" and error.diag.column_name == "p_backup_id"
    assert [row["job_id"] for row in jobs(db)] == [job]


def test_the_summary_of_a_run_that_marked_thousands_of_backups_is_recorded(db, login):
    """A first run over a year of hourly dumps marks thousands of backups: the summary's lists
    (and the removal errors, up to 8 KiB each) outgrow the 256 KiB finish_maintenance_job takes.
    The worker records it shortened, with the counts, rather than have the call refused (which
    left the job running until its lease ran out, run again, and failed after five)."""
    worker = Queue(login(WORKER))
    enqueue(worker.conn)
    job = worker.claim_maintenance("host-a/1", json.dumps([DUMPS]), 60)
    ids = [str(uuid.uuid4()) for _ in range(9000)]
    summary = {"marked_expired": ids, "removed": ids, "removal_failed": {ids[0]: "x" * 8192}}
    assert worker.finish_maintenance(job, fit_summary(summary), None)
    (row,) = query(db, "SELECT status, summary FROM pggit.maintenance_jobs")
    assert row["status"] == "completed"
    assert row["summary"]["counts"] == {"marked_expired": 9000, "removed": 9000, "removal_failed": 1}
    assert len(json.dumps(row["summary"]).encode()) <= 256 * 1024


class _Link:
    """The worker side a RetentionJobs talks to (its supervisor pipe), for a tick in the test."""

    name = "host-a/1"
    aborting = False

    def beat(self) -> None:
        pass

    def tell(self, *words) -> None:
        pass


def test_a_slot_the_database_refuses_costs_the_worker_neither_its_connection_nor_its_tick(
    db, dsn, login_as, tmp_path, caplog
):
    """A host whose clock runs more than five minutes ahead of the database's sends slots the
    database refuses (22023: in the future). That refusal went up as a database error: the
    worker dropped its connection and reconnected at every schedule_interval, and the tick's
    claim never ran. Now it is a warning naming the target and the slot; the tick goes on."""
    conn, _ = login_as(WORKER)
    path = write_config(
        tmp_path,
        {
            "dsn": dsn,
            "worker_id": "host-a",
            "tools": {"pg_dump": {}},
            "retention": [{"target": {"tool": "pg_dump"}, "keep_last": 2, "schedule": "* * * * *"}],
        },
    )
    ahead = RetentionJobs(
        load_config(path, {}, check_paths=False), _Link(), clock=lambda: datetime.now(UTC) + timedelta(minutes=10)
    )
    enqueue(db, S1)  # not this host's target: nothing to claim
    with caplog.at_level(logging.WARNING, logger="pggit.retention"):
        assert ahead.tick(Queue(conn)) is False
    assert not conn.closed and jobs(db)[0]["reason"] == "requested" and len(jobs(db)) == 1
    assert "retention slot refused" in caplog.text and "p_slot_time" in caplog.text


def test_a_target_held_by_a_login_with_no_role_names_that_login_when_its_job_is_put_back(db, dsn, login_as, tmp_path):
    """Any login that can connect can take any advisory lock, also a target's remover lock (016):
    the target's jobs then go back to the queue every 30 s, for ever. That cannot be prevented
    with an advisory lock, but it must not pass for "another host is applying it": the job's
    error names the session holding the lock, for a DBA to end."""
    conn, _ = login_as(WORKER)
    squatter, squatter_name = login_as()
    key = scalar(
        db,
        "SELECT hashtextextended('pggit-retention-run:' || pggit._require_retention_target(%s)::text, 0)",
        (json.dumps(DUMPS),),
    )
    scalar(squatter, "SELECT pg_advisory_lock(%s)", (key,))
    path = write_config(
        tmp_path,
        {"dsn": dsn, "worker_id": "host-a", "tools": {"pg_dump": {}}, "retention": [{"target": DUMPS, "keep_last": 2}]},
    )
    retention = RetentionJobs(load_config(path, {}, check_paths=False), _Link())
    retention.next_slot_check = float("inf")  # no slot: only the request below
    job = enqueue(db)
    assert retention.tick(Queue(conn)) is True
    (row,) = jobs(db)
    assert (row["job_id"], row["status"]) == (job, "queued")
    assert squatter_name in row["error"] and "pid" in row["error"], row["error"]


def test_two_claims_racing_over_an_expired_job_and_a_queued_one_of_a_target_run_one(db, login, login_as):
    """A target has a running job whose lease expired (its worker died) and a queued one (asked
    for meanwhile). One claim takes the expired job, in a transaction not yet committed; a
    second claim, skipping that locked row, must not take the queued job beside it: the target
    would have two running jobs (the README's "one running job per target")."""
    worker = login(WORKER)
    enqueue(worker)
    take(worker, "host-a/1")
    force(db, "UPDATE pggit.maintenance_jobs SET lease_expires_at = now() - interval '1 second'")
    enqueue(worker)  # the queued one
    first, _ = login_as(WORKER)
    first.autocommit = False
    try:
        assert take(first, "host-b/1")["attempts"] == 2, "the expired job is the older: taken first"
        assert take(login(WORKER), "host-c/1") is None, "not the queued job while the target's other one runs"
    finally:
        first.commit()
    assert sorted(row["status"] for row in jobs(db)) == ["queued", "running"]


def test_pruning_takes_notifications_that_ended_long_ago_and_keeps_those_still_owed(db, login):
    worker = login(WORKER)
    made = {}
    for name, delivered, dead, age in (
        ("delivered-old", True, False, 40),
        ("dead-old", False, True, 40),
        ("owed-old", False, False, 40),
        ("delivered-new", True, False, 1),
    ):
        event = scalar(
            db,
            "INSERT INTO pggit.notification_events (event_id, job_id, backup_id, event, payload, created_at)"
            " VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'completed', '{}',"
            " now() - make_interval(days => %s)) RETURNING event_id::text",
            (age,),
        )
        db.cursor().execute(
            "INSERT INTO pggit.notification_deliveries (event_id, endpoint, url, delivered_at, dead_at)"
            " VALUES (%s, 'webhook_url', 'https://hooks.example.com/x',"
            " CASE WHEN %s THEN now() - make_interval(days => %s) END,"
            " CASE WHEN %s THEN now() - make_interval(days => %s) END)",
            (event, delivered, age, dead, age),
        )
        made[name] = event
    assert scalar(worker, "SELECT pggit.prune_finished_jobs(%s)", (30 * 86400,)) == 2
    left = {row["event_id"] for row in query(db, "SELECT event_id::text FROM pggit.notification_events")}
    assert left == {made["owed-old"], made["delivered-new"]}
