"""The notification outbox (schema/018): a notification is written in the transaction that ends
the job, only when one is owed (the guide's webhook_url / notify_on_success / notify_on_failure,
or an endpoint registered from a config), and the workers claim, lease and record deliveries
through guarded functions. Real worker logins; the HTTP side is tests/unit/test_unit_webhooks.py
and the whole path with real workers tests/service/test_service_notifications.py."""

from __future__ import annotations

import json

import psycopg2
import pytest

from helpers.db import WORKER, query, refused, scalar
from helpers.queue import claim, force, schedule_dump

READER = "pggit_backup_reader"
HOOK = "https://hooks.example.com/services/T000/B000/secret-token"


def options(**given):
    return json.dumps(given)


def finish(conn, row, facts=None):
    return scalar(
        conn,
        "SELECT pggit.finish_backup_job(%s, %s, 'done', %s, '{}')",
        (row["job_id"], row["claim_token"], json.dumps(facts or {})),
    )


def fail(conn, row, retryable=True):
    return scalar(
        conn,
        "SELECT pggit.fail_claimed_backup_job(%s, %s, 'disk full', %s, 1, 1, '{}')",
        (row["job_id"], row["claim_token"], retryable),
    )


def events(conn):
    return query(conn, "SELECT * FROM pggit.notification_events ORDER BY created_at, event_id")


def deliveries(conn):
    return query(conn, "SELECT * FROM pggit.notification_deliveries ORDER BY created_at, endpoint")


def claim_deliveries(conn, worker="w1", limit=10, lease=60, max_attempts=3):
    return query(
        conn,
        "SELECT * FROM pggit.claim_notification_deliveries(%s, %s, %s, %s)",
        (worker, limit, lease, max_attempts),
    )


def record(conn, row, outcome, error=None, max_attempts=3, base=1, cap=1):
    return scalar(
        conn,
        "SELECT pggit.record_notification_delivery(%s, %s, %s, %s, %s, %s, %s)",
        (row["delivery_id"], row["claim_token"], outcome, error, max_attempts, base, cap),
    )


def register(conn, host, endpoints):
    return scalar(conn, "SELECT pggit.register_notification_endpoints(%s, %s)", (host, json.dumps(endpoints)))


def test_a_completed_job_writes_its_webhook_in_the_same_transaction_with_the_backups_facts(db, login):
    worker = login(WORKER)
    backup_id, job_id = schedule_dump(db, options=options(webhook_url=HOOK, notify_on_success=True))
    row = claim(worker)
    worker.autocommit = False
    assert finish(worker, row, {"backup_size": 4096, "compressed_size": 1024, "verified": True})
    assert events(db) == [], "nothing is visible before the job's transaction commits"
    worker.rollback()
    assert events(db) == [] and scalar(db, "SELECT status FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) == (
        "running"
    ), "rolled back with the job's end: the two commit together or not at all"

    assert finish(worker, row, {"backup_size": 4096, "compressed_size": 1024, "verified": True})
    worker.commit()
    [event] = events(db)
    payload = event["payload"]
    assert event["event"] == "completed" and str(event["job_id"]) == str(job_id)
    assert payload["event_id"] == str(event["event_id"]) and payload["backup_id"] == str(backup_id)
    assert payload["status"] == "completed" and payload["tool"] == "pg_dump" and payload["branch"] == "main"
    # written by the finish function after the job row: the deferred trigger sees them
    assert payload["backup_size"] == 4096 and payload["compressed_size"] == 1024 and payload["verified"] is True
    assert payload["duration_seconds"] >= 0 and payload["error"] is None
    [delivery] = deliveries(db)
    assert delivery["endpoint"] == "webhook_url" and delivery["url"] == HOOK and delivery["attempts"] == 0


@pytest.mark.parametrize(
    ("given", "retryable", "owed"),
    [
        ({"webhook_url": HOOK}, False, True),  # notify_on_failure defaults to true with a webhook_url
        ({"webhook_url": HOOK}, True, False),  # a failure that will be retried is no failure yet
        ({"webhook_url": HOOK, "notify_on_failure": False}, False, False),
        ({"webhook_url": HOOK, "notify_on_success": True, "notify_on_failure": False}, False, False),
        ({}, False, False),
    ],
)
def test_a_failure_is_owed_to_the_webhook_only_when_permanent_and_notify_on_failure_holds(
    db, login, given, retryable, owed
):
    worker = login(WORKER)
    schedule_dump(db, options=json.dumps(given))
    assert fail(worker, claim(worker), retryable) == ("will_retry" if retryable else "permanently_failed")
    assert len(deliveries(db)) == (1 if owed else 0)
    if owed:
        [event] = events(db)
        assert event["event"] == "permanently_failed" and event["payload"]["error"] == "disk full"


