"""One delivery attempt (webhooks.py) against real local HTTP servers: the destination checks
(allowed hosts, non-public addresses, the one checked address connected to), the signature as the
README's receiver checks it, failures as values, no redirect followed, and one deadline that a
server trickling its headers cannot stretch. Real sockets, real name resolution where the system
has it (localhost); a resolver is passed in only to give a name the answer a test needs."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time

import pytest

from helpers.webhook_server import SECRET, readme_verify
from pggit_supervisor import webhooks
from pggit_supervisor.errors import JobError

LOCAL = webhooks.Allowed.parse(["127.0.0.1"])


def destination(url: str, allowed: webhooks.Allowed = LOCAL, **kwargs) -> webhooks.Destination:
    found = webhooks.check_destination(url, allowed, **kwargs)
    assert isinstance(found, webhooks.Destination), found
    return found


def send(url: str, payload=None, timeout: float = 5.0, secret: bytes | None = SECRET, **kwargs):
    body = webhooks.encode(payload or {"event": "completed", "job_id": "j1"})
    return webhooks.post(destination(url), body, webhooks.headers("event-1", body, secret), timeout, **kwargs)


def test_a_delivery_is_one_request_with_a_signature_the_readme_receiver_accepts(webhook_endpoint):
    server = webhook_endpoint(204)
    payload = {"event": "completed", "backup_id": "b1", "backup_size": 4096}
    assert send(f"http://127.0.0.1:{server.port}/hooks/x?token=abc", payload) is None
    [request] = server.requests
    assert request["path"] == "/hooks/x?token=abc" and json.loads(request["body"]) == payload
    assert request["headers"]["X-Pggit-Event-Id"] == "event-1"
    assert request["headers"]["Content-Type"] == "application/json"
    verify = readme_verify()
    assert verify(SECRET, request["headers"], request["body"])
    assert not verify(b"another secret entirely", request["headers"], request["body"])
    assert not verify(SECRET, request["headers"], request["body"] + b" "), "a changed body fails"
    stale = {
        **request["headers"],
        "X-Pggit-Signature": webhooks.signature(SECRET, int(time.time()) - 3600, request["body"]),
    }
    assert not verify(SECRET, stale, request["body"]), "an old signature fails: no replay"


def test_without_a_secret_nothing_is_signed(webhook_endpoint):
    server = webhook_endpoint(200)
    assert send(f"http://127.0.0.1:{server.port}/", secret=None) is None
    assert "X-Pggit-Signature" not in server.requests[0]["headers"]


@pytest.mark.parametrize("status", [500, 404, 429])
def test_an_answer_other_than_2xx_is_a_failed_attempt_that_may_be_retried(webhook_endpoint, status):
    server = webhook_endpoint(status)
    error = send(f"http://127.0.0.1:{server.port}/secret-path")
    assert isinstance(error, JobError) and error.retryable
    assert error.message == f"HTTP {status} (http://127.0.0.1:{server.port})", "names no path: it may hold a token"


def test_a_redirect_is_not_followed(webhook_endpoint):
    elsewhere = webhook_endpoint(204)

    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{elsewhere.port}/stolen")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server = webhook_endpoint(redirect)
    error = send(f"http://127.0.0.1:{server.port}/")
    assert isinstance(error, JobError) and error.retryable and "redirects are not followed" in error.message
    assert len(server.requests) == 1 and elsewhere.requests == []


def test_a_server_that_trickles_its_headers_is_cut_off_at_the_one_deadline():
    """The issue's case, scaled down: a header line every 0.5 s for 8 s held post() for all of
    it, as each line restarted the socket timeout; the deadline (1.5 s) now covers everything."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for n in range(16):
            if stop.wait(0.5):
                break
            conn.sendall(f"X-Slow-{n}: y\r\n".encode())
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    beats = []
    started = time.monotonic()
    try:
        error = send(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=1.5, keepalive=lambda: beats.append(1))
    finally:
        stop.set()
        listener.close()
    elapsed = time.monotonic() - started
    assert isinstance(error, JobError) and error.retryable and "no complete answer within 1.5s" in error.message
    assert 1.4 <= elapsed < 2.5, f"cut off at the deadline, not after {elapsed:.1f}s"
    assert beats, "the worker kept telling the supervisor it lives while it waited"


