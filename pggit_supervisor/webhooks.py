"""One delivery attempt of a notification to one URL, to a destination the config allows.

Why so careful: a webhook URL comes from whoever may schedule a backup (an operator login), and
the worker that posts it sits inside the network next to the databases. So a URL is http(s)
only; its host must be listed in notifications.allowed_hosts (nothing is, until configured); the
name is resolved once and every address it gives is checked: loopback, link-local (169.254/16,
where cloud metadata services answer), private, unspecified, multicast and other non-global
addresses are refused unless that address (or a network holding it) is listed itself; and the
connection goes to the checked address, never through a second lookup (DNS rebinding). A
redirect is not followed (a 3xx is a failed attempt). One deadline covers connecting, sending
and reading the whole response: a timer shuts the socket down when it passes, so a server that
trickles one header line every few seconds cannot hold a worker past it (a socket timeout alone
restarts with every byte).

Each attempt is signed, when a secret is configured: X-Pggit-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256(secret, "<t>.<body>")>, and carries X-Pggit-Event-Id, the idempotency key
(at least once: a receiver may see an event again after a lost answer). README "Notifications"
has a receiver that checks both.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .errors import JobError, invalid, one_line, transient

# what of a response is read (its status decides; the body is only drained, up to this much)
MAX_RESPONSE_BYTES = 64 * 1024
SIGNATURE_HEADER = "X-Pggit-Signature"
EVENT_ID_HEADER = "X-Pggit-Event-Id"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class Allowed:
    """notifications.allowed_hosts, read: host names (lower case), and addresses or networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Allowed:
        names, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def lists_address(self, address: Address) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


@dataclass(frozen=True)
class Destination:
    """A URL that passed the checks, with the one address the connection goes to."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line
    address: str

    @property
    def shown(self) -> str:
        """What logs and errors name: never the path or query, which may carry a token."""
        return f"{self.scheme}://{self.host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _address(text: str) -> Address:
    return ipaddress.ip_address(text.split("%")[0])  # an IPv6 scope (fe80::1%eth0) is no part of it


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _special(address: Address) -> bool:
    """Loopback, link-local, private, unspecified, multicast, reserved, or otherwise not global;
    an IPv6 address carrying an IPv4 one (mapped, or 6to4's 2002::/16, which Python counts as
    global whatever it carries) is judged by the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            return _special(address.sixtofour)
        elif address.is_site_local:  # fec0::/10: deprecated, never global, not in Python's private list
            return True
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    )


def check_destination(url: str, allowed: Allowed, resolve: Resolver = system_resolver) -> Destination | JobError:
    """The destination to connect to, or why not (not retryable: the config must change, except
    a name that does not resolve now, which may later)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        return invalid(f"not a URL: {one_line(exc)}")
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host:
        return invalid(f"only http:// and https:// URLs with a host are posted to, not {scheme or '?'}://")
    if parts.username is not None or parts.password is not None:
        return invalid(f"a URL with credentials is not posted to ({scheme}://{host})")
    shown = f"{scheme}://{host}:{port}"
    literal = _literal(host)
    if host not in allowed.names and not (literal is not None and allowed.lists_address(literal)):
        return invalid(f"host {host} is not in notifications.allowed_hosts ({shown})")
    try:
        found = (
            [literal] if literal is not None else [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
        )
    except (OSError, UnicodeError, ValueError) as exc:
        return transient(f"cannot resolve {host}: {one_line(exc)} ({shown})")
    if not found:
        return transient(f"{host} resolves to no address ({shown})")
    refused = [a for a in found if _special(a) and not allowed.lists_address(a)]
    if refused:
        return invalid(
            f"{host} resolves to {', '.join(map(str, refused))}: loopback, link-local, private or other "
            f"non-public addresses are refused unless listed in notifications.allowed_hosts ({shown})"
        )
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Destination(scheme, host, port, target, str(found[0]))


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Pggit-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def encode(payload: Mapping[str, Any]) -> bytes:
    """The body: compact JSON with sorted keys, so one event always reads the same."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def headers(event_id: str, body: bytes, secret: bytes | None, now: Callable[[], float] = time.time) -> dict[str, str]:
    found = {
        "Content-Type": "application/json",
        "User-Agent": f"pggit-supervisor/{__version__}",
        EVENT_ID_HEADER: event_id,
    }
    if secret:
        found[SIGNATURE_HEADER] = signature(secret, int(now()), body)
    return found


class _Connection(http.client.HTTPConnection):
    """To the checked address, with the URL's host in the Host header."""

    def __init__(self, destination: Destination, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout)
        self.address = destination.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    """To the checked address; the certificate is checked against the URL's host (SNI too)."""

    def __init__(self, destination: Destination, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout, context=ssl.create_default_context())
        self.address = destination.address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


class _Deadline:
    """Shuts the connection's socket down when the deadline passes, whatever it is waiting for;
    until then calls `keepalive` every second (the worker's beat to the supervisor)."""

    def __init__(self, connection: http.client.HTTPConnection, seconds: float, keepalive: Callable[[], None]) -> None:
        self.connection = connection
        self.passed = False
        self.seconds = seconds
        self.keepalive = keepalive
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="webhook-deadline", daemon=True)

    def _watch(self) -> None:
        end = time.monotonic() + self.seconds
        while not self.finished.wait(max(0.0, min(1.0, end - time.monotonic()))):
            if time.monotonic() >= end:
                self._cut()
                return
            self.keepalive()

    def _cut(self) -> None:
        self.passed = True
        sock = self.connection.sock
        if sock is not None:
            try:  # the plain socket's shutdown: an SSL socket's own would race its reader
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> _Deadline:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.finished.set()
        self.thread.join()


def post(
    destination: Destination,
    body: bytes,
    sent_headers: Mapping[str, str],
    timeout: float,
    keepalive: Callable[[], None] = lambda: None,
) -> JobError | None:
    """One attempt: None when the endpoint answered 2xx within `timeout` seconds, else why not."""
    factory = _TLSConnection if destination.scheme == "https" else _Connection
    connection = factory(destination, timeout)
    started = time.monotonic()
    deadline = _Deadline(connection, timeout, keepalive)
    try:
        with deadline:
            connection.request("POST", destination.target, body=body, headers=dict(sent_headers))
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            status = response.status
    # what a bad endpoint can do: refuse or drop the connection, time out, fail TLS (OSError and
    # ssl.SSLError among them), speak garbage (HTTPException), or be cut off by the deadline
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.passed or time.monotonic() - started >= timeout:
            return transient(f"no complete answer within {timeout:g}s ({destination.shown})")
        return transient(f"{type(exc).__name__}: {one_line(exc) or 'connection closed'} ({destination.shown})")
    finally:
        connection.close()
    if deadline.passed:
        return transient(f"no complete answer within {timeout:g}s ({destination.shown})")
    if 300 <= status < 400:
        return transient(f"HTTP {status}: redirects are not followed ({destination.shown})")
    if not 200 <= status < 300:
        return transient(f"HTTP {status} ({destination.shown})")
    return None
