"""PostgreSQL as a job's tools and its adapters reach it: the service DSN as PG* variables
for a tool, and a session whose long queries keep the worker alive.

Why a session of our own for long queries: a worker that says nothing for worker_timeout is
killed by the supervisor, and a row count of a large table (or one waiting for a lock) can
run for minutes inside a single psycopg2 call. The session's connection is asynchronous: each
query is sent, then waited for in short polls, and between polls the job's checkpoint renews
the lease; when the checkpoint says stop (Stopped), the query is cancelled on the server and
the connection closed, so no backend keeps working for a job that ended.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE, cursor, parse_dsn

# libpq connection keywords and the environment variables that carry them to a tool, so that
# no password ever appears on a command line (visible in ps to every local user).
_LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING",
    "application_name": "PGAPPNAME",
}
# What proves who the service is, as opposed to where it connects: a custom command gets these
# only when its allowed_commands entry says pass_credentials (a service file can hold a password).
CREDENTIAL_ENV = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSSLCERT", "PGSSLKEY")
# the longest a session waits without calling its checkpoint (the worker's tick wants 1 s)
POLL_SECONDS = 0.5


def libpq_env(dsn: str, dbname: str | None = None, *, credentials: bool = True) -> dict[str, str]:
    """The service DSN as PG* variables for a tool (and PGDATABASE = dbname if given);
    credentials=False leaves out everything in CREDENTIAL_ENV."""
    env = {_LIBPQ_ENV[key]: value for key, value in parse_dsn(dsn).items() if key in _LIBPQ_ENV}
    if not credentials:
        env = {name: value for name, value in env.items() if name not in CREDENTIAL_ENV}
    if dbname is None:
        dbname = parse_dsn(dsn).get("dbname")
    if dbname:
        env["PGDATABASE"] = dbname
    return env


class TickingSession:
    """A connection whose queries call `checkpoint` at least every POLL_SECONDS while they run.
    It is in autocommit mode (psycopg2's asynchronous connections are): a caller that needs a
    transaction sends BEGIN itself. Close it (or use it as a context manager) when done."""

    def __init__(
        self, dsn: str, checkpoint: Callable[[], None] | None, *, connect_timeout: float = 10.0, **params: Any
    ) -> None:
        self._checkpoint = checkpoint
        self.conn = psycopg2.connect(dsn, async_=1, **params)
        try:
            self._wait(time.monotonic() + connect_timeout)
        except BaseException:
            self.conn.close()
            raise

    def __enter__(self) -> TickingSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def set_checkpoint(self, checkpoint: Callable[[], None] | None) -> None:
        """What the session's queries call while they run from now on (a thread that takes the
        session over must not call the worker's own checkpoint)."""
        self._checkpoint = checkpoint

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    def execute(self, query: Any, params: Any = None) -> cursor:
        """Runs one statement and returns its cursor, with the result fetched and ready."""
        cur = self.conn.cursor()
        cur.execute(query, params)
        self._wait(None)
        return cur

    def close(self) -> None:
        """Closes the connection; a statement still running (the caller left by an exception that
        did not come from the checkpoint, e.g. a signal handler's) is cancelled on the server first."""
        if self.conn.closed:
            return
        if self.conn.isexecuting():
            self._cancel()
        else:
            self.conn.close()

    def _wait(self, deadline: float | None) -> None:
        next_check = time.monotonic() + POLL_SECONDS
        while True:
            state = self.conn.poll()
            if state == POLL_OK:
                return
            # never wait past the next checkpoint: a query's answer may take minutes
            timeout = max(0.0, next_check - time.monotonic())
            if state == POLL_READ:
                select.select([self.conn.fileno()], [], [], timeout)
            elif state == POLL_WRITE:
                select.select([], [self.conn.fileno()], [], timeout)
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self.conn.close()
                raise psycopg2.OperationalError("connection timed out (connect_timeout)")
            if now < next_check:
                continue
            next_check = now + POLL_SECONDS
            if self._checkpoint is not None:
                try:
                    self._checkpoint()
                except BaseException:
                    self._cancel()
                    raise

    def _cancel(self) -> None:
        """Stops the running statement on the server (closing alone would let it run on until
        it next writes to the client) and closes the connection."""
        try:
            self.conn.cancel()
        except psycopg2.Error:
            pass
        finally:
            self.conn.close()