def test_a_server_that_never_answers_is_cut_off_too_and_garbage_is_a_failed_attempt():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        error = send(
            f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=1.0
        )  # accepted by the backlog, never read
        assert isinstance(error, JobError) and "no complete answer within 1s" in error.message
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()

    garbage = socket.create_server(("127.0.0.1", 0))

    def answer():
        conn, _ = garbage.accept()
        conn.recv(65536)
        conn.sendall(b"NOT-HTTP garbage\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    error = send(f"http://127.0.0.1:{garbage.getsockname()[1]}/")
    garbage.close()
    assert isinstance(error, JobError) and error.retryable


def test_a_refused_connection_is_a_failed_attempt():
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    error = send(f"http://127.0.0.1:{port}/")
    assert isinstance(error, JobError) and error.retryable and "ConnectionRefusedError" in error.message


@pytest.mark.parametrize(
    ("url", "allowed", "problem"),
    [
        ("ftp://hooks.example.com/x", ["hooks.example.com"], "only http:// and https://"),
        ("http://hooks.example.com/x", [], "not in notifications.allowed_hosts"),
        ("http://other.example.com/x", ["hooks.example.com"], "not in notifications.allowed_hosts"),
        ("http://10.0.0.5/x", ["10.0.0.6"], "not in notifications.allowed_hosts"),
        ("http://u:p@hooks.example.com/x", ["hooks.example.com"], "credentials"),
    ],
)
def test_a_destination_the_config_does_not_allow_is_refused_for_good(url, allowed, problem):
    found = webhooks.check_destination(url, webhooks.Allowed.parse(allowed), resolve=lambda *_: ["93.184.216.34"])
    assert isinstance(found, JobError) and not found.retryable and problem in found.message


def test_localhost_resolves_to_loopback_which_is_refused_unless_the_address_is_listed(webhook_endpoint):
    server = webhook_endpoint(204)
    url = f"http://localhost:{server.port}/"
    found = webhooks.check_destination(url, webhooks.Allowed.parse(["localhost"]))  # the system's resolver
    assert isinstance(found, JobError) and not found.retryable and "non-public addresses are refused" in found.message
    assert server.requests == []
    allowed = webhooks.Allowed.parse(["localhost", "127.0.0.0/8", "::1"])
    found = webhooks.check_destination(url, allowed, resolve=lambda *_: ["127.0.0.1"])
    assert isinstance(found, webhooks.Destination) and found.address == "127.0.0.1"


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        # 6to4 (2002::/16) carries an IPv4 address a relay or a local 6to4 interface reaches:
        # the metadata service and loopback through it; fec0::/10 is the old site-local range
        "2002:a9fe:a9fe::1",
        "2002:7f00:1::1",
        "2002:a00:1::1",
        "fec0::1",
    ],
)
def test_every_non_public_address_a_name_resolves_to_is_refused(address):
    found = webhooks.check_destination(
        "https://hooks.example.com/x", webhooks.Allowed.parse(["hooks.example.com"]), resolve=lambda *_: [address]
    )
    assert isinstance(found, JobError) and not found.retryable and str(ipaddress.ip_address(address)) in found.message
    listed = webhooks.Allowed.parse(["hooks.example.com", address])
    assert isinstance(
        webhooks.check_destination("https://hooks.example.com/x", listed, resolve=lambda *_: [address]),
        webhooks.Destination,
    )


def test_one_bad_address_among_the_answers_refuses_the_name():
    found = webhooks.check_destination(
        "http://hooks.example.com/",
        webhooks.Allowed.parse(["hooks.example.com"]),
        resolve=lambda *_: ["93.184.216.34", "169.254.169.254"],
    )
    assert isinstance(found, JobError) and "169.254.169.254" in found.message


def test_the_connection_goes_to_the_checked_address_with_the_urls_host_and_no_second_lookup(webhook_endpoint):
    """hooks.test resolves nowhere but through the resolver given: the request still arrives, at
    the address that resolver returned, so the post made no lookup of its own (no rebinding)."""
    server = webhook_endpoint(204)
    lookups = []

    def resolve(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    allowed = webhooks.Allowed.parse(["hooks.test", "127.0.0.1"])
    target = destination(f"http://hooks.test:{server.port}/in", allowed, resolve=resolve)
    body = webhooks.encode({"event": "completed"})
    assert webhooks.post(target, body, webhooks.headers("e", body, None), 5.0) is None
    assert lookups == ["hooks.test"] and server.requests[0]["headers"]["Host"] == f"hooks.test:{server.port}"


def test_a_name_that_does_not_resolve_may_later():
    def fail(*_):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    found = webhooks.check_destination("http://hooks.example.com/", webhooks.Allowed.parse(["hooks.example.com"]), fail)
    assert isinstance(found, JobError) and found.retryable and "cannot resolve hooks.example.com" in found.message