def test_a_success_without_notify_on_success_writes_nothing(db, login):
    worker = login(WORKER)
    schedule_dump(db, options=options(webhook_url=HOOK))
    assert finish(worker, claim(worker))
    assert events(db) == [] and deliveries(db) == []


def test_config_endpoints_get_the_events_they_registered_for_any_job(db, login):
    worker = login(WORKER)
    assert (
        register(
            worker, "host-a", [{"name": "oncall", "url": "http://alerts.example/x", "events": ["permanently_failed"]}]
        )
        == 1
    )
    assert (
        register(
            worker,
            "host-a",
            [
                {"name": "oncall", "url": "http://alerts.example/x", "events": ["permanently_failed"]},
                {"name": "audit", "url": "http://audit.example/y", "events": ["completed", "will_retry", "cancelled"]},
            ],
        )
        == 2
    )
    schedule_dump(db)
    assert fail(worker, claim(worker), True) == "will_retry"
    force(db, "UPDATE pggit.backup_jobs SET next_retry_at = now()")
    assert fail(worker, claim(worker), False) == "permanently_failed"
    _, cancelled = schedule_dump(db, schema="public")
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (cancelled,))
    got = [(e["event"], d["endpoint"]) for e in events(db) for d in deliveries(db) if d["event_id"] == e["event_id"]]
    assert got == [("will_retry", "audit"), ("permanently_failed", "oncall"), ("cancelled", "audit")]

    assert (
        register(worker, "host-a", [{"name": "audit", "url": "http://audit.example/z", "events": ["completed"]}]) == 1
    )
    assert [(r["endpoint_name"], r["url"]) for r in query(db, "SELECT * FROM pggit.notification_endpoints")] == [
        ("audit", "http://audit.example/z")
    ], "a name the host no longer lists goes; a changed URL replaces the old one"


@pytest.mark.parametrize(
    ("endpoints", "param"),
    [
        ([{"name": "x", "url": "ftp://a/b", "events": ["completed"]}], "p_endpoints[].url"),
        ([{"name": "x", "url": "http://a/b", "events": ["finished"]}], "p_endpoints[].events"),
        ([{"name": "x", "url": "http://a/b", "events": []}], "p_endpoints[].events"),
        ([{"name": "webhook_url", "url": "http://a/b", "events": ["completed"]}], "p_endpoints[].name"),
        ([{"name": "x", "url": "http://a", "events": ["completed"], "secret": "s"}], "p_endpoints[].'secret'"),
        ({"name": "x"}, "p_endpoints"),
    ],
)
def test_registering_bad_endpoints_names_the_parameter_and_writes_nothing(db, login, endpoints, param):
    worker = login(WORKER)
    register(worker, "host-a", [{"name": "kept", "url": "http://kept.example/", "events": ["completed"]}])
    error = refused(worker, "SELECT pggit.register_notification_endpoints('host-a', %s)", (json.dumps(endpoints),))
    assert error.pgcode == "22023" and error.diag.column_name == param, error
    assert error.diag.message_hint
    assert scalar(db, "SELECT string_agg(endpoint_name, ',') FROM pggit.notification_endpoints") == "kept"


def test_a_claim_is_leased_to_its_login_and_a_killed_workers_claim_comes_back(db, login):
    host_a, host_b = login(WORKER), login(WORKER)
    schedule_dump(db, options=options(webhook_url=HOOK, notify_on_success=True))
    assert finish(host_a, claim(host_a))
    [first] = claim_deliveries(host_a, "host-a/1", lease=30)
    assert first["url"] == HOOK and first["attempt"] == 1 and first["payload"]["event"] == "completed"
    assert claim_deliveries(host_b, "host-b/1") == [], "leased: nobody else claims it meanwhile"
    assert record(host_b, first, "delivered") is None, "another login cannot record it, even with the token"
    forged = {**first, "claim_token": "0" * 64}
    assert record(host_a, forged, "delivered") is None

    force(db, "UPDATE pggit.notification_deliveries SET lease_expires_at = now() - interval '1 second'")
    [again] = claim_deliveries(host_b, "host-b/1")  # host-a was killed while posting
    assert again["delivery_id"] == first["delivery_id"] and again["attempt"] == 2
    assert record(host_a, first, "delivered") is None, "the expired claim's late report changes nothing"
    assert record(host_b, again, "delivered") == "delivered"
    assert record(host_b, again, "delivered") is None, "recorded once"
    [status] = query(db, "SELECT * FROM pggit.notification_status")
    assert status["state"] == "delivered" and status["attempts"] == 2 and status["worker_id"] == "host-b/1"


