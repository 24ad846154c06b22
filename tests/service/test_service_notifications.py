"""Notifications that cannot be lost, with real supervisors and workers: a local HTTP server (on
127.0.0.1, loopback, so the configs list that address in notifications.allowed_hosts) receives
each notification once per delivery attempt, signed as the README's receiver checks; a 500 and a
timeout are retried; a notification is dead-lettered after max_attempts; a worker SIGKILLed
between its job's completion and the delivery loses nothing; a loopback name not listed is refused;
the config's endpoints hear about every job's chosen events."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from helpers.db import query
from helpers.processes import wait_until
from helpers.service import queue_fake, wait_for_state
from helpers.webhook_server import HANG, SECRET, readme_verify

pytestmark = pytest.mark.supervisor

FAST = {"secret": SECRET.decode(), "backoff_base": 1, "backoff_cap": 1, "timeout": 2}


def deliveries(db, job_id: str) -> list[dict]:
    return query(db, "SELECT * FROM pggit.notification_status WHERE job_id = %s ORDER BY created_at", (job_id,))


def wait_for_delivery(db, job_id: str, state: str, timeout: float = 30) -> dict:
    def reached():
        found = deliveries(db, job_id)
        return found[0] if found and found[0]["state"] == state else None

    try:
        return wait_until(reached, timeout, f"the notification of job {job_id} {state}")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}: {deliveries(db, job_id)}") from None


def hook(url: str, **more) -> str:
    return json.dumps({"webhook_url": url, "notify_on_success": True, **more})


def test_a_completed_job_is_delivered_once_signed_as_the_readme_receiver_checks(
    make_service, db, tmp_path, webhook_endpoint
):
    server = webhook_endpoint(204)
    make_service(workers=1, notifications={"allowed_hosts": ["127.0.0.1"], **FAST}).start()
    backup_id, job_id, _ = queue_fake(db, tmp_path, tag="once", metadata=hook(server.url("/hook?token=t1")))
    wait_for_state(db, job_id, "completed")
    status = wait_for_delivery(db, job_id, "delivered")

    assert status["attempts"] == 1 and len(server.requests) == 1, "one attempt, one request"
    [request] = server.requests
    assert request["path"] == "/hook?token=t1" and status["destination"].endswith(f":{server.port}")
    assert readme_verify()(SECRET, request["headers"], request["body"])
    payload = json.loads(request["body"])
    assert request["headers"]["X-Pggit-Event-Id"] == payload["event_id"] == str(status["event_id"])
    assert (payload["event"], payload["job_id"], payload["backup_id"]) == ("completed", job_id, backup_id)
    assert payload["tool"] == "custom" and payload["branch"] == "main" and payload["error"] is None


def test_a_500_and_a_timeout_are_retried_with_the_same_event_id(make_service, db, tmp_path, webhook_endpoint):
    server = webhook_endpoint(500, HANG, 204)
    service = make_service(workers=1, notifications={"allowed_hosts": ["127.0.0.1"], **FAST}).start()
    _, job_id, _ = queue_fake(db, tmp_path, tag="retry", metadata=hook(server.url()))
    status = wait_for_delivery(db, job_id, "delivered", timeout=40)

    assert status["attempts"] == 3 and len(server.requests) == 3
    assert len({r["headers"]["X-Pggit-Event-Id"] for r in server.requests}) == 1, "one idempotency key"
    assert all(readme_verify()(SECRET, r["headers"], r["body"]) for r in server.requests), "each attempt signed"
    service.wait_for_log(r"notification not delivered, will retry: HTTP 500")
    service.wait_for_log(r"notification not delivered, will retry: no complete answer within 2s")


def test_after_max_attempts_the_notification_is_dead_lettered(make_service, db, tmp_path, webhook_endpoint):
    server = webhook_endpoint(500)
    settings = {"allowed_hosts": ["127.0.0.1"], **FAST, "max_attempts": 2}
    service = make_service(workers=1, notifications=settings).start()
    _, job_id, _ = queue_fake(db, tmp_path, tag="dead", metadata=hook(server.url()))
    status = wait_for_delivery(db, job_id, "dead")

    assert status["attempts"] == 2 and len(server.requests) == 2
    assert status["last_error"].startswith("HTTP 500") and status["dead_at"] is not None
    service.wait_for_log(r"notification dead-lettered: HTTP 500.* attempt=2/2")


def test_a_worker_killed_between_its_jobs_completion_and_the_delivery_loses_nothing(
    make_service, db, tmp_path, webhook_endpoint
):
    """The worker's next job is ready, so it claims that before it is idle again: the first job
    is completed, its notification waits undelivered, and the worker is SIGKILLed then. The
    worker that replaces it runs the second job again (5 s) and then, idle, delivers."""
    server = webhook_endpoint(204)
    _, first, _ = queue_fake(db, tmp_path, tag="first", metadata=hook(server.url()))
    _, second, _ = queue_fake(db, tmp_path, "--sleep", "5", tag="second")
    service = make_service(workers=1, notifications={"allowed_hosts": ["127.0.0.1"], **FAST}).start()
    wait_for_state(db, first, "completed")
    wait_for_state(db, second, "in_progress")
    [waiting] = deliveries(db, first)
    assert (waiting["state"], waiting["attempts"]) == ("pending", 0) and server.requests == []

    [worker] = service.workers()
    os.kill(worker.pid, signal.SIGKILL)
    status = wait_for_delivery(db, first, "delivered")
    assert status["attempts"] == 1 and len(server.requests) == 1
    assert json.loads(server.requests[0]["body"])["job_id"] == first
    assert worker.pid not in [w.pid for w in service.workers()], "delivered by the worker that replaced it"


def test_a_loopback_name_not_listed_as_an_address_is_refused_and_dead_at_once(
    make_service, db, tmp_path, webhook_endpoint
):
    server = webhook_endpoint(204)
    make_service(workers=1, notifications={"allowed_hosts": ["localhost"], **FAST}).start()
    url = server.url(host="localhost")
    _, job_id, _ = queue_fake(db, tmp_path, tag="loopback", metadata=hook(url))
    status = wait_for_delivery(db, job_id, "dead")

    assert status["attempts"] == 1 and "non-public addresses are refused" in status["last_error"]
    assert server.requests == [], "nothing was sent"


def test_a_config_endpoint_hears_every_permanent_failure_without_a_webhook_url(
    make_service, db, tmp_path, webhook_endpoint
):
    oncall = webhook_endpoint(204)
    endpoints = [{"name": "oncall", "url": oncall.url("/oncall"), "events": ["permanently_failed"]}]
    make_service(workers=1, notifications={"allowed_hosts": ["127.0.0.1"], "endpoints": endpoints, **FAST}).start()
    wait_until(
        lambda: query(db, "SELECT * FROM pggit.notification_endpoints WHERE endpoint_name = 'oncall'"),
        20,
        "the host's endpoints registered",
    )
    _, ok, _ = queue_fake(db, tmp_path, tag="fine")
    _, broken, _ = queue_fake(db, tmp_path, "--exit", "3", tag="broken", max_attempts=1)
    wait_for_state(db, ok, "completed")
    status = wait_for_delivery(db, broken, "delivered")

    assert status["endpoint"] == "oncall" and deliveries(db, ok) == [], "only the events it asked for"
    [request] = oncall.requests
    payload = json.loads(request["body"])
    assert request["path"] == "/oncall" and payload["event"] == "permanently_failed" and payload["job_id"] == broken
    assert payload["error"], "the job's error"


def test_an_endpoint_that_never_answers_holds_no_job_past_one_attempts_timeout(
    make_service, db, tmp_path, webhook_endpoint
):
    server = webhook_endpoint(HANG)
    service = make_service(workers=1, notifications={"allowed_hosts": ["127.0.0.1"], **FAST}).start()
    _, first, _ = queue_fake(db, tmp_path, tag="hung", metadata=hook(server.url()))
    wait_for_state(db, first, "completed")
    wait_until(lambda: server.requests, 20, "the first attempt, which the endpoint never answers")
    queued = time.monotonic()
    _, second, _ = queue_fake(db, tmp_path, tag="next")
    wait_for_state(db, second, "completed", timeout=20)
    waited = time.monotonic() - queued
    # one attempt (timeout 2 s) may be under way when the job is queued; the job then runs (~1 s)
    assert waited < 2 + 4, f"the job waited {waited:.1f} s behind a hung endpoint\n" + service.log()
    assert deliveries(db, first)[0]["state"] in ("pending", "sending"), "still owed, retried later"
