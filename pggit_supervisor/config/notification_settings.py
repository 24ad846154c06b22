"""The notifications section of the declaration (settings.py puts it in ROOT; kept apart only so
that neither file grows past a reader's page count). What it accepts is what schema/018's
pggit.register_notification_endpoints accepts, and the guide's webhook_url rule of schema/003."""

from __future__ import annotations

import re

from .kinds import Derived, Integer, ListOf, Name, Number, Path, Secret, Section, Setting

ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # as pggit.notification_endpoints

# What pggit.register_notification_endpoints accepts (schema/018): the events of a job's ending,
# and a URL as the guide's webhook_url is checked (003)
NOTIFICATION_EVENTS = ("completed", "will_retry", "permanently_failed", "cancelled")
WEBHOOK_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~:/?#@!$&()*+,;=%-]*)?")
ALLOWED_HOST = re.compile(r"[A-Za-z0-9_.:\[\]/-]{1,253}")
ENDPOINT = Section(
    "endpoint",
    "a URL that hears about the chosen events of every job",
    (
        Setting(
            "name",
            Name(
                ENDPOINT_NAME,
                "be 1-63 letters, digits or _.- starting with a letter or digit, not webhook_url",
                refused=("webhook_url",),
            ),
            "the endpoint's name in pggit.notification_status, the same on every host that carries it",
        ),
        Setting(
            "url",
            Name(WEBHOOK_URL, "be an http:// or https:// URL without spaces or quotes", allowed="an http(s) URL"),
            "where the notifications are posted; its host must be in allowed_hosts",
        ),
        Setting(
            "events",
            ListOf(
                Name(
                    re.compile("|".join(NOTIFICATION_EVENTS)),
                    "be an event name",
                    allowed=", ".join(NOTIFICATION_EVENTS),
                ),
                "be a non-empty list of event names",
                "a non-empty list of " + ", ".join(NOTIFICATION_EVENTS),
            ),
            "the job endings it is sent",
            ("permanently_failed",),
        ),
    ),
)
NOTIFICATIONS = Section(
    "notifications",
    "job notifications, written with the job's end and delivered by idle workers until they arrive",
    (
        Setting(
            "allowed_hosts",
            ListOf(
                Name(ALLOWED_HOST, "be a host name, an IP address or a network"),
                "be a non-empty list of host names, addresses or networks",
                "host names, IP addresses or networks (10.0.0.0/8)",
            ),
            "the only hosts notifications are posted to; a non-public address only when it is listed itself",
            Derived("none: no notification is posted until hosts are listed"),
        ),
        Setting(
            "secret",
            Secret(16, 256),
            "the HMAC-SHA256 key of the X-Pggit-Signature header",
            Derived("none: notifications are not signed"),
            null_is_default=True,
        ),
        Setting(
            "secret_file",
            Path("an absolute path to a file holding the secret"),
            "a file holding the secret instead (its first line)",
            Derived("none"),
            null_is_default=True,
        ),
        Setting(
            "endpoints",
            ListOf(
                None,
                "be a non-empty list of endpoints",
                "a list of mappings of " + ", ".join(ENDPOINT.keys()),
                ENDPOINT,
            ),
            "URLs that hear about every job's chosen events, besides each backup's own webhook_url",
            Derived("none"),
        ),
        Setting("max_attempts", Integer(1, 1000, unit=""), "attempts per notification before it is dead-lettered", 10),
        Setting("backoff_base", Integer(1, 86400), "seconds before the second attempt; the delay doubles", 30),
        Setting("backoff_cap", Integer(1, 604800), "cap on the delay between attempts, at least backoff_base", 3600),
        Setting(
            "timeout",
            Number(0.5, 300),
            "seconds one attempt may take in all: connecting, sending and reading the whole answer",
            10.0,
        ),
    ),
)

__all__ = ["ENDPOINT", "NOTIFICATIONS", "NOTIFICATION_EVENTS", "WEBHOOK_URL"]