def test_failed_attempts_back_off_and_are_dead_lettered_after_max_attempts(db, login):
    worker = login(WORKER)
    schedule_dump(db, options=options(webhook_url=HOOK, notify_on_success=True))
    assert finish(worker, claim(worker))
    delays = []
    for attempt in (1, 2):
        [row] = claim_deliveries(worker, max_attempts=3)
        assert row["attempt"] == attempt
        assert record(worker, row, "failed", "HTTP 500", base=10, cap=15) == "retry"
        delay = scalar(db, "SELECT extract(epoch FROM next_attempt_at - now()) FROM pggit.notification_deliveries")
        delays.append(delay)
        assert claim_deliveries(worker) == [], "not due before its backoff"
        force(db, "UPDATE pggit.notification_deliveries SET next_attempt_at = now()")
    assert 5 <= delays[0] <= 10 and 7.5 <= delays[1] <= 15, f"base 10 then capped at 15, half of it jitter: {delays}"
    [row] = claim_deliveries(worker, max_attempts=3)
    assert record(worker, row, "failed", "timed out after 2s", base=10, cap=15) == "dead"
    [status] = query(db, "SELECT * FROM pggit.notification_status")
    assert status["state"] == "dead" and status["last_error"] == "timed out after 2s" and status["attempts"] == 3
    assert claim_deliveries(worker) == []


def test_a_refused_destination_is_dead_at_once_and_a_used_up_expired_claim_too(db, login):
    worker = login(WORKER)
    for schema in (None, "public"):
        schedule_dump(db, schema=schema, options=options(webhook_url=HOOK, notify_on_success=True))
        assert finish(worker, claim(worker))
    first, second = claim_deliveries(worker, max_attempts=1)
    assert record(worker, first, "refused", "host hooks.example.com is not in notifications.allowed_hosts") == "dead"
    force(
        db,
        "UPDATE pggit.notification_deliveries SET lease_expires_at = now() WHERE delivery_id = %s",
        (second["delivery_id"],),
    )
    assert claim_deliveries(worker, max_attempts=1) == []
    states = {
        r["delivery_id"]: (r["state"], r["last_error"]) for r in query(db, "SELECT * FROM pggit.notification_status")
    }
    assert states[first["delivery_id"]][0] == "dead" and "allowed_hosts" in states[first["delivery_id"]][1]
    assert states[second["delivery_id"]] == ("dead", "1 of 1 attempts used up")


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ("SELECT * FROM pggit.claim_notification_deliveries('w', 0)", "p_limit"),
        ("SELECT * FROM pggit.claim_notification_deliveries('w', 5, 0)", "p_lease_seconds"),
        ("SELECT * FROM pggit.claim_notification_deliveries('w', 5, 60, 0)", "p_max_attempts"),
        ("SELECT * FROM pggit.claim_notification_deliveries('bad id', 5)", "p_worker_id"),
        (f"SELECT pggit.record_notification_delivery(gen_random_uuid(), '{'0' * 64}', 'sent')", "p_outcome"),
        (f"SELECT pggit.record_notification_delivery(gen_random_uuid(), '{'0' * 64}', 'failed')", "p_error"),
        (
            f"SELECT pggit.record_notification_delivery(gen_random_uuid(), '{'0' * 64}', 'failed', 'x', 3, 10, 5)",
            "p_backoff_cap",
        ),
        ("SELECT pggit.record_notification_delivery(gen_random_uuid(), 'nope', 'delivered')", "p_claim_token"),
    ],
)
def test_bad_claim_and_record_arguments_name_the_parameter(db, login, call, param):
    error = refused(login(WORKER), call)
    assert error.pgcode == "22023" and error.diag.column_name == param, error


def test_only_workers_claim_and_record_and_readers_see_the_status_without_the_urls_secret(db, login):
    worker, reader = login(WORKER), login(READER)
    schedule_dump(
        db, options=options(webhook_url="https://hooks.example.com:8443/T/secret?k=v", notify_on_success=True)
    )
    assert finish(worker, claim(worker))
    for call in (
        "SELECT * FROM pggit.claim_notification_deliveries('r')",
        "SELECT pggit.register_notification_endpoints('r', '[]')",
        "SELECT * FROM pggit.notification_deliveries",
        "SELECT * FROM pggit.notification_events",
        "SELECT * FROM pggit.notification_endpoints",
    ):
        assert refused(reader, call).pgcode == "42501", call
    [status] = query(reader, "SELECT * FROM pggit.notification_status")
    assert status["destination"] == "https://hooks.example.com:8443" and status["state"] == "pending"
    with pytest.raises(psycopg2.Error):
        worker.cursor().execute("UPDATE pggit.notification_deliveries SET delivered_at = now()")
