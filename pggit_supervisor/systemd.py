"""sd_notify for the supervisor (only the supervisor talks to systemd). Without NOTIFY_SOCKET
every call is a silent no-op, so the same code runs under systemd, in a terminal and in tests."""

from __future__ import annotations

import os
from collections.abc import Mapping

import sdnotify


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID")
        timeout_usec = int(usec) if usec.isdigit() else 0
        watched = timeout_usec > 0 and (not pid or pid == str(os.getpid()))
        # systemd's advice: ping at half the timeout
        self.watchdog_interval: float | None = timeout_usec / 2e6 if watched else None

    def send(self, *assignments: str) -> None:
        if self._notifier is not None:
            # sdnotify encodes latin-1: keep messages ASCII
            text = "\n".join(assignments).encode("ascii", "replace").decode()
            self._notifier.notify(text)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def extend_start(self, seconds: float) -> None:
        """Before READY: systemd's start timeout (TimeoutStartSec, 90 s by default) is pushed
        `seconds` on, so a service waiting in an orderly way for its database is not killed."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")
